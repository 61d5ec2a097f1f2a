"""The MLflow bridge: every run mirrored to an MLflow tracking server or store, where a team already looks.

One MLflow run per mltrain run, in the MLflow experiment of the same name, found again by its tag
``mltrain.run_id`` (so exporting twice makes no second run); params are the script's params plus the
``compute.*``/``environment.*``/``framework.*`` settings; metrics keep their steps and timestamps; tags follow
MLflow's conventions (``mlflow.runName``, ``mlflow.source.name``, ``mlflow.source.git.commit``, ...) plus
``mltrain.run_id``, ``mltrain.target``, ``mltrain.snapshot``; artifacts are the run's outputs, ``output.log``,
the resolved config and the environment record. A sweep is a parent MLflow run with each trial nested under it
(``mlflow.parentRunId``); the best trial is tagged ``mltrain.best=true`` and named on the parent.

**Live.** ``tracking.mlflow_uri=...`` (or ``tracking.mlflow=true``) puts the URI on the run's record at submit;
whoever follows the run (``mltrain <overrides>``, ``Run.wait``, a sweep's workers) starts a ``LiveMirror``: a
daemon thread that streams new metric points from the run folder's metrics file and log to MLflow in
``log_batch`` calls of at most ``BATCH`` points (memory: one read of the files at a time), and at the end
exports the rest (status, end time, artifacts).

**Never in the way.** The run does not wait on MLflow: the mirror works in its own thread with short HTTP
timeouts and no retries, catches everything, and records how it went in ``runs.mlflow`` (``state``: live,
done, lagging, failed; ``error``). ``mltrain runs export --mlflow URI`` catches up on any run (MLflow drops a
metric point it already has, so sending again is harmless).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltrain.errors import MltrainError
from mltrain.store.db import CANCELED, COMPLETED, FAILED, RunRecord, Store, SweepRecord
from mltrain.store.workspace import Workspace

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

EXTRA = "pip install 'mltrain[mlflow]'"
BATCH = 1000  # metric points per log_batch (MLflow's own limit)
PARAM_BATCH = 100  # params per log_batch (MLflow's own limit)
PARAM_CHARS = 6000  # MLflow's limit on a param value
FINISH_TIMEOUT = 30.0  # seconds a follower waits for the mirror's last export before leaving it to `runs export`
INTERVAL = 1.0  # seconds between live sends
_STATUS = {COMPLETED: "FINISHED", FAILED: "FAILED", CANCELED: "KILLED"}
_LOCK = threading.RLock()  # one thread of a process at a time makes an experiment or a sweep's parent, or tags the best


class MirrorError(MltrainError):
    """MLflow could not be used: not installed, unreachable, or it refused what was sent."""


def require(*, load: bool = True) -> None:
    """MLflow is installed (``load``: and importable), or one line that names the extra to install.

    ``load=False`` only looks for it (milliseconds, where a submit checks its config; the import takes seconds).
    """
    from importlib.util import find_spec

    try:
        if find_spec("mlflow") is None:
            raise ImportError("mlflow")
        if load:
            import mlflow  # noqa: F401
    except (ImportError, ValueError):
        raise MirrorError(f"an MLflow tracking URI needs MLflow, which is not installed: {EXTRA}") from None


def workspace_uri(workspace: Workspace) -> str:
    """The workspace's own MLflow store (``tracking.mlflow=true`` without ``$MLFLOW_TRACKING_URI``, ``mltrain ui``)."""
    return f"sqlite:///{workspace.root / 'mlflow.db'}"


def artifact_root(workspace: Workspace) -> Path:
    return workspace.root / "mlflow-artifacts"


def default_uri(workspace: Workspace) -> str:
    """``$MLFLOW_TRACKING_URI``, else the workspace's own store: where ``runs export`` and ``ui`` look by default."""
    return absolute_uri(os.environ.get("MLFLOW_TRACKING_URI") or workspace_uri(workspace))


