"""``compute=ray``: a Ray cluster, through its Jobs API -- Ray places the job, mltrain keeps the record.

How each concept maps onto Ray:

* **code**: the snapshot is the job's ``working_dir``, a zip in Ray's own content-addressed package store
  (``mltrain.targets.ray.package``): one GET when the cluster has it, an upload when it does not.
* **environment**: ``environment=venv`` becomes the job's ``runtime_env`` ``pip`` list (Ray builds the
  virtualenv on the node and caches it); ``user_managed`` runs the nodes' ``python3`` (or the interpreter
  named); ``environment=docker`` is refused (Ray's ``image_uri`` needs podman on every node).
* **job**: ``POST /api/jobs/`` with the same argv compute=local would run, wrapped by ``jobwrap`` (outputs and
  metrics come back through the job's log), the ``MLTRAIN_*`` variables in ``runtime_env.env_vars`` and the
  ``resources`` request as ``entrypoint_num_cpus/gpus/memory`` -- checked against the cluster's nodes first.
* **log**: Ray's job log, mirrored into the run's ``output.log`` by a ``LogMirror`` (by byte offset), without
  Ray's own entrypoint line and without the outputs frame.
* **several nodes** (``framework=distributed`` with ``nnodes`` > 1): the job's argv is the distributed launcher's,
  the same on every node (its place from ``NODE_RANK``/``MASTER_ADDR``/``MASTER_PORT``); the entrypoint runs a
  driver (``nodes``) that reserves a placement group of ``nnodes`` bundles, ``STRICT_SPREAD``, each bundle the
  per-node resources (``resources.cpus``, else ``nproc_per_node`` CPUs; ``gpus``; ``memory``), runs one task per
  bundle, and brings every node's output, outputs and metrics into the job's. ``nnodes`` beyond the cluster's
  alive nodes is refused before anything runs.
* **lifecycle**: ``SUCCEEDED/FAILED/STOPPED`` -> Completed/Failed/Canceled (Ray's message as the reason where
  it says more than the exit code); cancel is ``stop`` (TERM, KILL after ``cancel_grace``, by Ray).
"""

from __future__ import annotations

import base64
import importlib.resources
import json
import logging
import math
import re
import secrets
import shlex
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mltrain.errors import ConfigError, TargetError
from mltrain.frameworks.distributed import MAX_PROCESSES, DistributedFramework, DistributedFrameworkConfig
from mltrain.hosts.logmirror import LogMirror, LogSource
from mltrain.store.workspace import RunPaths, Workspace
from mltrain.targets.base import RUNTIME, Executor, ExitInfo, Handle, LaunchRequest, Resources
from mltrain.targets.ray.client import Cluster, Unreachable
from mltrain.targets.ray.config import RayCompute
from mltrain.targets.ray.frame import MAX_FRAME, exit_code

if TYPE_CHECKING:
    from mltrain.config.resources import ResourceRequest
    from mltrain.config.spec import RunSpec
    from mltrain.environments.base import Environment, PreparedEnvironment
    from mltrain.targets.ray.package import UploadStats

log = logging.getLogger(__name__)

LOG_MIRROR = "ray-log"
POLL_EVERY = 0.25  # seconds between status requests while a run is followed
NODE_PYTHON = "python3"  # the nodes' interpreter (a runtime_env pip virtualenv's, when there is one)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RAY_LINES = (re.compile(r"^Running entrypoint for job [^\n]*\n", re.MULTILINE),  # Ray's own, not the job's
              re.compile(r"^[-0-9]+ [0-9:,.]+\s+INFO job_manager\.py:\d+ -- Runtime env is setting up\.\n",
                         re.MULTILINE))


STRATEGY = "STRICT_SPREAD"  # a multi-node job's placement group: each bundle on a node of its own


def _shipped(module: str) -> str:
    """``module`` of this package as a program for ``python -c`` (it imports nothing of mltrain)."""
    source = importlib.resources.files("mltrain.targets.ray").joinpath(f"{module}.py").read_bytes()
    return f"import base64;exec(base64.b64decode({base64.b64encode(source).decode()!r}))"


def _wrapper_code() -> str:
    return _shipped("jobwrap")


def _nodes(spec: RunSpec) -> DistributedFrameworkConfig | None:
    """The distributed framework's settings when the job spans several nodes, else None."""
    config = spec.framework
    return config if isinstance(config, DistributedFrameworkConfig) and config.nnodes > 1 else None


