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
import dataclasses
import functools
import logging
import math
import os
import signal
import stat
import time
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from mltrain.config.resources import ResourceRequest
from mltrain.hosts.base import Host, HostDown, JobState
from mltrain.store.db import CANCELED, COMPLETED, FAILED, FINALIZING, RunRecord, Store
from mltrain.store.workspace import RunPaths, Workspace
from mltrain.tracking.joblog import clean_log, error_line, read_tail
from mltrain.util import safefs

if TYPE_CHECKING:
    from mltrain.config.groups import ComputeConfig
    from mltrain.config.spec import RunSpec
    from mltrain.environments.base import Environment, PreparedEnvironment
    from mltrain.hosts.hardware import Inventory
    from mltrain.hosts.runner import Runner
    from mltrain.targets.docker.util import EngineConfig

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
    resources: Resources | None = None  # how the target mapped the run's resource request (its ``resources(spec)``)


RUNTIME = types.MappingProxyType({"stored": False})
"""Metadata of a handle's field that lives with the object but is never stored (a connection, a live cache):
``field(default=None, kw_only=True, compare=False, repr=False, metadata=RUNTIME)``, or with
``default_factory=dict, init=False`` for a handle's own scratch (what it learnt while polling: fresh in every copy)."""


Update = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Handle(ABC):
    """A launched job: which target, which run. A frozen dataclass, stored as its fields (``to_dict``).

    Every field is stored unless its metadata is ``RUNTIME``; ``from_dict``
    rebuilds the handle from the stored dict, so any later process can
    re-attach. A handle never opens the store: what it learns that belongs
    on the run record (a Spark application's id) goes to ``on_update``, a
    callback the lifecycle code below passes in (``bound``): a dict of keys
    to set on the record's ``handle``.
    """

    kind: ClassVar[str]

    paths: RunPaths = field(compare=False, repr=False, metadata=RUNTIME)  # the run's folder in the local workspace
    cancel_grace: float = field(default=10.0, kw_only=True)
    on_update: Update | None = field(default=None, kw_only=True, compare=False, repr=False, metadata=RUNTIME)

    # ------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """The stored fields (nested dataclasses and handles as dicts), with ``kind``."""
        data: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            if f.metadata.get("stored", True):
                data[f.name] = _encode(getattr(self, f.name))
        return data

    @classmethod
    def from_dict(cls: type[H], data: Mapping[str, Any], paths: RunPaths, **extra: Any) -> H:
        """The handle stored as ``data`` (unknown keys ignored, missing ones defaulted); ``extra``: runtime fields."""
        hints = _hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.init and f.metadata.get("stored", True) and f.name in data:
                values[f.name] = _decode(hints[f.name], data[f.name], paths)
        try:
            return cls(paths, **values, **extra)
        except (TypeError, ValueError) as exc:
            from mltrain.errors import TargetError

            raise TargetError(f"run {paths.dir.name}: its stored {cls.kind} handle is incomplete ({exc}); "
                              "it was written by another version of mltrain") from None

    def update(self, changes: dict[str, Any]) -> None:
        """Put ``changes`` on the run record's ``handle`` (through ``on_update``; dropped when nobody listens)."""
        if self.on_update is not None:
            self.on_update(changes)

    # ------------------------------------------------------------ the job
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


H = TypeVar("H", bound=Handle)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _encode(value: Any) -> Any:
    if isinstance(value, Handle):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(kind: Any, value: Any, paths: RunPaths) -> Any:
    """``value`` as JSON stored it, made into ``kind`` (the field's type) again."""
    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return _decode(options[0], value, paths) if len(options) == 1 else value
    if origin is tuple:
        return tuple(value)
    if isinstance(kind, type):
        if issubclass(kind, Handle):
            return _handle_from(value, paths)
        if is_dataclass(kind):
            hints = _hints(kind)
            known = {f.name for f in fields(kind) if f.init}
            return kind(**{k: _decode(hints[k], v, paths) for k, v in dict(value).items() if k in known})
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return value


def _handle_from(data: Mapping[str, Any], paths: RunPaths) -> Handle:
    from mltrain.targets import executor_class

    return executor_class(str(data["kind"])).handle_from_dict(data, paths)


