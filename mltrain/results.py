"""A run in the history (``Run``): what a submit returns, and what ``Run.get(id)`` rebuilds later.

Its own module, below both ``mltrain.run`` (the submit API) and ``mltrain.plan.execute`` (which makes one),
so neither has to import the other. What needs the plan (``rerun``) is added by ``mltrain.api.Run``,
the class the public API hands out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltrain.errors import MltrainError, RunFailed, StoreError
from mltrain.store.db import COMPLETED, RunRecord, Store
from mltrain.store.workspace import Workspace
from mltrain.targets.base import CTRL_C, FOLLOW_WAIT, Handle, cancel_run, follow, reconcile

if TYPE_CHECKING:
    import pandas

    from mltrain.tracking.mlflow import LiveMirror

Point = tuple[int | None, float, float | None]
"""One logged value of a metric: ``(step, value, time)`` (step and time are None when the script gave none)."""


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _live_mirror(workspace: Workspace, record: RunRecord) -> LiveMirror | None:
    """A run submitted with ``tracking.mlflow_uri`` is streamed to MLflow while it is followed, and exported
    when it ends (``mltrain.tracking.mlflow``); the run never waits on it."""
    state = record.mlflow or {}
    if not state.get("uri") or state.get("state") == "done":
        return None
    from mltrain.tracking.mlflow import LiveMirror

    return LiveMirror(workspace, record.id, str(state["uri"])).start()


class Run:
    """A run in the history: look at it, wait for it, cancel it. Rebuildable from its id.

    ``existing`` is True when ``submit`` returned the run an earlier submit started under the same
    idempotency key (``wait`` then follows that run from the start of its log).
    """

    def __init__(self, run_id: str, workspace: Workspace, *, _handle: Handle | None = None,
                 _offset: int = 0, existing: bool = False) -> None:
        self.id = run_id
        self.workspace = workspace
        self.existing = existing
        self._handle = _handle
        self._offset = _offset

    @classmethod
    def get(cls, run_id: str, workspace: Workspace | str | None = None) -> Run:
        ws = workspace if isinstance(workspace, Workspace) else Workspace.locate(workspace)
        with Store(ws.db_path, create=False) as store:
            record = store.get(run_id)
        return cls(record.id, ws)

    def _store(self) -> Store:
        return Store(self.workspace.db_path, create=False)

    @property
    def record(self) -> RunRecord:
        with self._store() as store:
            return reconcile(store, self.workspace, store.get(self.id))

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def paths(self) -> Any:
        return self.workspace.run_paths(self.id)

    def wait(self, show_output: bool = False, raise_on_failure: bool = False, *,
             out: Callable[[bytes], None] | None = None, stop: Callable[[], str | None] | None = None,
             store: Store | None = None, idle_wait: float = FOLLOW_WAIT) -> RunRecord:
        """Block until the run ends (streaming its output if asked); one Ctrl-C cancels it.

        ``out`` receives the output instead of stdout; a reason ``stop`` returns cancels the run.
        ``store``: a connection to this run's workspace to use (left open) instead of a new one -- a
        sweep's worker holds one for all the trials it runs. ``idle_wait``: the longest look between reads
        of a quiet log (:func:`mltrain.targets.base.follow`).
        """
        with nullcontext(store) if store is not None else self._store() as store:
            mirror = None
            try:
                record = store.get(self.id)
                mirror = _live_mirror(self.workspace, record)
                record = follow(store, self.workspace, record, out=out or (_write_stdout if show_output else None),
                                offset=self._offset, handle=self._handle, stop=stop, idle_wait=idle_wait)
            except KeyboardInterrupt:  # before follow() could catch it: the same one Ctrl-C, the same cancel
                record = cancel_run(store, self.workspace, store.get(self.id), reason=CTRL_C, handle=self._handle)
            finally:
                if mirror is not None:
                    mirror.finish()
        if raise_on_failure and record.status != COMPLETED:
            raise RunFailed(f"run {record.id} {record.status.lower()}: {record.reason}")
        return record

    def cancel(self, reason: str = "canceled by user") -> RunRecord:
        with self._store() as store:
            return cancel_run(store, self.workspace, store.get(self.id), reason=reason, handle=self._handle)

    @property
    def params(self) -> dict[str, Any]:
        """The script's params, flat: ``{"lr": 0.01, "model.depth": 4}``."""
        from mltrain.tracking.query import params_from_config

        params = self.record.params
        return dict(params) if params is not None else params_from_config(self.workspace, self.id)

    @property
    def config(self) -> dict[str, Any]:
        """The run's config as it was composed (interpolations such as ``${oc.env:...}`` unresolved)."""
        import yaml

        path = self.paths.config
        loaded = yaml.safe_load(path.read_text()) if path.exists() else None
        return loaded if isinstance(loaded, dict) else {}

    def logs(self, follow: bool = False) -> str:
        """The run's output so far; ``follow=True`` prints it as it comes until the run ends, then returns it."""
        if follow:
            self.wait(show_output=True)
        paths = self.paths
        return paths.log.read_bytes().decode(errors="replace") if paths.log.exists() else ""

    def metrics(self) -> dict[str, list[Point]]:
        """Every value logged, by metric, in the order logged: ``{"loss": [(step, value, time), ...]}``."""
        found: dict[str, list[Point]] = {}
        with self._store() as store:
            for name, step, value, when in store.metrics(self.id):
                found.setdefault(name, []).append((step, value, when))
        return found

    def metrics_frame(self) -> pandas.DataFrame:
        """The metrics as a pandas DataFrame (columns ``name, step, value, time``); needs pandas installed."""
        try:
            import pandas
        except ImportError:
            raise MltrainError("Run.metrics_frame needs pandas: pip install pandas (or use Run.metrics())") from None
        with self._store() as store:
            rows = store.metrics(self.id)
        return pandas.DataFrame(rows, columns=["name", "step", "value", "time"])

    def outputs(self, download_to: str | Path | None = None) -> list[str]:
        """The paths of the files the run wrote to ``$MLTRAIN_OUTPUT_DIR``, relative to it; with
        ``download_to``, copied there first (all or nothing, never following a link)."""
        from mltrain.util.outputs import Refused, copy_tree, listing

        outputs = self.paths.outputs
        if download_to is not None and outputs.is_dir() and not outputs.is_symlink():
            try:
                copy_tree(outputs, Path(download_to))
            except Refused as exc:
                raise StoreError(f"not copying the outputs of run {self.id} to {download_to}: {exc}; nothing "
                                 f"was copied ({exc.hint})") from None
            except OSError as exc:
                raise StoreError(f"cannot copy the outputs of run {self.id} to {download_to}: "
                                 f"{exc.strerror or exc} (choose a folder you can write to)") from None
        return [path for path, size, _ in listing(outputs) if size is not None]

    def __repr__(self) -> str:
        return f"Run({self.id!r})"


__all__ = ["Run"]