def absolute_uri(uri: str) -> str:
    """A ``sqlite:///relative.db`` made absolute here, so whoever follows the run later, anywhere, finds it."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/") and ":memory:" not in uri:
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri


def mirror_state(uri: str, workspace: Workspace) -> dict[str, Any]:
    """What a submit records on the run: where to mirror it (``""``: as ``default_uri`` says)."""
    return {"uri": absolute_uri(uri) if uri else default_uri(workspace), "state": "pending", "error": None}


def _quick_http() -> None:
    """An unreachable server must cost seconds, not MLflow's default 7 retries with backoff at 120 s each."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


_NOT_IN_NAME = re.compile(r"[^\w.\- :/]")


def mlflow_name(name: str) -> str:
    """A metric or param name as MLflow accepts it (letters, digits, ``_ . - : /`` and spaces, no ``..`` or
    leading ``/``; at most 250 characters): a job's odd name is kept recognisable, never refused whole."""
    import posixpath

    cleaned = _NOT_IN_NAME.sub("_", name)[:250]
    if posixpath.normpath(cleaned) != cleaned or cleaned.startswith(("/", "..")) or cleaned in ("", "."):
        cleaned = "_" + "/".join(part if part not in ("", ".", "..") else "_" for part in cleaned.split("/"))
    return cleaned


def _ms(seconds: float | None) -> int:
    return int((seconds or 0.0) * 1000)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


