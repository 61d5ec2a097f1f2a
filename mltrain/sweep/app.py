"""``hydra/launcher=mltrain`` in a user's own Hydra app: each job is an mltrain run (the submitit model).

The app process composes each job's config and decides its output folder (``hydra.sweep.dir`` /
``hydra.sweep.subdir``) as Hydra's basic launcher would; the job then runs in a process of its own, on the
target ``hydra.launcher.compute`` names, from a snapshot of the app's folder: the app's script again, with
the job's overrides plus ``hydra.run.dir`` set to the job's folder, so Hydra inside the job writes
``.hydra/``, its log and the job's files where Hydra's rules say (``hydra.job.chdir`` honoured). On a
target whose jobs see this machine's paths (local) that folder is written in place; elsewhere the job
writes under ``$MLTRAIN_OUTPUT_DIR/hydra`` and the folder comes back with the run's outputs.

How the job finds the task: an app started as a script (``python my_app.py -m ...``, the task defined in
``__main__``) is run again as that script. A task defined in an importable module (an app started with
``python -m pkg.app``, or Hydra's own test harness) is pickled by the app and unpickled by a small runner
in the job (:mod:`mltrain.sweep.app_runner`) -- the app trusts its own pickle; what comes back from the
job never is one. A closure cannot be pickled: that is one line saying so.

The task's return value comes back through a Hydra callback the job runs
(:mod:`hydra_plugins.mltrain_plugins.callback`), as JSON: ``JobReturn.return_value``, or the job's error,
re-raised by ``return_value`` as Hydra does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
import shutil
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mltrain.errors import ConfigError, MltrainError, RunFailed

log = logging.getLogger("hydra_plugins.mltrain_plugins.launcher")  # the app's log shows it as Hydra's launcher

CALLBACK = "hydra_plugins.mltrain_plugins.callback.JobReturnWriter"
RESULT_FILE = "mltrain-job-return.json"  # hydra_plugins.mltrain_plugins.callback.RESULT_FILE
MAX_RESULT_BYTES = 16 << 20
ORIGINAL_CWD = "MLTRAIN_HYDRA_ORIGINAL_CWD"  # hydra_plugins.mltrain_plugins.callback.ORIGINAL_CWD
REMOTE_RUN_DIR = "${oc.env:MLTRAIN_OUTPUT_DIR}/hydra"  # resolved by Hydra inside the job
# Hydra settings that belong to the app's process (the sweep), or that the launcher sets for each job itself.
_NOT_PASSED = ("hydra/launcher", "hydra/sweeper", "hydra.launcher", "hydra.sweeper", "hydra.sweep.", "hydra.mode",
               "hydra.run.dir", "hydra.job.chdir", "hydra.job.name", "hydra.job.num", "hydra.job.id",
               "hydra.callbacks.mltrain_job_return")


@dataclass(frozen=True)
class AppLauncherSettings:
    """``hydra.launcher.*`` (``hydra_plugins.mltrain_plugins.LAUNCHER_NODE``)."""

    compute: str | None = None
    environment: str | None = None
    max_concurrent: int | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)
    shared_paths: bool | None = None  # None: the target says (Executor.job_sees_client_paths)

    def in_place(self, executor: Any) -> bool:
        """Does each job write its output folder here itself (else it comes back with the run's outputs)?"""
        return executor.job_sees_client_paths() if self.shared_paths is None else bool(self.shared_paths)

    def mltrain_overrides(self) -> list[str]:
        chosen = [f"compute={self.compute}"] if self.compute else []
        chosen += [f"environment={self.environment}"] if self.environment else []
        return chosen + list(self.overrides)


def _compact_error(exc: MltrainError) -> MltrainError:
    """``exc`` as an error Hydra prints as one line (a ``CompactHydraException``) in the app's process."""
    from hydra.errors import CompactHydraException

    class LauncherConfigError(ConfigError, CompactHydraException):
        pass

    return LauncherConfigError(f"hydra/launcher=mltrain: {exc}")


class JobError(MltrainError):
    """A job's exception, of a type this process cannot (or will not) rebuild: its type, message and traceback."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


@dataclass(frozen=True)
class _Job:
    index: int
    ret: Any  # Hydra's JobReturn, filled in when the run ends
    spec: Any  # the run's RunSpec
    output_dir: Path  # on this machine
    in_place: bool  # the job writes output_dir itself


class AppLauncherCore:
    def __init__(self, hydra_context: Any, task_function: Any, config: DictConfig,
                 settings: AppLauncherSettings) -> None:
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        self.settings = settings

        self._prepared: tuple[Any, Any] | None = None
        self.sweep_id: str | None = None  # the sweep record the jobs are trials of (made at the first launch)
        self._runs: list[Any] = []  # every run started, for Ctrl-C
        self._lock = threading.Lock()

    def concurrency(self) -> int:
        """Jobs at once: ``hydra.launcher.max_concurrent``, else the target's default."""
        return max(1, self.settings.max_concurrent or self._prepare()[1].default_concurrency())

    def _prepare(self) -> tuple[Any, Any]:
        """The run spec every job shares, but its arguments, and the target's executor (once per sweep)."""
        if self._prepared is None:
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            full_error = os.environ.get("HYDRA_FULL_ERROR")  # mltrain's composition sets it for its own CLI
            try:
                base, executor = self._base_spec(sweep_dir)
            except MltrainError as exc:
                raise _compact_error(exc) from None
            finally:
                if full_error is None:
                    os.environ.pop("HYDRA_FULL_ERROR", None)
                else:
                    os.environ["HYDRA_FULL_ERROR"] = full_error
            if self.settings.in_place(executor):
                base = dataclasses.replace(base, env_vars=(*base.env_vars, (ORIGINAL_CWD, os.getcwd())))
            self._prepared = base, executor
        return self._prepared

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        from hydra.core.utils import configure_log, setup_globals

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        quiet = logging.getLogger("mltrain")  # snapshot and checkout lines: in each run's own log, not the app's
        if quiet.level == logging.NOTSET and not self.config.hydra.verbose:
            quiet.setLevel(logging.WARNING)
        base, executor = self._prepare()
        in_place = self.settings.in_place(executor)
        workers = self.concurrency()
        log.info(f"Launching {len(job_overrides)} jobs on mltrain ({executor.describe()}), {workers} at once")
        jobs = [self._job(base, list(overrides), initial_job_idx + n, in_place)
                for n, overrides in enumerate(job_overrides)]
        self._open_sweep(base, workers)
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mltrain-app-job") as pool:
            futures = [pool.submit(self._run, job) for job in jobs]
            try:
                returns = [future.result() for future in futures]
            except KeyboardInterrupt:  # Ctrl-C in the app: cancel what runs, let the workers see it end
                for future in futures:
                    future.cancel()
                self._cancel_started()
                raise
        self._close_sweep(returns)
        return returns

    def _cancel_started(self) -> None:
        from mltrain.store.db import CANCELED

        with self._lock:
            started = list(self._runs)
        for run in started:
            with contextlib.suppress(Exception):
                run.cancel()
        if self.sweep_id is not None:
            with self._store() as store:
                store.finish_sweep(self.sweep_id, CANCELED, "interrupted (Ctrl-C)")

    # ------------------------------------------------------- the sweep record
    def _store(self) -> Any:
        from mltrain.store.db import Store
        from mltrain.store.workspace import Workspace

        return Store(Workspace.locate(self._prepare()[0].workspace_dir).ensure().db_path)

    def _open_sweep(self, base: Any, workers: int) -> None:
        """One sweep record for the app's sweep: made at its first batch, running again at each next one.

        A sweeper hands the launcher batches and never says which is the last, so the record is
        finished after every batch (Completed, or Failed with the first failed job) and reopened by the next.
        """
        from mltrain.store.db import RUNNING
        from mltrain.sweep.process import command, this_process

        sweeper = str(OmegaConf.select(self.config, "hydra.sweeper._target_", default="") or "")
        name = sweeper.rpartition(".")[2].removesuffix("Sweeper").lower() or "hydra"  # BasicSweeper -> basic
        name = str(OmegaConf.select(self.config, "hydra.sweeper.sampler", default=None) or name)  # mltrain's
        settings = {"launcher": "hydra app", "sampler": name, "max_concurrent": workers, "sweeper": sweeper}
        fields: dict[str, Any] = {"planned": None, "settings": settings, "command": command(sys.argv[1:]),
                                  "controller": this_process()}
        with self._store() as store:
            if self.sweep_id is None:
                key = f"hydra-app:{os.path.abspath(str(self.config.hydra.sweep.dir))}:{os.getpid()}:{id(self)}"
                self.sweep_id = store.create_sweep(key=key, experiment=base.experiment, **fields).id
            else:
                store.update_sweep(self.sweep_id, status=RUNNING, ended=None, reason=None, **fields)

    def _close_sweep(self, returns: list[Any]) -> None:
        from hydra.core.utils import JobStatus

        from mltrain.store.db import COMPLETED, FAILED

        failed = [r for r in returns if r.status == JobStatus.FAILED]
        reason = f"{len(failed)} of {len(returns)} jobs failed" if failed else None
        with self._store() as store:
            assert self.sweep_id is not None
            store.finish_sweep(self.sweep_id, FAILED if failed else COMPLETED, reason)

    def _trial(self, job: _Job, run_id: str | None, error: str | None = None) -> None:
        import hashlib

        from mltrain.store.db import TrialRecord

        assert self.sweep_id is not None
        unique = hashlib.sha256(f"{self.sweep_id}:{job.index}".encode()).hexdigest()  # never reused by another
        with self._store() as store:
            store.put_trial(TrialRecord(self.sweep_id, job.index, list(job.ret.overrides), unique, run_id,
                                        error=error))

    # ------------------------------------------------------------- the runs
    def _base_spec(self, sweep_dir: Path) -> tuple[Any, Any]:
        """The run every job of this sweep shares, but its arguments; and the target's executor."""
        from mltrain.config.compose import compose_validated
        from mltrain.config.spec import RunSpec, check_source
        from mltrain.store.workspace import Workspace
        from mltrain.targets import executor_for

        source_dir, script, prefix = self._entry(sweep_dir)
        overrides = [*self.settings.mltrain_overrides(), f"source_dir={_quote(str(source_dir))}",
                     f"script={_quote(script)}", "framework.args_style=hydra"]
        cfg, job_yaml = compose_validated(overrides)
        spec = dataclasses.replace(RunSpec.from_config(cfg, job_yaml, overrides), args=tuple(prefix))
        check_source(spec)
        return spec, executor_for(spec.compute, Workspace.locate(spec.workspace_dir))

    def _entry(self, sweep_dir: Path) -> tuple[Path, str, list[str]]:
        """(source_dir, script, the script's first arguments): the app's script, or the runner and a pickle."""
        main = sys.modules.get("__main__")
        main_file = getattr(main, "__file__", None)  # a module attribute, absent in an interactive session
        if getattr(self.task_function, "__module__", None) == "__main__" and main_file:
            script = Path(main_file).resolve()
            cwd = Path.cwd().resolve()
            source_dir = cwd if script.is_relative_to(cwd) else script.parent
            return source_dir, script.relative_to(source_dir).as_posix(), self._config_args()
        try:
            payload = pickle.dumps(self.task_function)
        except Exception as exc:
            raise ConfigError(
                f"hydra/launcher=mltrain runs each job in a process of its own, and the task function "
                f"{getattr(self.task_function, '__qualname__', self.task_function)!r} cannot be sent there "
                f"({exc}); define it at the top level of a module or of the script you run") from exc
        from mltrain.sweep import app_runner

        folder = sweep_dir / ".mltrain-app"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "task.pkl").write_bytes(payload)
        shutil.copyfile(app_runner.__file__, folder / "run_task.py")
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        (folder / "sys_path.json").write_text(json.dumps(paths))
        primary = self._primary_config_dir()
        return folder, "run_task.py", [primary or "", str(self.config.hydra.job.config_name or "")]

    def _primary_config_dir(self) -> str | None:
        for source in self.config.hydra.runtime.config_sources:
            if source.provider == "main":
                if not source.path:
                    return None
                return f"pkg://{source.path}" if source.schema == "pkg" else str(source.path)
        return None

    def _config_args(self) -> list[str]:
        """``--config-name``/``--config-dir`` as the app was given them, for the script run again."""
        args = []
        name = self.config.hydra.job.config_name
        if name:
            args.append(f"--config-name={name}")
        for source in self.config.hydra.runtime.config_sources:
            if source.provider == "command-line" and source.schema == "file":
                args.append(f"--config-dir={source.path}")
        return args

    def _job(self, base: Any, overrides: list[str], index: int, in_place: bool) -> _Job:
        """Compose job ``index`` as Hydra's basic launcher would and make its run spec; nothing starts yet."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobReturn, JobStatus

        from mltrain.hydra_compat import hydra_config_copy, hydra_config_set

        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.id}_{index}" \
                if OmegaConf.select(sweep_config, "hydra.job.id", default=None) not in (None, "???") else index
            sweep_config.hydra.job.num = index
        with hydra_config_set(sweep_config):
            hydra = sweep_config.hydra
            output_dir = Path(os.path.abspath(os.path.join(str(hydra.sweep.dir), str(hydra.sweep.subdir))))
            with read_write(hydra.runtime), open_dict(hydra.runtime):
                hydra.runtime.output_dir = str(output_dir)
            HydraConfig.instance().set_config(sweep_config)
            hydra_cfg = hydra_config_copy()
            task_overrides = [str(o) for o in hydra.overrides.task]
            passed = [str(o) for o in hydra.overrides.hydra if not str(o).lstrip("+~").startswith(_NOT_PASSED)]
            argv = [*task_overrides, *passed,
                    f"hydra.run.dir={_quote(str(output_dir)) if in_place else REMOTE_RUN_DIR}",
                    f"hydra.job.chdir={str(bool(hydra.job.chdir)).lower()}",
                    f"hydra.job.name={_quote(str(hydra.job.name))}",
                    f"hydra.job.num={index}", f"hydra.job.id={_quote(str(hydra.job.id))}",
                    f"+hydra.callbacks.mltrain_job_return._target_={CALLBACK}"]
            ret = JobReturn()
            ret.cfg = OmegaConf.masked_copy(sweep_config, [str(k) for k in sweep_config if k != "hydra"])
            ret.hydra_cfg = hydra_cfg
            ret.overrides = task_overrides
            ret.working_dir = str(output_dir)
            ret.task_name = str(hydra.job.name)
            ret.status = JobStatus.UNKNOWN
        output_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"\t#{index} : {' '.join(task_overrides)}")
        return _Job(index, ret, dataclasses.replace(base, args=(*base.args, *argv)), output_dir, in_place)

    def _run(self, job: _Job) -> Any:
        """Submit the job's run, wait for it, and fill in its ``JobReturn`` (never raises: errors go in it)."""
        from hydra.core.utils import JobStatus

        from mltrain.run import submit_spec

        try:
            try:
                run = submit_spec(job.spec, sweep_id=self.sweep_id)
            except Exception as exc:
                self._trial(job, None, str(exc))
                raise
            with self._lock:
                self._runs.append(run)
            self._trial(job, run.id)
            record = run.wait()
            log.info(f"\t#{job.index} : run {record.id} {record.status} (mltrain runs show {record.id})")
            outputs = run.paths.outputs
            if not job.in_place:
                _copy_back(outputs / "hydra", job.output_dir)
            found = read_result(outputs / RESULT_FILE)
            if found is None:
                if record.status != "Completed":
                    raise RunFailed(f"job {job.index} (run {record.id}) {record.status.lower()}: {record.reason}")
                job.ret.status, job.ret.return_value = JobStatus.COMPLETED, None
            else:
                job.ret.status, job.ret.return_value = found
        except Exception as exc:
            job.ret.status, job.ret.return_value = JobStatus.FAILED, exc
        return job.ret