@dataclass(frozen=True)
class HostHandle(Handle):
    """A job started on a ``mltrain.hosts.base.Host``: which host (``host()``) and which run; the host does the rest.

    The stored fields are what the launch recorded (``Job``). A host that does
    not answer (``HostDown``) leaves the run going: ``poll`` says nothing yet.
    """

    run_id: str
    run_dir: str
    pid: int
    start_time: str | None = None
    boot_id: str = ""
    scratch: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False, metadata=RUNTIME)

    @abstractmethod
    def host(self) -> Host:
        """The host the job runs on."""

    def _ended(self) -> None:
        """The host says the job ended: make everything local before anyone hears it (raise HostDown if not now)."""

    def _down(self, exc: HostDown) -> None:
        if "down_since" not in self.scratch:
            self.scratch["down_since"] = time.monotonic()
            log.warning("%s; the run goes on there, reconnecting with backoff", exc)

    def _up(self) -> None:
        if self.scratch.pop("down_since", None) is not None:
            log.warning("connection to %s is back", self.host().name)

    def _exit(self, state: JobState) -> ExitInfo | None:
        if state.running:
            return None
        try:
            self._ended()
        except HostDown as exc:
            self._down(exc)
            return None
        host = self.host().name
        if state.lost is None:
            return ExitInfo(state.exit_code)
        if state.lost == "unreadable":
            return ExitInfo(None, f"unreadable exit code file on {host}")
        if state.lost == "rebooted":
            return ExitInfo(None, f"host rebooted: {host} restarted (its boot id changed) while the run was going, "
                                  "which ended it; submit it again")
        return ExitInfo(None, f"the process disappeared on {host} without recording an exit code")

    def poll(self) -> ExitInfo | None:
        try:
            state = self.host().poll(self.run_id)
        except HostDown as exc:
            self._down(exc)
            return None
        self._up()
        return self._exit(state)

    def wait(self, timeout: float) -> ExitInfo | None:
        try:
            state = self.host().wait(self.run_id, timeout)
        except HostDown as exc:
            self._down(exc)
            time.sleep(min(timeout, 0.05))
            return None
        self._up()
        return self._exit(state)

    def cancel(self, grace: float) -> None:
        """TERM the job's process group, KILL it after ``grace`` seconds (the host does both)."""
        try:
            self.host().cancel(self.run_id, grace)
        except HostDown as exc:
            from mltrain.errors import TargetError

            raise TargetError(f"cannot cancel run {self.run_id}: {exc}; it goes on there; try "
                              f"`mltrain runs cancel {self.run_id}` again once {self.host().name} answers") from exc

    def release(self) -> None:
        self.host().release(self.run_id)


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""What a ``cpus`` request sets for a process on a host: the thread pools of the numeric libraries."""


@dataclass(frozen=True)
class Resources:
    """How a target honours a run's ``resources`` request: what the job is given, and how.

    ``env`` goes into the job's environment (after ``env_vars``: the mapping wins, so a sweep's
    disjoint devices cannot be undone by a config); ``gpu_ids`` are the host's devices the job gets
    (None: not chosen by mltrain -- none asked, or the target places them itself); ``mapping`` says, one
    item each, what the target does with the request (``mltrain plan`` prints it); ``settings`` is
    the target's own form of it (Docker's HostConfig limits, Spark's conf), for the plan and tests.
    """

    request: ResourceRequest = field(default_factory=ResourceRequest)
    gpu_ids: tuple[int, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    mapping: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        asked = self.request.describe()
        return asked if not self.mapping else f"{asked} -> {'; '.join(self.mapping)}"

    def to_dict(self) -> dict[str, Any]:
        return {"request": self.request.to_dict(), "gpu_ids": None if self.gpu_ids is None else list(self.gpu_ids),
                "env": dict(self.env), "mapping": list(self.mapping), "settings": _encode(dict(self.settings))}


def process_resources(request: ResourceRequest, inventory: Callable[[], Inventory], where: str) -> Resources:
    """The mapping for a job that is a process on a host (local, ssh): ``CUDA_VISIBLE_DEVICES`` from the
    devices ``inventory()`` lists (asked only for a GPU request), thread counts for ``cpus``; memory is
    recorded, not enforced."""
    from mltrain.config.resources import format_bytes, pick_gpus
    from mltrain.errors import ConfigError

    env: dict[str, str] = {}
    mapping: list[str] = []
    gpu_ids = None
    if request.wants_gpus:
        found = inventory()
        if found.error:
            raise ConfigError(f"resources.gpus: {found.error}; fix the driver there or drop resources.gpus")
        gpu_ids = pick_gpus(request, found.indices, where)
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA numbers devices as nvidia-smi does
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
        mapping.append(f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}")
    if request.cpus is not None:
        threads = str(max(1, math.ceil(request.cpus)))
        env.update(dict.fromkeys(THREAD_VARS, threads))
        mapping.append(f"OMP_NUM_THREADS={threads} (thread pools; not a hard limit)")
    if request.memory_bytes is not None:
        mapping.append(f"memory {format_bytes(request.memory_bytes)}: recorded, not enforced on {where} "
                       "(compute=docker enforces it)")
    return Resources(request, gpu_ids, env, tuple(mapping))


class Executor(ABC):
    """One compute target, built from its typed ``compute`` config.

    What a target can do is declared here, and answered by each target: generic code asks
    ``supports(framework)``, ``docker_engine()``, ``default_concurrency()``, ``resources(spec)``, ``max_nodes()``,
    never which kind a target is. A subclass declares its ``kind`` (its registry key) and
    ``config_class`` (its config dataclass); both are checked against the registry.
    """

    kind: ClassVar[str]
    config_class: ClassVar[type[ComputeConfig]]
    frameworks: ClassVar[tuple[str, ...]] = ("python",)  # what ``supports`` says yes to

    def __init__(self, config: ComputeConfig, workspace: Workspace) -> None:
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

    # ---------------------------------------------------------- capabilities
    @classmethod
    def supports(cls, framework: str) -> bool:
        """Can this target start a ``framework=<framework>`` job? (Asked when the config is validated.)"""
        return framework in cls.frameworks

    def framework_argv(self, framework: str, spec: RunSpec, environment: PreparedEnvironment) -> list[str] | None:
        """This target's own argv for a ``framework`` job (Spark: its spark-submit); None: the framework's own."""
        return None

    def docker_engine(self) -> EngineConfig | None:
        """The Docker engine this target runs containers on (environment=docker builds there); None: it has none."""
        return None

    @classmethod
    def default_concurrency(cls) -> int:
        """How many sweep trials run at once when ``sweep.max_concurrent`` is not set.

        Asked before any trial's config is checked (the sweep's own config may leave values to its
        trials), so it is the kind's answer, not its settings'.
        """
        return 4

    def resources(self, spec: RunSpec) -> Resources:
        """How this target honours ``spec.resources`` (see ``Resources``); a request it cannot honour is a
        ConfigError, raised before anything starts. This default honours none: a target that maps requests
        overrides it (local and ssh with ``process_resources``, docker with device requests and limits)."""
        if spec.resources == ResourceRequest():
            return Resources()
        from mltrain.errors import ConfigError

        raise ConfigError(f"compute={self.kind} cannot honour resources ({spec.resources.describe()}); "
                          "drop the resources block or use a target that maps it (local, ssh, docker, spark)")

    def gpu_inventory(self) -> Inventory | None:
        """The GPUs on the host the job runs on (``mltrain.hosts.hardware``), asked once per executor;
        None where mltrain does not pick devices there (the target places jobs itself, or cannot see the host).
        A sweep on a target that answers gives its concurrent trials disjoint devices (``mltrain.sweep.gpus``)."""
        return None

    def _host_inventory(self) -> Inventory:
        """``gpu_inventory`` of the machine ``runner()`` reaches, cached on this executor."""
        found: Inventory | None = self.__dict__.get("_inventory")
        if found is None:
            from mltrain.hosts.hardware import inventory

            found = self.__dict__["_inventory"] = inventory(self.runner())
        return found

    def hardware(self, resources: Resources) -> dict[str, Any] | None:
        """The run's hardware record (``runs.hardware``): what the job saw on its host; None where unknown."""
        found = self.gpu_inventory()
        if found is None:
            return None
        from mltrain.hosts.hardware import record

        return record(self.runner(), found, resources.gpu_ids, cpus_limit=resources.request.cpus,
                      memory_limit=resources.request.memory_bytes)

    @classmethod
    def max_nodes(cls) -> int:
        """How many machines one job may span (``framework=distributed``'s ``nnodes``): one, unless a target
        places processes on several nodes itself (Ray)."""
        return 1

    def own_environment(self, environment: Environment) -> PreparedEnvironment | None:
        """A target that makes environments its own way on its nodes (Ray: runtime_env) says how the job runs
        there (asking ``environment.requirements()``); None: the environment prepares itself (``runner()``)."""
        return None

    def check_environment(self, environment: Environment) -> None:
        """Refuse, before anything runs, an environment this target cannot use (a ConfigError)."""
        if environment.provides_image:
            from mltrain.errors import ConfigError

            raise ConfigError(
                f"environment={environment.kind} makes a container image, which compute={self.kind} cannot run; "
                "use compute=docker"
            )

    def job_sees_client_paths(self) -> bool:
        """Does the job see this machine's files at the same paths? A Hydra app's job then writes its
        output folder in place (``hydra/launcher=mltrain``); otherwise it comes back with the run's outputs."""
        return False

    def describe(self) -> str:
        """One line for plans and logs: the target and where it is."""
        return self.kind

    def runner(self) -> Runner:
        """Where environments run their commands for this target (``mltrain.hosts.runner``): this machine by default."""
        from mltrain.hosts.runner import LOCAL

        return LOCAL

    @property
    def cancel_grace(self) -> float:
        return float(self.config.cancel_grace)