# ------------------------------------------------------------------ the handle
@dataclass(frozen=True)
class RayHandle(Handle):
    """A job on a Ray cluster: the dashboard's URL, the job's submission id, and the marker of its outputs frame."""

    kind = "ray"

    address: str
    job_id: str
    marker: str
    timeout: float = 10.0
    display: dict[str, str] = field(default_factory=dict)  # shown by `runs show`: the job id, its dashboard page
    scratch: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False, metadata=RUNTIME)

    def cluster(self) -> Cluster:
        return Cluster.shared(self.address, self.timeout)

    def _mirror(self) -> LogMirror:
        mirror = self.scratch.get("mirror")
        if mirror is None:
            mirror = self.scratch["mirror"] = LogMirror(self.paths.log, self.paths.dir, LOG_MIRROR,
                                                        RayLogSource(self))
        return mirror

    def read_log(self, offset: int) -> tuple[bytes, int]:
        return self._mirror().read(offset)

    def logs(self) -> str:
        """The job's whole log as Ray serves it; once the job has ended, fetched once (kept for collect)."""
        if self.scratch.get("ended") and "log" in self.scratch:
            return str(self.scratch["log"])
        text = self.cluster().logs(self.job_id)
        if self.scratch.get("ended"):
            self.scratch["log"] = text
        return text

    def wait(self, timeout: float) -> ExitInfo | None:
        """Ask the cluster at most every ``POLL_EVERY`` seconds: eight trials followed at once must not keep the
        dashboard (one Python process on the head) busy answering status requests instead of starting jobs."""
        deadline = time.monotonic() + timeout
        while True:
            due = float(self.scratch.get("polled", 0.0)) + POLL_EVERY
            now = time.monotonic()
            if now >= due:
                self.scratch["polled"] = now
                info = self.poll()
                if info is not None:
                    return info
                continue
            if now >= deadline:
                return None
            time.sleep(min(due, deadline) - now)

    def poll(self) -> ExitInfo | None:
        try:
            details = self.cluster().job(self.job_id)
        except TargetError as exc:
            if "down" not in self.scratch:
                self.scratch["down"] = True
                log.warning("%s; the job goes on there, asking again", exc)
            return None
        self.scratch.pop("down", None)
        if details is None:
            return ExitInfo(None, f"the Ray cluster at {self.address} no longer knows job {self.job_id} "
                                  "(its head was restarted); submit the run again")
        status = str(details.get("status", ""))
        if status in ("PENDING", "RUNNING", ""):
            return None
        self.scratch["ended"] = True
        try:
            self._mirror().finish()  # the whole log is local before anyone hears the run ended
            wrapped = exit_code(self.logs(), self.marker)
        except TargetError as exc:
            log.warning("the end of the log of job %s could not be read: %s", self.job_id, exc)
            wrapped = None
        return _exit_info(status, details, self.paths, wrapped)

    def cancel(self, grace: float) -> None:
        """Ray's ``stop``: TERM to every process of the job, KILL after ``cancel_grace`` (set at submit)."""
        try:
            self.cluster().stop(self.job_id)
        except TargetError as exc:
            raise TargetError(f"cannot cancel Ray job {self.job_id}: {exc}; try `mltrain runs cancel "
                              f"{self.paths.dir.name}` again once the cluster answers") from exc

    def collect(self, paths: RunPaths) -> None:
        """Outputs and metrics from the frame at the end of the job's log (hostile input: see ``frame``)."""
        from mltrain.targets.ray.frame import extract, frame_bytes
        from mltrain.util.outputs import note_in_log

        self.scratch["ended"] = True
        self._mirror().finish()
        notes: list[str] = []
        try:
            data = frame_bytes(self.logs(), self.marker)
            if data is not None:
                notes = extract(data, paths.outputs, paths.metrics)
        except TargetError as exc:
            notes = [str(exc)]
        note_in_log(paths.log, notes)


def _exit_info(status: str, details: Mapping[str, Any], paths: RunPaths, wrapped: int | None) -> ExitInfo:
    """How the job ended: Ray's status and message, the exit code the wrapper saw (Ray has none for a stop)."""
    code = details.get("driver_exit_code")
    code = int(code) if isinstance(code, int) and not isinstance(code, bool) else wrapped
    message = _first_line(str(details.get("message") or ""))
    if status == "SUCCEEDED":
        return ExitInfo(0)
    if status == "STOPPED":
        _stopped(paths, f"stopped on the Ray cluster: {message}" if message else "stopped on the Ray cluster")
        return ExitInfo(code, message or "stopped on the Ray cluster")
    if code is not None and message.startswith("Job entrypoint command failed with exit code"):
        return ExitInfo(code)  # the script failed: its own last error line is the reason (as on every target)
    return ExitInfo(code, f"Ray: {message}" if message else f"the Ray job ended {status}")