def _quote(value: str) -> str:
    """``value`` as one Hydra override value, whatever it holds (``=``, ``,``, brackets, spaces, quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _copy_back(source: Path, target: Path) -> None:
    """The job's folder from the run's outputs (already checked: files, folders and links inside) into place."""
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)


def read_result(path: Path) -> tuple[Any, Any] | None:
    """(JobStatus, value or exception) from what the job's callback wrote; None when it wrote nothing.

    Hostile input: bounded, JSON only; an exception is rebuilt only as a built-in exception type.
    """
    from hydra.core.utils import JobStatus

    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            return JobStatus.FAILED, JobError(f"the job's return value is over {MAX_RESULT_BYTES >> 20} MiB")
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return JobStatus.FAILED, JobError(f"the job's return value cannot be read: {exc}")
    if not isinstance(data, dict):
        return JobStatus.FAILED, JobError("the job's return value is not what mltrain's callback writes")
    if "error" in data:
        return JobStatus.FAILED, _exception(data["error"])
    return JobStatus.COMPLETED, _decode(data.get("value"))


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__omegaconf__" in value:
            created: Any = OmegaConf.create(value["__omegaconf__"])
            return created
        if "__dict__" in value and isinstance(value["__dict__"], dict):
            return {str(k): _decode(v) for k, v in value["__dict__"].items()}
        return str(value.get("__repr__", value))
    return value


def _exception(error: Any) -> BaseException:
    import builtins

    if not isinstance(error, dict):
        return JobError("the job failed")
    name, message = str(error.get("type", "Exception")), str(error.get("message", ""))
    trace = str(error.get("traceback", ""))
    kind = getattr(builtins, name, None) if error.get("module") == "builtins" else None
    if isinstance(kind, type) and issubclass(kind, Exception):
        with contextlib.suppress(Exception):
            exc = kind(message)
            exc.add_note(f"in the job:\n{trace}")
            return exc
    return JobError(f"{name}: {message}", trace)
