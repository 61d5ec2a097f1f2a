"""The seam for "where": a target's hooks, and the run lifecycle every target shares.

A target implements ``stage_code`` (put the snapshot where the job can read it)
and ``launch`` (start it detached, return a ``Handle``). The ``Handle`` knows how
to poll, read the log by offset, cancel and collect, and can be rebuilt from
the dict stored on the run record -- so any later process can re-attach.
The lifecycle functions below own everything else: status transitions, log
streaming, Ctrl-C, finalisation, and reconciling a run nobody is watching.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mltrain.store.db import CANCELED, COMPLETED, FAILED, FINALIZING, RunRecord, Store
from mltrain.store.workspace import RunPaths, Workspace
from mltrain.tracking.joblog import clean_log, error_line, read_tail
from mltrain.util import safefs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExitInfo:
    """How a job ended, as the target saw it."""

    exit_code: int | None
    reason: str | None = None  # set when the target knows better than the exit code

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.reason is None

    def failure_reason(self) -> str:
        if self.reason:
            return self.reason
        code = self.exit_code
        if code is not None and code > 128:
            try:
                name = signal.Signals(code - 128).name
            except ValueError:
                name = f"signal {code - 128}"
            return f"killed by {name} (exit code {code})"
        return f"script exited with code {code}"


@dataclass(frozen=True)
class LaunchRequest:
    run_id: str
    argv: list[str]  # the complete command: interpreter, script, arguments
    cwd: str  # where the code was staged, on the target
    env: Mapping[str, str]  # variables added to the target's environment
    paths: RunPaths  # the run's folder in the local workspace
    experiment: str = ""
    image: str | None = None  # the container image, when the environment made one
    interpreter: str | None = None  # the environment's Python (inside ``image`` when there is one)
    # values the job's output must not show; each target masks them where the log is written
    secrets: tuple[str, ...] = field(default=(), repr=False)


class Handle(ABC):
    """A launched job. Picklable state lives in ``to_dict``; the rest is rebuilt."""

    kind: ClassVar[str]

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this handle later (must include ``kind``)."""

    @abstractmethod
    def poll(self) -> ExitInfo | None:
        """None while the job runs; how it ended once it has (also when it vanished)."""

    def wait(self, timeout: float) -> ExitInfo | None:
        """Block up to ``timeout`` seconds for the end; targets with a faster signal override."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.poll()
            if info is not None or time.monotonic() >= deadline:
                return info
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    @abstractmethod
    def read_log(self, offset: int) -> tuple[bytes, int]:
        """Log bytes from ``offset`` on, and the next offset."""

    @abstractmethod
    def cancel(self, grace: float) -> None:
        """TERM, wait up to ``grace`` seconds, then KILL."""

    def release(self) -> None:  # noqa: B027 (optional hook)
        """The run has ended (someone else saw it end): free what this process holds for it (local: its child)."""

    def collect(self, paths: RunPaths) -> None:  # noqa: B027 (optional hook)
        """Once the job has ended: bring outputs and metrics back into ``paths`` (targets that write
        elsewhere) and clear away what the job needed only while it ran (local: its working directory)."""


class Executor(ABC):
    """One compute target, built from its typed ``compute`` config."""

    kind: ClassVar[str]

    def __init__(self, config: Any, workspace: Workspace) -> None:
        self.config = config
        self.workspace = workspace

    @abstractmethod
    def code_is_staged(self, snapshot_id: str) -> bool:
        """Cheap check: would ``stage_code`` have nothing to send?"""

    @abstractmethod
    def stage_code(self, snapshot_id: str) -> str:
        """Make the snapshot readable by the job on the target; returns its directory there."""

    @abstractmethod
    def launch(self, request: LaunchRequest) -> Handle:
        """Start the job detached from this process and return its handle."""

    @classmethod
    @abstractmethod
    def handle_from_dict(cls, data: Mapping[str, Any], paths: RunPaths) -> Handle:
        """Rebuild the handle stored on a run record."""

    def check_environment(self, environment: Any) -> None:
        """Refuse, before anything runs, an environment this target cannot use (a ConfigError)."""
        if environment.provides_image:
            from mltrain.errors import ConfigError

            raise ConfigError(
                f"environment={environment.kind} makes a container image, which compute={self.kind} cannot run; "
                "use compute=docker"
            )

    def describe(self) -> str:
        return self.kind

    def runner(self) -> Any:
        """Where environments run their commands for this target (``mltrain.hosts.runner``): this machine by default."""
        from mltrain.hosts.runner import LOCAL

        return LOCAL

    @property
    def cancel_grace(self) -> float:
        return float(getattr(self.config, "cancel_grace", 10.0))


# ------------------------------------------------------------------ lifecycle
def handle_for(record: RunRecord, workspace: Workspace) -> Handle | None:
    if not record.handle:
        return None
    from mltrain.targets import executor_class

    return executor_class(record.handle["kind"]).handle_from_dict(record.handle, workspace.run_paths(record.id))


def finalize(store: Store, workspace: Workspace, record: RunRecord, handle: Handle, info: ExitInfo,
             *, canceled: str | None = None) -> RunRecord:
    """Collect, make the outputs obey the policy, ingest metrics, record the terminal status.

    Safe to call from several processes. The outputs policy (``mltrain.util.outputs.enforce``)
    runs here because every target passes here, including those whose job wrote the run's
    ``outputs`` folder directly (local, a local Docker engine's bind mount): what it removes is
    said in the run's log.
    """
    from mltrain.tracking.metrics import read_metrics_file, scan_log
    from mltrain.util.outputs import enforce, note_in_log

    paths = workspace.run_paths(record.id)
    canceled = canceled or _cancel_requested(paths)
    store.transition(record.id, FINALIZING)
    try:
        handle.collect(paths)
    except Exception as exc:  # a failed collection must not leave the run unfinished
        log.warning("collecting outputs of %s failed: %s", record.id, exc)
    try:
        notes = enforce(paths.outputs)
        for note in notes:
            log.warning("run %s: outputs: %s", record.id, note)
        note_in_log(paths.log, notes)
    except OSError as exc:
        log.warning("checking the outputs of %s failed: %s", record.id, exc)
    metrics = []
    if paths.metrics.exists():
        metrics += read_metrics_file(paths.metrics, final=True)[0]
    if paths.log.exists():
        metrics += scan_log(paths.log, final=True)[0]
    store.replace_metrics(record.id, [(m.name, m.value, m.step, m.time) for m in metrics])
    if canceled is not None:
        ended = store.transition(record.id, CANCELED, reason=canceled, exit_code=info.exit_code)
    elif info.succeeded:
        ended = store.transition(record.id, COMPLETED, exit_code=0)
    else:
        ended = store.transition(record.id, FAILED, exit_code=info.exit_code, reason=_failure_reason(info, paths))
    if ended:  # the one process that ended the run cleans its log, once nothing appends to it
        try:
            clean_log(paths.log)
        except OSError as exc:
            log.warning("could not remove terminal codes from the log of %s: %s", record.id, exc)
    return store.get(record.id)


def _failure_reason(info: ExitInfo, paths: RunPaths) -> str:
    """What the target said, else the error the job printed last (every target alike), else the exit code.

    A job killed by a signal printed nothing on its way out: any traceback in its log was handled earlier,
    so the signal is the reason (``killed by SIGKILL (exit code 137)``).
    """
    if info.reason:
        return info.reason
    if info.exit_code is not None and info.exit_code > 128:
        return info.failure_reason()
    return error_line(read_tail(paths.log)) or info.failure_reason()


def _request_cancel(paths: RunPaths, reason: str) -> None:
    """Say a cancel is under way, before signalling: whoever sees the job end while the cancel waits out its
    grace (a ``runs show`` in another terminal) records it Canceled, not Failed. Best effort."""
    with contextlib.suppress(OSError):
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(paths.cancel_requested, flags, 0o600)
        try:
            os.write(fd, reason.encode()[:200])
        finally:
            os.close(fd)


def _cancel_requested(paths: RunPaths) -> str | None:
    try:
        fd = os.open(paths.cancel_requested, safefs.READ_FLAGS)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return fh.read(200).decode(errors="replace") or "canceled"


def reconcile(store: Store, workspace: Workspace, record: RunRecord) -> RunRecord:
    """Bring an active record up to date with its job (a run is never 'Running' forever)."""
    if record.is_terminal:
        return record
    handle = handle_for(record, workspace)
    if handle is None:  # never launched: its client is still preparing it, or died doing so
        return _unlaunched(store, record)
    info = handle.poll()
    if info is None:
        return record
    return finalize(store, workspace, record, handle, info)


CLIENT_DIED = "client exited before the job started"


def _unlaunched(store: Store, record: RunRecord) -> RunRecord:
    """A run not launched yet: Failed if its client is gone (what it left running is stopped first)."""
    from mltrain.hosts.client import CLIENT_GRACE, client_state, stop_group

    if time.time() - record.created < CLIENT_GRACE or client_state(record.client) != "dead":
        return record
    if stop_group(record.client):
        log.info("stopped what the client of %s left running", record.id)
    store.transition(record.id, FAILED, reason=CLIENT_DIED, unlaunched=True)  # refused if it launched meanwhile
    return store.get(record.id)


def cancel_run(store: Store, workspace: Workspace, record: RunRecord, *, grace: float | None = None,
               reason: str = "canceled by user", handle: Handle | None = None) -> RunRecord:
    record = reconcile(store, workspace, record)
    if record.is_terminal:
        return record
    handle = handle or handle_for(record, workspace)
    if handle is None:
        # Still being prepared: its client sees the status and launches nothing (``run.submit_spec``);
        # its pip or build hook is stopped now rather than left to finish work nobody wants.
        from mltrain.hosts.client import stop_group

        if store.transition(record.id, CANCELED, reason=reason, unlaunched=True):
            stop_group(record.client)
            return store.get(record.id)
        return cancel_run(store, workspace, store.get(record.id), grace=grace, reason=reason)  # it just launched
    _request_cancel(workspace.run_paths(record.id), reason)
    handle.cancel(grace if grace is not None else float((record.handle or {}).get("cancel_grace", 10.0)))
    info = handle.wait(5.0) or ExitInfo(None)
    return finalize(store, workspace, record, handle, info, canceled=reason)


def follow(store: Store, workspace: Workspace, record: RunRecord, *, out: Callable[[bytes], None] | None,
           offset: int = 0, handle: Handle | None = None,
           stop: Callable[[], str | None] | None = None) -> RunRecord:
    """Stream the log from ``offset`` until the run ends; one Ctrl-C cancels it.

    ``stop`` is asked between reads; a reason it returns cancels the run with that reason. The
    cancel happens here, in the thread that follows the run, so it never races the run's own end.
    A run still being prepared is followed too: its log so far, then the job's once it launches.
    An ended run's log is read from the run folder, never through its handle (complete since it ended).
    """
    handle = handle or handle_for(record, workspace)
    try:
        if handle is None:
            record, handle, offset = _until_launched(store, workspace, record, out=out, offset=offset, stop=stop)
            if handle is None:
                return record
        elif record.is_terminal:
            handle.release()
            return _rest_of_log(workspace, record, out, offset)
        while True:
            reason = stop() if stop is not None else None
            if reason:
                return cancel_run(store, workspace, store.get(record.id), reason=reason, handle=handle)
            chunk, offset = handle.read_log(offset)
            if chunk:
                if out is not None:
                    out(chunk)
                continue
            info = handle.wait(0.05)
            if info is None:
                continue
            while True:  # drain what was written between the last read and the exit
                chunk, offset = handle.read_log(offset)
                if not chunk:
                    break
                if out is not None:
                    out(chunk)
            current = store.get(record.id)
            if current.is_terminal:
                return current
            return finalize(store, workspace, current, handle, info)
    except KeyboardInterrupt:
        log.info("cancelling run %s", record.id)
        return cancel_run(store, workspace, store.get(record.id), reason="canceled by user (Ctrl-C)",
                          handle=handle)


LAUNCH_POLL = 0.2  # seconds between looks at a run being prepared


def _until_launched(store: Store, workspace: Workspace, record: RunRecord, *, out: Callable[[bytes], None] | None,
                    offset: int, stop: Callable[[], str | None] | None) -> tuple[RunRecord, Handle | None, int]:
    """Stream the preparation's log until the run has a handle (returned) or ends before it gets one (None)."""
    paths = workspace.run_paths(record.id)
    while True:
        record = store.get(record.id)
        if record.is_terminal:
            return _rest_of_log(workspace, record, out, offset), None, offset
        handle = handle_for(record, workspace)
        if handle is not None:
            return record, handle, offset
        reason = stop() if stop is not None else None
        if reason:
            return cancel_run(store, workspace, record, reason=reason), None, offset
        record = reconcile(store, workspace, record)  # its client may have died
        if record.is_terminal:
            continue
        chunk, offset = read_from(paths.log, offset)
        if chunk:
            if out is not None:
                out(chunk)
        else:
            time.sleep(LAUNCH_POLL)


def _rest_of_log(workspace: Workspace, record: RunRecord, out: Callable[[bytes], None] | None,
                 offset: int) -> RunRecord:
    if out is not None:
        path = workspace.run_paths(record.id).log
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                while chunk := fh.read(1 << 20):
                    out(chunk)
        except FileNotFoundError:
            pass
    return record


def read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """A log file's bytes from ``offset`` on, and the next offset (nothing yet if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)


def read_whole_log(handle: Handle | None, paths: RunPaths) -> bytes:
    if handle is not None:
        data, _ = handle.read_log(0)
        return data
    return paths.log.read_bytes() if paths.log.exists() else b""


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