class Exporter:
    """Writes runs and sweeps of one workspace to one MLflow URI, idempotently."""

    def __init__(self, uri: str, store: Store, workspace: Workspace) -> None:
        require()
        _quick_http()
        for name in ("mlflow.store", "alembic"):  # "Creating initial MLflow database tables...": not the run's
            logging.getLogger(name).setLevel(logging.WARNING)
        # MLflow's store trips SQLAlchemy deprecation notices: not the user's to act on. A filter added (not
        # catch_warnings, which swaps the process-wide list and races between a sweep's mirror threads).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(mlflow|sqlalchemy|alembic)(\.|$)")
        from mlflow import MlflowClient

        self.uri = uri
        self.store = store
        self.workspace = workspace
        self.client: MlflowClient = MlflowClient(tracking_uri=uri)
        self._experiments: dict[str, str] = {}

    # ----------------------------------------------------------- locating
    def _local_store(self) -> bool:
        return not self.uri.startswith(("http://", "https://", "databricks"))

    def experiment_id(self, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        with _LOCK:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                location = (artifact_root(self.workspace) / name).absolute().as_uri() if self._local_store() else None
                try:
                    ident = self.client.create_experiment(name, artifact_location=location)
                except Exception:  # another process made it meanwhile
                    again = self.client.get_experiment_by_name(name)
                    if again is None:
                        raise
                    ident = again.experiment_id
            else:
                ident = found.experiment_id
        self._experiments[name] = ident
        return ident

    def _find(self, experiment_id: str, tag: str, value: str) -> str | None:
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1)
        return found[0].info.run_id if found else None

    def run_id_for(self, record: RunRecord, parent: str | None = None) -> str:
        """The MLflow run mirroring ``record``: the one it was mirrored to before, else a new one."""
        experiment_id = self.experiment_id(record.experiment)
        ident = self._mirrored_as(record)
        if ident is None:
            tags = self._tags(record, parent)
            created = self.client.create_run(experiment_id, start_time=_ms(record.started or record.created),
                                             tags=tags, run_name=tags["mlflow.runName"])
            ident = created.info.run_id
        self._record(record.id, run_id=ident, experiment_id=experiment_id)
        return str(ident)

    def _mirrored_as(self, record: RunRecord) -> str | None:
        """The MLflow run ``record`` was mirrored to at this URI, if any (none is made)."""
        state = record.mlflow or {}
        if state.get("uri") == self.uri and state.get("run_id"):
            try:
                return str(self.client.get_run(state["run_id"]).info.run_id)
            except Exception:  # the store was replaced since: look for it as if never recorded
                log.info("MLflow run %s of %s is gone; looking it up by tag", state["run_id"], record.id)
        return self._find(self.experiment_id(record.experiment), "mltrain.run_id", record.id)

    def _record(self, mltrain_id: str, **changes: Any) -> None:
        current = self.store.get(mltrain_id).mlflow or {}
        if current.get("uri") not in (None, self.uri):
            return  # an export to another URI leaves the record of the run's own mirror as it was
        self.store.update(mltrain_id, mlflow={**current, "uri": self.uri, **changes})

    def _tags(self, record: RunRecord, parent: str | None) -> dict[str, str]:
        git = record.git or {}
        tags = {
            "mlflow.runName": record.id, "mlflow.source.name": record.script, "mlflow.source.type": "JOB",
            "mltrain.run_id": record.id, "mltrain.target": record.compute, "mltrain.environment": record.environment,
            "mltrain.snapshot": record.snapshot_id or "", "mltrain.experiment": record.experiment,
        }
        if git.get("commit"):
            tags["mlflow.source.git.commit"] = str(git["commit"])
        if git.get("branch"):
            tags["mlflow.source.git.branch"] = str(git["branch"])
        if git.get("remote_url"):  # credentials removed when it was recorded (mltrain.snapshot.git)
            tags["mlflow.source.git.repoURL"] = str(git["remote_url"])
        if record.sweep_id:
            tags["mltrain.sweep_id"] = record.sweep_id
        if parent:
            tags["mlflow.parentRunId"] = parent
        return tags

    # ------------------------------------------------------------ sending
    def params(self, record: RunRecord) -> dict[str, str]:
        """The script's params and the chosen compute/environment/framework settings (credentials left out)."""
        from mltrain.config.spec import names_a_credential
        from mltrain.tracking.query import flatten, params_from_config

        found = {k: v for k, v in (record.params if record.params is not None else
                                   params_from_config(self.workspace, record.id)).items()}
        config = _config(self.workspace, record.id)
        for group in ("compute", "environment", "framework"):
            node = config.get(group)
            if isinstance(node, dict):
                found.update({f"{group}.{k}": v for k, v in flatten(node).items() if not names_a_credential(k)})
        return {mlflow_name(key): str(value)[:PARAM_CHARS] for key, value in found.items()}

    def send_metrics(self, mlflow_run: str, points: Iterable[tuple[str, float, int | None, float | None]],
                     fallback_time: float | None) -> int:
        """Log ``(name, value, step, time)`` points in batches; a point without a time gets ``fallback_time``
        (the same on every send, so MLflow recognises a point it has)."""
        from mlflow.entities import Metric

        sent = 0
        for chunk in _chunks(points, BATCH):
            metrics = [Metric(mlflow_name(name), value, _ms(when if when is not None else fallback_time),
                              max(-(2**63), min(step or 0, 2**63 - 1))) for name, value, step, when in chunk]
            self.client.log_batch(mlflow_run, metrics=metrics, synchronous=True)
            sent += len(metrics)
        return sent

    def export_run(self, record: RunRecord, parent: str | None = None) -> str:
        """Everything about ``record`` (metrics, params, tags; for an ended run status, end time and artifacts)."""
        from mlflow.entities import Param, RunTag

        ident = self.run_id_for(record, parent)
        params = [Param(k, v) for k, v in self.params(record).items()]
        tags = [RunTag(k, v) for k, v in self._tags(record, parent).items()]
        for chunk in _chunks(params, PARAM_BATCH):
            self.client.log_batch(ident, params=chunk, synchronous=True)
        self.client.log_batch(ident, tags=tags, synchronous=True)
        points = ((name, value, step, when) for name, step, value, when in self.store.metrics(record.id))
        self.send_metrics(ident, points, record.started or record.created)
        if record.is_terminal:
            self._artifacts(ident, record)
            self.client.set_terminated(ident, status=_STATUS.get(record.status, "FAILED"),
                                       end_time=_ms(record.ended or time.time()))
        self._record(record.id, state="done" if record.is_terminal else "live", error=None, updated=time.time())
        return ident

    def _artifacts(self, ident: str, record: RunRecord) -> None:
        paths = self.workspace.run_paths(record.id)
        for path in (paths.config, paths.log, paths.environment_freeze):
            if path.is_file() and not path.is_symlink():
                self.client.log_artifact(ident, str(path))
        if paths.outputs.is_dir() and not paths.outputs.is_symlink():
            self.client.log_artifacts(ident, str(paths.outputs), artifact_path="outputs")

    # ------------------------------------------------------------- sweeps
    def sweep_parent(self, sweep: SweepRecord) -> str:
        """The parent MLflow run of a sweep (made once, found again by its tag ``mltrain.sweep_id``)."""
        from mlflow.entities import Param

        experiment_id = self.experiment_id(sweep.experiment)
        with _LOCK:
            ident = self._find(experiment_id, "mltrain.sweep_id_parent", sweep.id)
            if ident is None:
                created = self.client.create_run(
                    experiment_id, start_time=_ms(sweep.created), run_name=f"sweep-{sweep.id}",
                    tags={"mltrain.sweep_id_parent": sweep.id, "mltrain.sweep_id": sweep.id,
                          "mlflow.runName": f"sweep-{sweep.id}", "mlflow.source.type": "JOB"})
                ident = created.info.run_id
                settings = {k: str(v)[:PARAM_CHARS] for k, v in sweep.settings.items()
                            if isinstance(v, str | int | float | bool) or v is None}
                self.client.log_batch(ident, params=[Param(f"sweep.{k}", v) for k, v in settings.items()],
                                      synchronous=True)
        return str(ident)

    def mark_best(self, sweep: SweepRecord, parent: str) -> None:
        """Tag the best trial (and name it on the parent); end the parent once the sweep has ended."""
        with _LOCK:  # a sweep's trials end in threads of one process; MLflow's sqlite store races on one tag
            self._mark_best(sweep, parent)

    def _mark_best(self, sweep: SweepRecord, parent: str) -> None:
        from mlflow.entities import Metric

        from mltrain.sweep.report import trial_rows

        rows = trial_rows(self.store, self.workspace, sweep)
        metric = sweep.settings.get("primary_metric")
        ended = sum(1 for row in rows if row.status == COMPLETED)
        for row in rows:
            if row.run_id is None:
                continue
            ident = self._mirrored_as(self.store.get(row.run_id))
            if ident is not None:
                self.client.set_tag(ident, "mltrain.best", "true" if row.best else "false")
                if row.best:
                    self.client.set_tag(parent, "mltrain.best_run_id", row.run_id)
                    self.client.set_tag(parent, "mltrain.best_mlflow_run_id", ident)
                    if metric and row.metric is not None:  # one point per count of completed trials
                        when = _ms(sweep.created) + ended
                        self.client.log_batch(parent, metrics=[Metric(f"best_{metric}", row.metric, when, ended)],
                                              synchronous=True)
        current = self.store.get_sweep(sweep.id)
        ran = [row for row in rows if row.status in _STATUS]
        if current.is_terminal or (current.planned is not None and len(ran) >= current.planned):
            # the last trial's follower ends the parent: the sweep's own record ends a moment after it
            status = current.status if current.is_terminal else COMPLETED if ended else FAILED
            self.client.set_terminated(parent, status=_STATUS.get(status, "FAILED"),
                                       end_time=_ms(current.ended or time.time()))

    def export_sweep(self, sweep: SweepRecord) -> int:
        parent = self.sweep_parent(sweep)
        done = 0
        for trial in self.store.trials(sweep.id):
            if trial.run_id:
                self.export_run(self.store.get(trial.run_id), parent)
                done += 1
        self.mark_best(sweep, parent)
        return done


