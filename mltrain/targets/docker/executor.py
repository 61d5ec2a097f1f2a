"""``compute=docker``: the job is one container on a Docker engine (the local one, or any at ``base_url``).

A run's container, and why it looks the way it does (set up by
``mltrain.hosts.container.RunContainer``, which compute=ssh uses too):

* **image**: what the environment prepared (``environment=docker``); a host
  interpreter cannot run here, so other environments are refused up front.
* **command**: the argv as the entrypoint, never a shell string, so arguments
  arrive literally. The image's own ENTRYPOINT is not used.
* **who**: the caller's ``uid:gid`` (files it writes are the caller's), never
  privileged, ``no-new-privileges``, ``init`` on (signals reach the script,
  zombies are reaped), and the engine's socket is never mounted.
* **/mltrain/code** (the working directory): the snapshot, read-only -- a bind
  mount of the shared checkout on a local engine, copied in (root-owned)
  before start on a remote one, whose file system cannot see ours.
* **/mltrain/run/outputs**, **/mltrain/run/metrics.jsonl**: what
  ``$MLTRAIN_OUTPUT_DIR`` / ``$MLTRAIN_METRICS_FILE`` point at. On a local
  engine they are bind mounts of the run folder's own ``outputs`` and
  ``metrics.jsonl`` (the job writes in place, metrics are live, and no archive
  goes either way: ~120 ms less per run). Otherwise they live in the
  container, and ``collect`` pulls them back (extracted safely) once the job
  has ended. Then the container is removed (kept on failure with ``keep_container``).
* **/mltrain/home**: ``$HOME``, writable, for a uid the image may not know.
* labels ``mltrain.run_id`` / ``mltrain.experiment``, name ``mltrain-<run id>``.

The handle stores the container id and how to reach the engine, so any later
process can poll, read the log (``mltrain.targets.docker.logs``, a source for
``mltrain.hosts.logmirror.LogMirror``), cancel and collect.
At start a small detached process mirrors the container's log into the run's
``output.log`` until the container ends, watched or not: a container removed
behind mltrain's back (``docker rm -f``) leaves its log up to then, and the
run fails saying the container vanished.

Every engine call goes through ``mltrain.targets.docker.engine.Engine`` (the standard
library's HTTP client: no docker-py on a run's path). The create request is
``RunContainer.engine_body`` with this target's ``limits``, sizes checked when the executor is made.
A run's calls after the image inspect: create, start, a blocking ``wait`` on
a local engine (polling elsewhere), the log stream, one inspect once it has
stopped (kept: a stopped container's state no longer changes), remove.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltrain.errors import ConfigError, TargetError
from mltrain.hosts.container import (
    CODE_DIR,
    HOME_DIR,
    OUTPUT_DIR,
    ROOT,
    RUN_DIR,
    RunContainer,
    check_own_mounts,
    root_warning,
    socket_exposure,
    volume_policy,
    warn_in_log,
)
from mltrain.hosts.logmirror import LogMirror
from mltrain.hosts.wrapper import masked
from mltrain.store.workspace import RunPaths, Workspace
from mltrain.targets.base import RUNTIME, THREAD_VARS, Executor, ExitInfo, Handle, LaunchRequest, Resources
from mltrain.targets.docker import logs
from mltrain.targets.docker.config import DockerCompute
from mltrain.targets.docker.engine import connect, shared_engine
from mltrain.targets.docker.util import (
    EngineConfig,
    add_snapshot,
    dir_entry,
    engine_error,
    engine_sockets,
    is_not_found,
)

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec
    from mltrain.environments.base import Environment
    from mltrain.hosts.hardware import Inventory
    from mltrain.targets.docker.engine import Engine

log = logging.getLogger(__name__)

TRANSFERS = ("auto", "mount", "copy")


def _parse_user(user: str) -> tuple[int, int] | None:
    """``uid[:gid]`` as numbers, or None for a user name (resolved only inside the image)."""
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return int(uid), int(gid or uid)
    return None


def _check_volumes(volumes: list[str]) -> list[str]:
    """``host:container[:ro|rw]`` entries, checked for form and never over /mltrain (the socket: ``_exposures``)."""
    checked = []
    for spec in volumes:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
            raise ConfigError(
                f"compute.volumes: {spec!r} is not host_path_or_volume:/container/path[:ro|rw]"
            )
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise ConfigError(f"compute.volumes: {spec!r} ends in {parts[2]!r}; use :ro or :rw")
        if os.path.normpath(parts[1]) == ROOT or parts[1].startswith(ROOT + "/"):
            raise ConfigError(f"compute.volumes: {spec!r} mounts over {ROOT}, which mltrain uses; pick another path")
        checked.append(spec if len(parts) == 3 else f"{spec}:rw")
    return checked


def _same_socket(source: str, sockets: list[str]) -> str | None:
    """The socket ``source`` is a hard link to, on this machine (a link's path says nothing; its inode does)."""
    try:
        st = os.stat(source)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    for sock in sockets:
        with contextlib.suppress(OSError):
            other = os.stat(sock)
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return sock
    return None


def _exposures(volumes: list[str], engine: EngineConfig, resolve: Callable[[str], str | None] | None,
               api: Any = None) -> list[str]:
    """What in ``volumes`` would hand the job the engine's socket, one phrase per volume (empty: nothing).

    Host paths are resolved with ``resolve`` (on the engine's host); with
    ``api``, named volumes are inspected too: a ``local`` volume with
    ``o=bind`` is a bind of its ``device`` in disguise.
    """
    sockets = engine_sockets(engine)
    if resolve is not None:
        resolve = functools.lru_cache(maxsize=None)(resolve)  # one look per path (a round trip on ssh://)
    found = []
    for spec in volumes:
        source = spec.split(":")[0]
        what = repr(spec)
        if not source.startswith("/"):
            attrs = api.inspect_volume(source) if api is not None else None
            options = (attrs or {}).get("Options") or {}
            if "bind" not in str(options.get("o", "")).split(",") or not str(options.get("device", "")):
                continue
            source = str(options["device"])
            what = f"{spec!r} (a bind of {source})"
        exposed = socket_exposure(source, sockets, resolve)
        if exposed is None and engine.is_local:
            same = _same_socket(source, sockets)
            exposed = None if same is None else (same, f"{source} is a hard link to {same}")
        if exposed is not None:
            found.append(f"{what} hands the job the Docker engine's socket ({exposed[1]})")
    return found


def _device_requests(gpus: str | None) -> list[dict[str, Any]]:
    """``all``, a count (``2``) or device ids (``device=0,1`` or ``0,1``), as ``docker run --gpus`` takes them."""
    if not gpus:
        return []
    value = gpus.strip()

    def request(count: int = 0, ids: list[str] | None = None) -> dict[str, Any]:
        return {"Driver": "", "Count": count, "DeviceIDs": ids or [], "Capabilities": [["gpu"]], "Options": {}}

    if value == "all":
        return [request(count=-1)]
    if value.isdigit():
        return [request(count=int(value))]
    ids = value.removeprefix("device=").split(",")
    if not all(i.strip() for i in ids):
        raise ConfigError(f"compute.gpus={gpus!r}: use all, a count (2) or device ids (device=0,1)")
    return [request(ids=[i.strip() for i in ids])]


_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(key: str, value: str) -> int:
    """``4g``, ``512m``, ``1.5g``, ``1024`` (bytes) -> bytes, as ``docker run`` reads them."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*", str(value).lower())
    if match is None:
        raise ConfigError(f"compute.{key}={value!r}: give a size such as 512m or 4g (units b, k, m, g, t)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


GPU_REFUSED = re.compile(r"device driver|nvidia|DeviceRequests", re.IGNORECASE)


def gpu_refusal(exc: BaseException, engine: str) -> TargetError | None:
    """The engine's answer to a GPU device request it cannot serve, as one line saying what to do."""
    text = getattr(exc, "explanation", None) or str(exc)
    if not GPU_REFUSED.search(str(text)):
        return None
    return TargetError(f"the Docker engine ({engine}) cannot give the container GPUs (it said: "
                       f"{str(text).strip().splitlines()[0][:200]}); install the NVIDIA container toolkit there "
                       "(nvidia-ctk runtime configure --runtime=docker) or drop resources.gpus")


def limits(cfg: DockerCompute) -> dict[str, Any]:
    """The ``HostConfig`` limits of ``compute`` config (memory, CPUs, shm, network, GPUs) for the create request."""
    host: dict[str, Any] = {}
    if cfg.mem_limit:
        host["Memory"] = host["MemorySwap"] = parse_size("mem_limit", cfg.mem_limit)  # no swap beyond the limit
    if cfg.cpus:
        host["NanoCpus"] = int(cfg.cpus * 1e9)
    if cfg.shm_size:
        host["ShmSize"] = parse_size("shm_size", cfg.shm_size)
    if cfg.network:
        host["NetworkMode"] = cfg.network  # bridge, host, none, container:<id> or a network's name
    requests = _device_requests(cfg.gpus)
    if requests:
        host["DeviceRequests"] = requests
    return host


def _configured_ids(gpus: str) -> tuple[int, ...] | None:
    """The devices ``compute.gpus`` names, where it names them (None: all, or a count the engine picks)."""
    ids = gpus.strip().removeprefix("device=").split(",")
    if gpus.strip() == "all" or ("device=" not in gpus and len(ids) == 1):
        return None
    return tuple(int(i) for i in ids if i.strip().isdigit())


def _memory_label(host: Mapping[str, Any]) -> str | None:
    from mltrain.config.resources import format_bytes

    memory = host.get("Memory")
    return format_bytes(int(memory)) if memory else None


def exit_info(attrs: Mapping[str, Any], mem_limit: str | None) -> ExitInfo:
    """How a stopped container ended, with the engine's OOM flag turned into words."""
    state = attrs.get("State", {})
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        limit = mem_limit or _bytes(attrs.get("HostConfig", {}).get("Memory") or 0) or "none set: the host's memory"
        return ExitInfo(code, f"out of memory (limit {limit})")
    if code == 137:
        return ExitInfo(code, "killed (possibly out of memory)")
    if state.get("Error"):
        return ExitInfo(code, f"container error: {state['Error']}")
    return ExitInfo(code)


def _bytes(n: int) -> str:
    if not n:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return ""


@dataclass(frozen=True)
class DockerHandle(Handle):
    """A run's container on an engine: which engine, which container."""

    kind = "docker"

    container_id: str
    name: str = ""
    engine: EngineConfig = field(default_factory=EngineConfig)
    keep_container: bool = False
    mem_limit: str | None = None
    mounted: bool = False  # outputs and metrics are bind mounts: nothing to pull back
    api_version: str | None = None
    client: Any = field(default=None, kw_only=True, compare=False, repr=False, metadata=RUNTIME)  # the launch's
    scratch: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False, metadata=RUNTIME)

    @property
    def label(self) -> str:
        return self.name or self.container_id[:12]

    def _api(self) -> Any:
        """The ``docker.engine.Engine`` (made once; no call until one is needed)."""
        if self.client is not None:
            return self.client
        if "api" not in self.scratch:
            self.scratch["api"] = connect(self.engine, version=self.api_version)
        return self.scratch["api"]

    def _log(self) -> LogMirror:
        if "log" not in self.scratch:
            self.scratch["log"] = logs.container_log(self.paths.log, self.paths.dir, self.container_id, self._api())
        mirror: LogMirror = self.scratch["log"]
        return mirror

    def _inspect(self) -> dict[str, Any] | None:
        ended: dict[str, Any] | None = self.scratch.get("ended")  # a stopped container's inspect no longer changes
        if ended is not None:
            return ended
        try:
            attrs: dict[str, Any] | None = self._api().inspect_container(self.container_id)
        except Exception as exc:
            raise engine_error(f"inspect container {self.label}", exc) from exc
        if attrs is not None and attrs["State"].get("Status") == "removing":
            return None  # on its way out: as good as gone (mltrain's own removal wrote docker-exit.json first)
        if attrs is not None and attrs["State"].get("Status") not in logs.ACTIVE:
            self.scratch["ended"] = attrs
        return attrs

    @property
    def _exit_file(self) -> Path:
        """How the container ended, written by ``collect`` before it removes the container."""
        return self.paths.dir / "docker-exit.json"

    def poll(self) -> ExitInfo | None:
        attrs = self._inspect()
        if attrs is None:
            try:  # another process collected and removed it: it wrote down how it ended
                data = json.loads(self._exit_file.read_text())
                return ExitInfo(data.get("exit_code"), data.get("reason"))
            except (OSError, ValueError):
                return ExitInfo(None, f"container {self.label} vanished before its results were collected "
                                      "(removed outside mltrain?); its log up to then is kept")
        if attrs["State"].get("Status") in logs.ACTIVE:
            return None
        self._log().finish()  # the whole log is in the file before anyone hears the run ended
        return exit_info(attrs, self.mem_limit)

    def wait(self, timeout: float) -> ExitInfo | None:
        """On a local engine, one blocking ``wait`` call (its end is the signal); elsewhere polling."""
        if not self.engine.is_local:  # a blocking call per poll is cheap only on a local socket
            return super().wait(timeout)
        try:
            if self._api().wait(self.container_id, timeout=max(timeout, 0.001)) is None:
                return None  # still running
        except Exception as exc:
            if not is_not_found(exc):
                raise engine_error(f"wait for container {self.label}", exc) from exc
        return self.poll()

    def read_log(self, offset: int) -> tuple[bytes, int]:
        return self._log().read(offset)

    def cancel(self, grace: float) -> None:
        """``docker stop``: SIGTERM (forwarded by init to the script), SIGKILL after ``grace`` seconds."""
        try:
            self._api().stop(self.container_id, max(0, math.ceil(grace)))
        except Exception as exc:
            if not is_not_found(exc):
                raise engine_error(f"stop container {self.label}", exc) from exc

    def collect(self, paths: RunPaths) -> None:
        """Pull outputs and metrics back, then remove the container (kept on failure if asked)."""
        attrs = self._inspect()
        if attrs is None:
            return  # collected (and removed) already, by this or another process
        if attrs["State"].get("Status") in logs.ACTIVE:
            raise TargetError(f"container {self.label} is still running; not collecting it")
        self._log().finish()
        api = self._api()
        if not self.mounted:  # hostile input: extracted by fd, bounded (mltrain.util.archive)
            from mltrain.util.archive import extract
            from mltrain.util.outputs import note_in_log

            try:
                report = extract(api.get_archive(self.container_id, RUN_DIR),
                                 folders={"run/outputs": paths.outputs}, files={"run/metrics.jsonl": paths.metrics})
            except Exception as exc:
                if not is_not_found(exc):
                    raise engine_error(f"copy the outputs out of container {self.label}", exc) from exc
            else:
                note_in_log(paths.log, report.lines())  # the log is finished: nothing is copied into it after
        info = exit_info(attrs, self.mem_limit)
        self._exit_file.write_text(json.dumps({"exit_code": info.exit_code, "reason": info.reason}))
        if not info.succeeded and self.keep_container:
            log.info("keeping container %s of a failed run (compute.keep_container)", self.label)
            return
        try:
            api.remove(self.container_id)
        except Exception as exc:
            raise engine_error(f"remove container {self.label}", exc) from exc