# ------------------------------------------------------------------ lifecycle
def handle_for(record: RunRecord, workspace: Workspace, store: Store | None = None) -> Handle | None:
    """The handle stored on ``record``; with ``store``, bound to it (what it learns goes on the record)."""
    if not record.handle:
        return None
    handle = _handle_from(record.handle, workspace.run_paths(record.id))
    return handle if store is None else bound(handle, store, record.id)


def bound(handle: Handle, store: Store, run_id: str) -> Handle:
    """``handle`` with its ``on_update`` set: keys it learns are merged into the run record's ``handle``."""
    if handle.on_update is not None:
        return handle

    def update(changes: dict[str, Any]) -> None:
        try:
            current = store.get(run_id).handle or {}
            store.update(run_id, handle={**current, **changes})
        except Exception as exc:  # the run goes on; the next reader tries again
            log.warning("could not record what the handle of %s learnt: %s", run_id, exc)

    return dataclasses.replace(handle, on_update=update)


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
    handle = bound(handle, store, record.id)
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
    points = [(m.name, m.value, m.step, m.time) for m in metrics]  # set with the end, in one write
    if canceled is not None:
        ended = store.transition(record.id, CANCELED, reason=canceled, exit_code=info.exit_code, metrics=points)
    elif info.succeeded:
        ended = store.transition(record.id, COMPLETED, exit_code=0, metrics=points)
    else:
        ended = store.transition(record.id, FAILED, exit_code=info.exit_code, reason=_failure_reason(info, paths),
                                 metrics=points)
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
    handle = handle_for(record, workspace, store)
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
    handle = bound(handle, store, record.id) if handle is not None else handle_for(record, workspace, store)
    if handle is None:
        # Still being prepared: its client sees the status and launches nothing (``run.submit_spec``);
        # its pip or build hook is stopped now rather than left to finish work nobody wants.
        from mltrain.hosts.client import stop_group

        if store.transition(record.id, CANCELED, reason=reason, unlaunched=True):
            stop_group(record.client)
            return store.get(record.id)
        return cancel_run(store, workspace, store.get(record.id), grace=grace, reason=reason)  # it just launched
    _request_cancel(workspace.run_paths(record.id), reason)
    handle.cancel(grace if grace is not None else handle.cancel_grace)
    info = handle.wait(5.0) or ExitInfo(None)
    return finalize(store, workspace, record, handle, info, canceled=reason)