def export(uri: str, store: Store, workspace: Workspace, records: Sequence[RunRecord]) -> tuple[int, int]:
    """Export ``records`` to ``uri`` (the whole sweep of any trial among them); returns (runs, sweeps).

    The first failure stops the export with one line; what was exported by then stays, and is not sent
    twice by the next export.
    """
    exporter = Exporter(uri, store, workspace)
    runs = sweeps = 0
    seen: set[str] = set()
    try:
        for record in records:
            if record.sweep_id:
                if record.sweep_id not in seen:
                    seen.add(record.sweep_id)
                    runs += exporter.export_sweep(store.get_sweep(record.sweep_id))
                    sweeps += 1
                continue
            exporter.export_run(record)
            runs += 1
    except MltrainError:
        raise
    except Exception as exc:
        raise MirrorError(f"exporting to MLflow at {uri} failed: {_one_line(exc)} (check that it is reachable; "
                          f"running the export again resumes it)") from exc
    return runs, sweeps


def _config(workspace: Workspace, run_id: str) -> dict[str, Any]:
    import yaml

    path = workspace.run_paths(run_id).config
    try:
        loaded = yaml.safe_load(path.read_text()) if path.is_file() and path.stat().st_size < 1 << 20 else None
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class LiveMirror:
    """Streams one run to MLflow from a daemon thread while someone follows it; never raises into the run."""

    def __init__(self, workspace: Workspace, run_id: str, uri: str, interval: float = INTERVAL) -> None:
        self.workspace = workspace
        self.run_id = run_id
        self.uri = uri
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"mlflow-{run_id}", daemon=True)
        self._offsets = {"file": 0, "log": 0}

    def start(self) -> LiveMirror:
        self._thread.start()
        return self

    def finish(self, timeout: float = FINISH_TIMEOUT) -> None:
        """The run has ended: let the mirror export the rest, for at most ``timeout`` seconds."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._note("lagging", f"MLflow had not taken everything {timeout:.0f}s after the run ended; "
                                  f"`mltrain runs export --mlflow {self.uri} {self.run_id}` catches up")

    def _note(self, state: str, error: str | None) -> None:
        try:
            with Store(self.workspace.db_path, create=False) as store:
                current = store.get(self.run_id).mlflow or {}
                store.update(self.run_id, mlflow={**current, "uri": self.uri, "state": state, "error": error,
                                                  "updated": time.time()})
        except Exception as exc:  # the history itself is unusable: nothing more to do here
            log.warning("could not record the MLflow mirror's state of %s: %s", self.run_id, exc)

    def _main(self) -> None:
        try:
            with Store(self.workspace.db_path, create=False) as store:
                self._mirror(store)
        except Exception as exc:
            log.warning("mirroring run %s to MLflow at %s failed: %s", self.run_id, self.uri, exc)
            self._note("failed", f"{_one_line(exc)}; `mltrain runs export --mlflow {self.uri} {self.run_id}` "
                                 "catches up")

    def _mirror(self, store: Store) -> None:
        exporter = Exporter(self.uri, store, self.workspace)
        record = store.get(self.run_id)
        parent = None
        sweep = store.get_sweep(record.sweep_id) if record.sweep_id else None
        if sweep is not None:
            parent = exporter.sweep_parent(sweep)
        ident = exporter.run_id_for(record, parent)
        exporter._record(record.id, state="live", error=None, updated=time.time())
        while not self._stop.wait(self.interval):
            record = store.get(self.run_id)
            exporter.send_metrics(ident, self._new_points(), record.started or record.created)
        exporter.export_run(store.get(self.run_id), parent)
        if sweep is not None:
            exporter.mark_best(sweep, parent or "")

    def _new_points(self) -> list[tuple[str, float, int | None, float | None]]:
        """Points written since the last look: the metrics file, then the log's protocol lines."""
        from mltrain.tracking.metrics import read_metrics_file, scan_log

        paths = self.workspace.run_paths(self.run_id)
        found, self._offsets["file"] = read_metrics_file(paths.metrics, self._offsets["file"])
        lines, self._offsets["log"] = scan_log(paths.log, self._offsets["log"])
        return [(m.name, m.value, m.step, m.time) for m in [*found, *lines]]


__all__ = ["EXTRA", "Exporter", "LiveMirror", "MirrorError", "absolute_uri", "artifact_root", "default_uri", "export",
           "mirror_state", "mlflow_name", "require", "workspace_uri"]