def _stopped(paths: RunPaths, reason: str) -> None:
    """A job stopped on the cluster (``ray job stop``, the dashboard) is Canceled, as if canceled here."""
    from mltrain.targets.base import _cancel_requested, _request_cancel

    if _cancel_requested(paths) is None:
        _request_cancel(paths, reason)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:300]


class RayLogSource(LogSource):
    """A Ray job's log, as the dashboard serves it (whole), less Ray's entrypoint line and the outputs frame."""

    retry_after = 0.5  # seconds between fetches while a run is followed

    def __init__(self, handle: RayHandle) -> None:
        self.handle = handle
        self._offset = 0

    def open(self, position: Mapping[str, Any] | None, *, follow: bool) -> Iterator[bytes]:
        from mltrain.targets.ray.frame import visible

        offset = int((position or {}).get("offset", 0))
        text = self.handle.logs()
        for line in _RAY_LINES:
            text = line.sub("", text, count=1)
        shown = visible(text, self.handle.marker, ended=bool(self.handle.scratch.get("ended"))).encode(
            errors="replace")
        self._offset = max(offset, len(shown))
        return iter([shown[offset:]] if len(shown) > offset else [])

    def position(self) -> dict[str, Any]:
        return {"offset": self._offset}


# ---------------------------------------------------------------- the executor
class RayExecutor(Executor):
    kind = "ray"
    config_class = RayCompute
    config: RayCompute
    frameworks = ("python", "distributed")

    def __init__(self, config: RayCompute, workspace: Workspace) -> None:
        super().__init__(config, workspace)
        self.url = config.url()
        self.cluster = Cluster.shared(self.url, config.timeout)
        self.upload: UploadStats | None = None  # of the last stage_code (benchmarks and tests read it)
        self._pip: list[str] = []
        self._pip_args: list[str] = []
        self._parts: dict[str, list[str]] = {}  # index package -> its parts, from stage_code for launch

    # ---------------------------------------------------------- capabilities
    @classmethod
    def default_concurrency(cls) -> int:
        """The cluster's CPUs ($RAY_ADDRESS, else the local default), asked once; 4 when it does not answer."""
        try:
            cluster = Cluster.shared(RayCompute().url(), 5.0)
            cluster.version()
            return max(1, int(cluster.totals().cpus))
        except TargetError:
            return 4

    @classmethod
    def max_nodes(cls) -> int:
        """Ray places a job's nodes itself (a placement group): as many as the cluster has alive nodes, which
        ``resources`` checks against the cluster (one line naming them); the kind's answer is the bound."""
        return MAX_PROCESSES

    def framework_argv(self, framework: str, spec: RunSpec, environment: PreparedEnvironment) -> list[str] | None:
        """A multi-node job runs the same launcher argv on every node; each learns its place from the driver."""
        nodes = _nodes(spec) if framework == "distributed" else None
        if nodes is None:
            return None
        return DistributedFramework(nodes).node_command(environment.interpreter, spec.script_argv(), from_env=True)

    def describe(self) -> str:
        return f"ray ({self.url})"

    def check_environment(self, environment: Environment) -> None:
        if environment.provides_image:
            raise ConfigError(f"environment={environment.kind} on compute=ray: Ray runs images only with podman on "
                              "every node (runtime_env image_uri), which mltrain does not drive; use environment=venv "
                              "(Ray installs the packages on the node) or environment=user_managed")

    def own_environment(self, environment: Environment) -> PreparedEnvironment:
        """Ray makes the environment on the node: a venv's packages become the job's runtime_env ``pip``."""
        from mltrain.environments.base import PreparedEnvironment, digest

        wanted = environment.requirements()
        self._pip, self._pip_args = list(wanted.packages), list(wanted.pip_args)
        interpreter = wanted.interpreter or NODE_PYTHON
        description = f"ray runtime_env pip: {' '.join(self._pip)}" if self._pip else f"the Ray nodes' {interpreter}"
        return PreparedEnvironment(interpreter=interpreter, description=description,
                                   fingerprint=digest({"kind": "ray", "interpreter": interpreter, "pip": self._pip,
                                                       "pip_args": self._pip_args}))

    def resources(self, spec: RunSpec) -> Resources:
        """Ray places the job: the request becomes ``entrypoint_num_*`` (its ``settings``), refused here if no
        node of the cluster could ever give it; mltrain picks no devices (``gpu_ids`` None)."""
        nodes = _nodes(spec)
        if nodes is not None:
            return self._placement(spec.resources, nodes)
        found = self._entrypoint_resources(spec.resources)
        mapping = tuple(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in found.items())
        return Resources(spec.resources, None, {}, mapping, settings=found)

    # ------------------------------------------------------------------ code
    def code_is_staged(self, snapshot_id: str) -> bool:
        from mltrain.snapshot.blobstore import BlobStore
        from mltrain.targets.ray.package import index_uri, part_uris

        try:
            self.cluster.version()
            manifest = BlobStore(self.workspace.blobs).load_manifest(snapshot_id)
            return self.cluster.has_package(index_uri(part_uris(manifest)))
        except Unreachable:
            return False

    def stage_code(self, snapshot_id: str) -> str:
        """The snapshot's index package (the job's ``working_dir``), its parts uploaded where the cluster lacks them."""
        from mltrain.snapshot.blobstore import BlobStore
        from mltrain.targets.ray.package import UploadStats, stage

        self.cluster.version()
        self.upload = UploadStats()
        staged = stage(self.cluster, BlobStore(self.workspace.blobs), snapshot_id, self.upload)
        self._parts[staged.index] = list(staged.parts)
        return staged.index

    # ---------------------------------------------------------------- launch
    def launch(self, request: LaunchRequest) -> Handle:
        for name in request.env:
            if not ENV_NAME.match(name):
                raise ConfigError(f"env_vars.{name}: not a valid environment variable name (letters, digits, _)")
        from mltrain.hosts.wrapper import masked

        entry_resources = dict(request.resources.settings) if request.resources is not None else {}
        group = entry_resources.pop("placement_group", None)
        marker = f"--mltrain-{secrets.token_hex(12)}--"
        # secrets are masked on the node, by the filter every target uses, before the job's output reaches Ray's log
        argv, mask_env = masked(list(request.argv), request.argv[0], request.secrets)
        if group is not None:
            argv = self._driver(argv, group)
        spec = {"argv": argv, "marker": marker, "limit": MAX_FRAME, "node_python": NODE_PYTHON}
        encoded = base64.b64encode(json.dumps(spec).encode()).decode()
        python = request.argv[0] if request.argv and request.argv[0] != NODE_PYTHON else NODE_PYTHON
        entrypoint = f"{shlex.quote(python)} -c {shlex.quote(_wrapper_code())} {encoded}"
        extra = {k: v for k, v in self.config.runtime_env.items()}
        env_vars = {**dict(extra.pop("env_vars", {}) or {}), **request.env, **mask_env,
                    "RAY_JOB_STOP_WAIT_TIME_S": str(max(1, math.ceil(self.cancel_grace)))}
        runtime_env: dict[str, Any] = {**extra, "working_dir": request.cwd, "env_vars": env_vars}
        if request.cwd in self._parts:
            runtime_env["py_modules"] = self._parts[request.cwd]
        if self._pip:
            runtime_env["pip"] = {"packages": self._pip, **({"pip_install_options": self._pip_args}
                                                            if self._pip_args else {})}
        job_id = f"mltrain-{request.run_id}-{secrets.token_hex(3)}"
        payload: dict[str, Any] = {"entrypoint": entrypoint, "submission_id": job_id, "runtime_env": runtime_env,
                                   "metadata": {"mltrain_run": request.run_id, "experiment": request.experiment},
                                   **entry_resources}
        LogMirror.begin(request.paths.log, request.paths.dir, LOG_MIRROR)  # Ray's byte 0 goes after these
        try:
            job_id = self.cluster.submit(payload)
        except TargetError as exc:
            raise TargetError(f"could not submit run {request.run_id} to Ray: {exc}") from exc
        return RayHandle(request.paths, self.url, job_id, marker, self.config.timeout,
                         {"ray job": job_id, "dashboard": f"{self.url}/#/jobs/{job_id}"},
                         cancel_grace=self.cancel_grace)

    def _driver(self, argv: list[str], group: Mapping[str, Any]) -> list[str]:
        """The entrypoint's argv for a multi-node job: the driver (``nodes``), running ``argv`` on every node."""
        count = int(group["bundles"])
        spec = {"nodes": count, "bundle": dict(group["bundle"]), "argv": argv, "wrapper": _wrapper_code(),
                "limit": MAX_FRAME // count, "node_python": NODE_PYTHON, "grace": self.cancel_grace,
                "wait": self.config.placement_timeout, "master_port": int(group.get("master_port") or 0)}
        return [NODE_PYTHON, "-c", _shipped("nodes"), base64.b64encode(json.dumps(spec).encode()).decode()]

    def _placement(self, request: ResourceRequest, framework: DistributedFrameworkConfig) -> Resources:
        """A multi-node job's placement group: ``nnodes`` bundles of the per-node request, one node each, refused
        here unless that many alive nodes of the cluster could each give one bundle. The driver asks for nothing."""
        from mltrain.config.resources import format_bytes

        if request.gpu_ids:
            raise ConfigError(f"resources.gpus={list(request.gpu_ids)}: on compute=ray, Ray picks the devices; "
                              f"ask for a count per node, e.g. resources.gpus={len(request.gpu_ids)}")
        count, where = framework.nnodes, f"the Ray cluster at {self.url}"
        alive = self.cluster.nodes()
        if count > len(alive):
            raise ConfigError(f"framework.nnodes={count}: {where} has {len(alive)} alive node"
                              f"{'' if len(alive) == 1 else 's'}, and each node of the job needs one of its own "
                              f"({STRATEGY}); use framework.nnodes={max(1, len(alive))} or fewer (more ranks per "
                              "node: framework.nproc_per_node), or add nodes to the cluster")
        bundle: dict[str, float] = {"CPU": float(request.cpus if request.cpus is not None
                                                 else framework.nproc_per_node)}
        if request.wants_gpus:
            bundle["GPU"] = float(max(n.gpus for n in alive) if request.all_gpus else request.gpu_count)
        if request.memory_bytes is not None:
            bundle["memory"] = float(request.memory_bytes)
        shown = ", ".join(f"{key}={format_bytes(int(value)) if key == 'memory' else f'{value:g}'}"
                          for key, value in bundle.items())
        fit = sum(1 for n in alive if n.cpus >= bundle["CPU"] and n.gpus >= bundle.get("GPU", 0)
                  and n.memory >= bundle.get("memory", 0))
        if fit < count or bundle.get("GPU", 1) <= 0:
            raise ConfigError(f"resources ({request.describe()}) with framework.nnodes={count}: "
                              f"{'no' if fit == 0 else f'only {fit}'} node{'' if fit == 1 else 's'} of {where} "
                              f"can give one node's share ({shown}); resources are per node here: ask for less, "
                              "or add nodes to the cluster")
        settings = {"placement_group": {"bundles": count, "strategy": STRATEGY, "bundle": bundle,
                                        "master_port": framework.master_port}}
        mapping = (f"placement group of {count} bundles, {STRATEGY} (one node each)", f"each bundle: {shown}",
                   "MASTER_ADDR: bundle 0's node")
        return Resources(request, None, {}, mapping, settings=settings)

    def _entrypoint_resources(self, request: ResourceRequest) -> dict[str, Any]:
        """``entrypoint_num_*`` for the request, refused here if no node of the cluster could ever give them."""
        if request.gpu_ids:
            raise ConfigError(f"resources.gpus={list(request.gpu_ids)}: on compute=ray, Ray picks the devices; "
                              f"ask for a count, e.g. resources.gpus={len(request.gpu_ids)}")
        if not (request.wants_gpus or request.cpus is not None or request.memory_bytes is not None):
            return {}
        from mltrain.config.resources import format_bytes

        largest = self.cluster.largest_node()
        found: dict[str, Any] = {}
        gpus = largest.gpus if request.all_gpus else float(request.gpu_count)
        where = f"the Ray cluster at {self.url}"
        if request.wants_gpus:
            if gpus <= 0 or gpus > largest.gpus:
                raise ConfigError(f"resources.gpus={request.describe().split('gpus=')[1].split()[0]}: no node of "
                                  f"{where} has that many GPUs (the most on one node: {largest.gpus:g}); ask for "
                                  "fewer, or add GPU nodes to the cluster")
            found["entrypoint_num_gpus"] = gpus
        if request.cpus is not None:
            if request.cpus > largest.cpus:
                raise ConfigError(f"resources.cpus={request.cpus:g}: no node of {where} has that many CPUs "
                                  f"(the most on one node: {largest.cpus:g}); ask for fewer")
            found["entrypoint_num_cpus"] = request.cpus
        if request.memory_bytes is not None:
            if request.memory_bytes > largest.memory:
                raise ConfigError(f"resources.memory={format_bytes(request.memory_bytes)}: no node of {where} has "
                                  f"that much memory for tasks (the most on one node: "
                                  f"{format_bytes(int(largest.memory))}); ask for less")
            found["entrypoint_memory"] = request.memory_bytes
        return found

    @classmethod
    def handle_from_dict(cls, data: Mapping[str, Any], paths: RunPaths) -> Handle:
        return RayHandle.from_dict(data, paths)