CTRL_C = "canceled by user (Ctrl-C)"  # the reason a run canceled by its own client's Ctrl-C ends with

FOLLOW_WAIT = 0.05  # seconds a follower waits for a run's end between reads of its log (more while it is quiet)


def follow(store: Store, workspace: Workspace, record: RunRecord, *, out: Callable[[bytes], None] | None,
           offset: int = 0, handle: Handle | None = None,
           stop: Callable[[], str | None] | None = None, idle_wait: float = FOLLOW_WAIT) -> RunRecord:
    """Stream the log from ``offset`` until the run ends; one Ctrl-C cancels it.

    ``stop`` is asked between reads; a reason it returns cancels the run with that reason. The
    cancel happens here, in the thread that follows the run, so it never races the run's own end.
    While the log is quiet the look between reads backs off from ``FOLLOW_WAIT`` to ``idle_wait``
    (its end still wakes the wait at once where the host has pidfds): a sweep's sixteen followers
    looking 20 times a second each cost a 2-core machine a tenth of its CPU.
    A run still being prepared is followed too: its log so far, then the job's once it launches.
    An ended run's log is read from the run folder, never through its handle (complete since it ended).
    """
    handle = bound(handle, store, record.id) if handle is not None else handle_for(record, workspace, store)
    try:
        if handle is None:
            record, handle, offset = _until_launched(store, workspace, record, out=out, offset=offset, stop=stop)
            if handle is None:
                return record
        elif record.is_terminal:
            handle.release()
            return _rest_of_log(workspace, record, out, offset)
        wait_for = FOLLOW_WAIT
        while True:
            reason = stop() if stop is not None else None
            if reason:
                return cancel_run(store, workspace, store.get(record.id), reason=reason, handle=handle)
            chunk, offset = handle.read_log(offset)
            if chunk:
                if out is not None:
                    out(chunk)
                wait_for = FOLLOW_WAIT
                continue
            info = handle.wait(wait_for)
            if info is None:
                wait_for = min(2 * wait_for, idle_wait)
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
        return cancel_run(store, workspace, store.get(record.id), reason=CTRL_C,
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
        handle = handle_for(record, workspace, store)
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
