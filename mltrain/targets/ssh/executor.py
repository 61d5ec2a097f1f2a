"""``compute=ssh``: a remote machine reached over SSH -- nothing to install there but Python 3 (or Docker too).

How each concept maps onto the host (see ``mltrain.hosts.agent`` for its layout):

* **connection**: ``mltrain.targets.ssh.conn`` (ssh config, host keys, keys) and
  ``mltrain.targets.ssh.link`` (a helper process per connection, deadlines, reconnects).
* **code**: the snapshot's blobs the host lacks, in one stream, then a
  checkout of hardlinks under ``<remote_dir>/checkouts/<id>`` (``mltrain.targets.ssh.upload``).
* **environment**: built or probed *on the host*: ``runner()`` gives the
  environments a remote command runner; ``docker_engine()`` gives the Docker
  environment the host's engine (through this connection).
* **job**: the host is a ``mltrain.targets.ssh.host.SshHost``: its helper runs
  the same job code as compute=local (``mltrain.hosts.agent.Jobs``), under the
  sh wrapper in its own session (``setsid``), so the job outlives the
  connection and the client. The helper records pid, kernel start time and
  boot id; the wrapper writes the exit code. With a container image the job is
  ``docker run`` on the host, of the container compute=docker would make
  (``mltrain.hosts.container.RunContainer``).
* **log**: the host's ``output.log`` is copied, by byte offset, to the end
  of the local run log (after the lines mltrain wrote while preparing) by a
  ``mltrain.hosts.logmirror.LogMirror`` that keeps its own position, so any
  process reads it by offset, with nothing duplicated or lost.
* **outputs, metrics**: ``$MLTRAIN_OUTPUT_DIR`` / ``$MLTRAIN_METRICS_FILE``
  point into ``<remote_dir>/runs/<id>/``; ``collect`` brings them back as a
  tar extracted safely (the host is not trusted with our file system).
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mltrain.errors import ConfigError, TargetError
from mltrain.hosts.base import CodeMissing
from mltrain.hosts.container import SOCKET_PATHS, RunContainer, check_own_mounts, root_warning, warn_in_log
from mltrain.hosts.logmirror import HostLogSource, LogMirror
from mltrain.store.workspace import RunPaths, Workspace
from mltrain.targets.base import RUNTIME, Executor, Handle, HostHandle, LaunchRequest, Resources, process_resources
from mltrain.targets.ssh.config import SshCompute
from mltrain.targets.ssh.conn import LinkDown, SshSettings
from mltrain.targets.ssh.host import SshHost
from mltrain.targets.ssh.link import Link, RemoteRunner

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec
    from mltrain.environments.base import Environment
    from mltrain.hosts.hardware import Inventory
    from mltrain.targets.docker.util import EngineConfig
    from mltrain.targets.ssh.tunnel import DockerTunnel
    from mltrain.targets.ssh.upload import UploadStats

log = logging.getLogger(__name__)

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOG_MIRROR = "ssh-log"  # ssh-log.json (the mirror's state) and ssh-log.lock in the run folder


@dataclass(frozen=True)
class SshHandle(HostHandle):
    """A run on an SSH host: the host's connection settings, and the run there (its log mirrored here)."""

    kind = "ssh"

    ssh: SshSettings = field(kw_only=True)
    container: str | None = None  # the container the job runs with an image (``docker run`` on the host)
    link: Link | None = field(default=None, kw_only=True, compare=False, repr=False, metadata=RUNTIME)  # the launch's

    def host(self) -> SshHost:
        host = self.scratch.get("host")
        if host is None:
            host = self.scratch["host"] = SshHost(self.link or Link.shared(self.ssh))
        return host

    def _mirror(self) -> LogMirror:
        mirror = self.scratch.get("mirror")
        if mirror is None:
            source = HostLogSource(self.host(), self.run_id)
            mirror = self.scratch["mirror"] = LogMirror(self.paths.log, self.paths.dir, LOG_MIRROR, source)
        return mirror

    def read_log(self, offset: int) -> tuple[bytes, int]:
        return self._mirror().read(offset)

    def _ended(self) -> None:
        self._mirror().finish()  # the whole log is local before anyone hears the run ended

    # --------------------------------------------------------------- collect
    def collect(self, paths: RunPaths) -> None:
        """Outputs and metrics back into the run folder: extracted by fd and bounded, as they arrive.

        The stream is hostile input (``mltrain.util.archive``) and is never held
        in memory whole. Extraction stopping early (a limit, a disk error) can
        only stop the helper's stream by closing the channel; a link that drops
        before any byte arrived is tried once more.
        """
        from mltrain.util.archive import Extractor, StreamStopped
        from mltrain.util.outputs import note_in_log

        extractor = Extractor(folders={"run/outputs": paths.outputs}, files={"run/metrics.jsonl": paths.metrics})
        failed: list[BaseException] = []

        def feed(kind: bytes, data: bytes) -> None:
            if kind != b"D":
                return
            try:
                extractor.feed(data)
            except BaseException as exc:
                failed.append(exc)
                raise _StopPack from exc  # an EOFError: the link closes this channel, the rest is never read

        link = self.host().link
        try:
            for attempt in (0, 1):
                try:
                    link.request({"op": "pack", "run_id": self.run_id}, on_data=feed)
                    break
                except LinkDown as exc:
                    if failed:
                        break
                    if attempt or extractor.report.received:
                        raise TargetError(f"cannot collect the outputs of run {self.run_id} ({exc}); "
                                          "`mltrain runs show` tries again") from exc
                    log.warning("%s; retrying once", exc)
        finally:
            report = extractor.close()
        self._mirror().finish()
        note_in_log(paths.log, report.lines())  # once the host's log is all here: nothing is copied after it
        if failed and not isinstance(failed[0], StreamStopped):
            raise failed[0]  # a local error (a full disk), not the host's