class DockerExecutor(Executor):
    kind = "docker"
    config_class = DockerCompute
    config: DockerCompute
    frameworks = ("python", "distributed")

    def __init__(self, config: DockerCompute, workspace: Workspace) -> None:
        super().__init__(config, workspace)
        self.engine = EngineConfig.from_config(config)
        if config.code_transfer not in TRANSFERS:
            raise ConfigError(f"compute.code_transfer={config.code_transfer!r}: choose one of {', '.join(TRANSFERS)}")
        self.volumes = _check_volumes(list(config.volumes))
        self.allow_socket = bool(config.allow_engine_socket)
        # the engine's host is this machine: its links resolve here (remote ones at launch, through the engine)
        exposed = _exposures(list(config.volumes), self.engine, os.path.realpath if self.engine.is_local else None)
        volume_policy(exposed, allow=self.allow_socket)
        self.limits = limits(config)  # bad sizes fail now
        self._code: tuple[str, str] | None = None  # ("mount", host folder) or ("copy", snapshot id)

    # ---------------------------------------------------------- capabilities
    def docker_engine(self) -> EngineConfig:
        return self.engine

    def gpu_inventory(self) -> Inventory | None:
        """This machine's GPUs when the engine runs here; None for a remote engine (its devices are its own)."""
        return self._host_inventory() if self.engine.is_local else None

    def resources(self, spec: RunSpec) -> Resources:
        """The request as the create call's ``HostConfig``: ``DeviceRequests`` (``--gpus``), ``NanoCpus``
        (``--cpus``), ``Memory`` (``--memory``, no swap beyond it). ``compute.gpus/cpus/mem_limit`` set the same
        fields; where both are set, ``resources`` wins (one value reaches the engine)."""
        from mltrain.config.resources import format_bytes, pick_gpus

        request = spec.resources
        host = dict(self.limits)
        mapping: list[str] = []
        env: dict[str, str] = {}
        gpu_ids = None
        if request.wants_gpus:
            found = self.gpu_inventory()
            if found is not None and not found.error:
                gpu_ids = pick_gpus(request, found.indices, f"the engine's machine ({self.engine.describe()})")
            if gpu_ids is not None:
                gpus = "device=" + ",".join(map(str, gpu_ids))
            elif request.all_gpus:
                gpus = "all"
            elif request.gpu_ids:
                gpus = "device=" + ",".join(map(str, request.gpu_ids))
            else:
                gpus = str(request.gpu_count)
            host["DeviceRequests"] = _device_requests(gpus)
            mapping.append(f"--gpus {gpus} (DeviceRequests)")
        elif self.config.gpus:
            mapping.append(f"--gpus {self.config.gpus} (compute.gpus)")
            gpu_ids = _configured_ids(self.config.gpus)
        else:
            gpu_ids = ()  # no device request: the container sees no GPU (what its hardware record says)
        if request.cpus is not None:
            host["NanoCpus"] = int(request.cpus * 1e9)
            env.update(dict.fromkeys(THREAD_VARS, str(max(1, math.ceil(request.cpus)))))
            mapping.append(f"--cpus {request.cpus:g} (NanoCpus)")
        elif self.config.cpus:
            mapping.append(f"--cpus {self.config.cpus:g} (compute.cpus)")
        if request.memory_bytes is not None:
            host["Memory"] = host["MemorySwap"] = request.memory_bytes
            mapping.append(f"--memory {format_bytes(request.memory_bytes)} (Memory, no swap)")
        elif self.config.mem_limit:
            mapping.append(f"--memory {self.config.mem_limit} (compute.mem_limit)")
        return Resources(request, gpu_ids, env, tuple(mapping), settings=host)

    def _limit_label(self, resources: Resources | None) -> str | None:
        """The memory limit as the user wrote it: resources.memory when it set one, else compute.mem_limit."""
        if resources is not None and resources.request.memory_bytes is not None:
            return _memory_label(resources.settings)
        return self.config.mem_limit

    def hardware(self, resources: Resources) -> dict[str, Any] | None:
        """The host's record, with the limits the engine enforces (from ``resources`` or compute's own fields)."""
        found = self.gpu_inventory()
        if found is None:
            return None
        from mltrain.hosts.hardware import record

        host = resources.settings
        cpus = host.get("NanoCpus")
        return record(self.runner(), found, resources.gpu_ids, cpus_limit=cpus / 1e9 if cpus else None,
                      memory_limit=host.get("Memory") or None)

    def docker_client(self) -> Engine:
        """The engine's ``Engine`` (shared with the environment; unreachable is a one-line TargetError on the first
        call)."""
        return shared_engine(self.engine)

    def describe(self) -> str:
        return f"docker ({self.engine.describe()})"

    def check_environment(self, environment: Environment) -> None:
        if not environment.provides_image:
            raise ConfigError(
                f"compute=docker runs a container image, and environment={environment.kind} makes none; "
                "use environment=docker (or a preset such as environment=docker_python)"
            )

    @property
    def copies_code(self) -> bool:
        mode = self.config.code_transfer
        return mode == "copy" or (mode == "auto" and not self.engine.is_local)

    # ------------------------------------------------------------------ code
    def code_is_staged(self, snapshot_id: str) -> bool:
        return not self.copies_code and (self.workspace.checkouts / snapshot_id).is_dir()

    def stage_code(self, snapshot_id: str) -> str:
        from mltrain.snapshot.blobstore import BlobStore
        from mltrain.snapshot.take import materialize

        checkout = self.workspace.checkouts / snapshot_id
        store = BlobStore(self.workspace.blobs)
        if self.copies_code:
            store.load_manifest(snapshot_id)  # fail here, not half-way through launch
            self._code = ("copy", snapshot_id)
        elif checkout.is_dir():  # built once per snapshot: no need to read its manifest again
            self._code = ("mount", str(checkout))
        else:
            self._code = ("mount", str(materialize(store.load_manifest(snapshot_id), store, self.workspace.checkouts)))
        return CODE_DIR

    # ---------------------------------------------------------------- launch
    def launch(self, request: LaunchRequest) -> Handle:
        if not request.image:
            raise TargetError("compute=docker needs a container image; use environment=docker")
        if self._code is None:
            raise TargetError("internal: stage_code must run before launch")
        engine = self.docker_client()
        # again where the engine can tell: links on a remote engine's host, named volumes that are binds
        resolve = os.path.realpath if self.engine.is_local else engine.host_realpath
        warnings = volume_policy(_exposures(list(self.config.volumes), self.engine, resolve, api=engine),
                                 allow=self.allow_socket)
        user = self.config.user or f"{os.getuid()}:{os.getgid()}"
        root = root_warning(user, chosen=self.config.user is not None, because="mltrain runs as root and "
                            "compute.user is not set", fix="set compute.user=UID:GID (e.g. compute.user=1000:1000) "
                            "or a user name the image knows")
        warn_in_log(request.paths.log, [*warnings, *([root] if root else [])])
        owner = _parse_user(user)
        # secrets: the image's Python masks the output inside the container, before the engine keeps it
        argv, mask_env = masked(list(request.argv), request.interpreter or "python3", request.secrets,
                                forward_signals=True)
        mounted = self._code[0] == "mount" and owner == (os.getuid(), os.getgid())
        host_limits = dict(request.resources.settings) if request.resources is not None else self.limits
        if mounted:  # the job writes straight into the run folder, as the caller
            request.paths.outputs.mkdir(parents=True, exist_ok=True)
            request.paths.metrics.touch()
        spec = RunContainer(
            image=request.image, argv=argv, user=user, run_id=request.run_id, experiment=request.experiment,
            env={**request.env, **mask_env}, code=self._code[1] if self._code[0] == "mount" else None,
            outputs=str(request.paths.outputs) if mounted else None,
            metrics=str(request.paths.metrics) if mounted else None,
            volumes=self.volumes, labels=self.config.labels, home_tmpfs=mounted,
        )
        check_own_mounts([m for m in (spec.code, spec.outputs, spec.metrics) if m], engine_sockets(self.engine),
                         resolve, where="compute=docker",
                         hint="check the workspace folder (MLTRAIN_HOME) and the links under it")
        try:
            container = engine.create_container(spec.engine_body(host_limits), spec.name)
        except Exception as exc:
            refused = gpu_refusal(exc, self.engine.describe()) if "DeviceRequests" in host_limits else None
            if refused is not None:
                raise refused from exc
            raise engine_error(f"create the container for run {request.run_id} (image {request.image})",
                               exc) from exc
        try:
            if not mounted:
                self._put_files(engine, container, owner)
            logs.begin(request.paths.log, request.paths.dir)
            engine.start(container)
            # Inside the try: a Ctrl-C before the handle exists would leave the job running with no record of it.
            logs.start_mirror(request.paths.log, request.paths.dir, container, self.engine.to_dict(),
                              engine.api_version)
        except BaseException as exc:
            try:
                engine.remove(container)
            except Exception as cleanup:
                log.warning("could not remove container %s: %s", spec.name, cleanup)
            if isinstance(exc, Exception):
                refused = gpu_refusal(exc, self.engine.describe()) if "DeviceRequests" in host_limits else None
                raise refused or engine_error(f"start the container for run {request.run_id}", exc) from exc
            raise
        return DockerHandle(request.paths, container, spec.name, self.engine, keep_container=self.config.keep_container,
                            mem_limit=self._limit_label(request.resources), mounted=mounted,
                            api_version=engine.api_version,
                            cancel_grace=self.cancel_grace, client=engine)

    def _put_files(self, engine: Any, container: str, owner: tuple[int, int] | None) -> None:
        """The run's folders (owned by the job's user) and, for a remote engine, the code -- one archive."""
        uid, gid = owner or (0, 0)
        mode = 0o755 if owner else 0o777  # a user name: its uid is only known inside the image
        with tempfile.TemporaryFile() as buf:
            import tarfile

            with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(dir_entry(ROOT.strip("/")))
                for folder in (RUN_DIR, OUTPUT_DIR, HOME_DIR):
                    tar.addfile(dir_entry(folder.strip("/"), uid=uid, gid=gid, mode=mode))
                if self._code is not None and self._code[0] == "copy":
                    from mltrain.snapshot.blobstore import BlobStore

                    blobs = BlobStore(self.workspace.blobs)
                    tar.addfile(dir_entry(CODE_DIR.strip("/")))
                    add_snapshot(tar, blobs.load_manifest(self._code[1]), blobs, CODE_DIR.strip("/"))
            size = buf.tell()
            buf.seek(0)
            engine.put_archive(container, "/", buf, size)

    @classmethod
    def handle_from_dict(cls, data: Mapping[str, Any], paths: RunPaths) -> Handle:
        return DockerHandle.from_dict(data, paths)