def container_limits(resources: Resources | None) -> list[str]:
    """``docker run`` options for the request, when the job is a container on the host: the devices
    ``process_resources`` picked from the host's ``nvidia-smi`` (``--gpus device=…``), ``--cpus``, ``--memory``."""
    if resources is None:
        return []
    request, options = resources.request, []
    if resources.gpu_ids:
        options += ["--gpus", "device=" + ",".join(map(str, resources.gpu_ids))]
    if request.cpus is not None:
        options += ["--cpus", f"{request.cpus:g}"]
    if request.memory_bytes is not None:
        options += ["--memory", str(request.memory_bytes), "--memory-swap", str(request.memory_bytes)]
    return options


class _StopPack(EOFError):
    """Raised inside a ``pack`` reply to abandon it: the link forgets the channel (``Link.request``)."""


class SshExecutor(Executor):
    kind = "ssh"
    config_class = SshCompute
    config: SshCompute
    frameworks = ("python", "distributed")

    def __init__(self, config: SshCompute, workspace: Workspace) -> None:
        super().__init__(config, workspace)
        self.settings = SshSettings.from_config(config)
        self._code_dir: str | None = None
        self._seen_staged: str | None = None
        self._tunnel: DockerTunnel | None = None
        self.upload: UploadStats | None = None  # of the last stage_code (benchmarks and tests read it)

    # ---------------------------------------------------------- capabilities
    def link(self) -> Link:
        return Link.shared(self.settings)

    def runner(self) -> RemoteRunner:
        return RemoteRunner(self.link())

    def docker_engine(self) -> EngineConfig:
        """The host's engine, through this SSH connection (no engine port opened): a local socket that leads there."""
        from mltrain.targets.docker.util import EngineConfig

        if self._tunnel is None:
            from mltrain.targets.ssh.tunnel import DockerTunnel

            self._tunnel = DockerTunnel(self.link())
        return EngineConfig(base_url=f"unix://{self._tunnel.path}")

    def gpu_inventory(self) -> Inventory:
        """The host's GPUs, as its ``nvidia-smi`` lists them (asked through the helper)."""
        return self._host_inventory()

    def resources(self, spec: RunSpec) -> Resources:
        """``CUDA_VISIBLE_DEVICES`` of the host's devices; thread counts for cpus (a container on the host:
        the same variables, the devices seen through its engine's runtime)."""
        return process_resources(spec.resources, self.gpu_inventory, self.settings.host)

    def describe(self) -> str:
        user = f"{self.settings.user}@" if self.settings.user else ""
        port = f":{self.settings.port}" if self.settings.port else ""
        return f"ssh ({user}{self.settings.host}{port})"

    def check_environment(self, environment: Environment) -> None:
        """Every environment kind works here: interpreters and venvs on the host, images on its engine."""

    # ------------------------------------------------------------------ code
    def code_is_staged(self, snapshot_id: str) -> bool:
        try:
            staged = self.link().request({"op": "have", "manifest": snapshot_id}, retry=True).take("checkout", bool)
        except LinkDown:
            return False
        self._seen_staged = snapshot_id if staged else None
        return staged

    def stage_code(self, snapshot_id: str) -> str:
        from mltrain.snapshot.blobstore import BlobStore
        from mltrain.targets.ssh.upload import UploadStats, stage_snapshot

        self.upload = UploadStats()
        if self._seen_staged == snapshot_id:  # the plan just saw its checkout there: spare a round trip
            self._seen_staged = None  # once: a launch that finds it gone stages it for real
            self._code_dir = f"{self.link().hello()['root']}/checkouts/{snapshot_id}"
            return self._code_dir
        self._code_dir = stage_snapshot(self.link(), BlobStore(self.workspace.blobs), snapshot_id, self.upload)
        return self._code_dir

    # ---------------------------------------------------------------- launch
    def launch(self, request: LaunchRequest) -> Handle:
        for name in request.env:
            if not ENV_NAME.match(name):
                raise ConfigError(f"env_vars.{name}: not a valid environment variable name (letters, digits, _)")
        link = self.link()
        host = SshHost(link)
        try:
            run_dir = host.run_dir(request.run_id)
            if request.image:
                self._warn_root(request, link)
            LogMirror.begin(request.paths.log, request.paths.dir, LOG_MIRROR)  # the host's byte 0 goes after these
            cwd = request.cwd
            for _ in range(3):
                argv, env, container = self._command(request, link, cwd, run_dir)
                try:
                    job = host.launch(request.run_id, argv, cwd=cwd, env=env, secrets=request.secrets,
                                      touch=["metrics.jsonl"] if container else [], container=container)
                    break
                except CodeMissing:
                    # another submit turned this checkout into its own (none of its runs was using it): stage again
                    cwd = self.stage_code(posixpath.basename(cwd))
            else:
                raise TargetError(f"could not start run {request.run_id}: its code keeps disappearing on "
                                  f"{self.settings.host}; submit again")
        except LinkDown as exc:
            raise TargetError(f"could not start run {request.run_id} on {self.settings.host}: {exc}") from exc
        return SshHandle(request.paths, job.run_id, job.run_dir, job.pid, job.start_time, job.boot_id,
                         ssh=self.settings, container=container, cancel_grace=self.cancel_grace, link=link)

    def _command(self, request: LaunchRequest, link: Link, cwd: str,
                 run_dir: str) -> tuple[list[str], dict[str, str], str | None]:
        """What the host starts: the argv itself, or ``docker run`` of the run's container; its env; the container.

        A container's bind mounts never hand the job the host's Docker socket
        (nor a folder holding it): they are mltrain's own folders under
        ``compute.remote_dir``, but a link there (a checkout replaced by a link
        to ``/run``) would carry the socket along, so each is resolved on the
        host, by its helper.
        """
        env = {**request.env, "MLTRAIN_OUTPUT_DIR": f"{run_dir}/outputs",
               "MLTRAIN_METRICS_FILE": f"{run_dir}/metrics.jsonl"}
        if not request.image:
            return list(request.argv), env, None
        hello = link.hello()
        spec = RunContainer(image=request.image, argv=request.argv, user=f"{hello['uid']}:{hello['gid']}",
                            run_id=request.run_id, experiment=request.experiment, env=request.env, code=cwd,
                            outputs=f"{run_dir}/outputs", metrics=f"{run_dir}/metrics.jsonl",
                            limits=container_limits(request.resources))

        def resolve(path: str) -> str:
            return link.call("realpath", path=path).take("path", str)

        check_own_mounts([cwd, f"{run_dir}/outputs", f"{run_dir}/metrics.jsonl"], SOCKET_PATHS, resolve,
                         where="compute=ssh", on=f" on {self.settings.host}",
                         hint="check compute.remote_dir and the links under it")
        return spec.run_argv(), spec.job_env(), spec.name

    def _warn_root(self, request: LaunchRequest, link: Link) -> None:
        user = f"{link.hello()['uid']}:{link.hello()['gid']}"
        root = root_warning(user, chosen=False, because=f"mltrain logs in to {self.settings.host} as root and the "
                            "container runs as the login's uid", fix="set compute.user to an unprivileged user there")
        if root:
            warn_in_log(request.paths.log, [root])

    @classmethod
    def handle_from_dict(cls, data: Mapping[str, Any], paths: RunPaths) -> Handle:
        return SshHandle.from_dict(data, paths)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._tunnel is not None:
                self._tunnel.close()

