"""``compute=ssh``: a remote machine reached over SSH -- nothing to install there but Python 3 (or Docker too).

How each concept maps onto the host (see ``mltrain.hosts.agent`` for its layout):

* **connection**: ``mltrain.targets.ssh.conn`` (ssh config, host keys, keys) and
  ``mltrain.targets.ssh.link`` (a helper process per connection, deadlines, reconnects).
* **code**: the snapshot's blobs the host lacks, in one stream, then a
  checkout of hardlinks under ``<remote_dir>/checkouts/<id>`` (``mltrain.targets.ssh.upload``).
* **environment**: built or probed *on the host*: ``runner()`` gives the
  environments a remote command runner; ``docker_engine()`` gives the Docker
  environment the host's engine (through this connection).
* **job**: started by the helper under the sh wrapper in its own session
  (``setsid``), so it outlives the connection and the client. The helper
  records pid, kernel start time and boot id; the wrapper writes the exit
  code. With a container image the job is ``docker run`` on the host.
* **log**: the host's ``output.log`` is copied, by byte offset, to the end
  of the local run log (after the lines mltrain wrote while preparing), so
  any process reads it by offset, with nothing duplicated or lost.
* **outputs, metrics**: ``$MLTRAIN_OUTPUT_DIR`` / ``$MLTRAIN_METRICS_FILE``
  point into ``<remote_dir>/runs/<id>/``; ``collect`` brings them back as a
  tar extracted safely (the host is not trusted with our file system).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mltrain.errors import ConfigError, TargetError
from mltrain.hosts.wrapper import masked, wrapper_argv
from mltrain.store.workspace import RunPaths, Workspace
from mltrain.targets.base import Executor, ExitInfo, Handle, LaunchRequest, read_from
from mltrain.targets.ssh.config import SshCompute
from mltrain.targets.ssh.conn import LinkDown, SshSettings
from mltrain.targets.ssh.link import Link, RemoteRunner

if TYPE_CHECKING:
    from mltrain.environments.base import Environment
    from mltrain.targets.docker.util import EngineConfig
    from mltrain.targets.ssh.tunnel import DockerTunnel
    from mltrain.targets.ssh.upload import UploadStats

log = logging.getLogger(__name__)

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOG_CHUNK = 4 << 20
SYNC_STATE = "ssh-log.lock"
CONTAINER_CODE = "/mltrain/code"
CONTAINER_OUTPUTS = "/mltrain/run/outputs"
CONTAINER_METRICS = "/mltrain/run/metrics.jsonl"
CONTAINER_HOME = "/mltrain/home"


class SshHandle(Handle):
    kind = "ssh"

    def __init__(self, paths: RunPaths, settings: SshSettings, run_id: str, *, run_dir: str, pid: int,
                 start_time: str | None, boot_id: str, log_base: int, cancel_grace: float,
                 container: str | None = None, link: Link | None = None) -> None:
        self.paths = paths
        self.settings = settings
        self.run_id = run_id
        self.run_dir = run_dir
        self.pid = pid
        self.start_time = start_time
        self.boot_id = boot_id
        self.log_base = log_base  # the local log's size at launch: the host's byte 0 goes there
        self.cancel_grace = cancel_grace
        self.container = container
        self._link = link
        self._down_since: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ssh": self.settings.to_dict(), "run_id": self.run_id, "run_dir": self.run_dir,
                "pid": self.pid, "start_time": self.start_time, "boot_id": self.boot_id, "log_base": self.log_base,
                "cancel_grace": self.cancel_grace, "container": self.container}

    @property
    def link(self) -> Link:
        if self._link is None:
            self._link = Link.shared(self.settings)
        return self._link

    def _note_down(self, exc: LinkDown) -> None:
        if self._down_since is None:
            import time

            self._down_since = time.monotonic()
            log.warning("%s; the run goes on there, reconnecting with backoff", exc)

    def _note_up(self) -> None:
        if self._down_since is not None:
            log.warning("connection to %s is back", self.settings.host)
            self._down_since = None

    # ----------------------------------------------------------------- state
    def poll(self) -> ExitInfo | None:
        try:
            reply = self.link.call("poll", run_id=self.run_id)
        except LinkDown as exc:
            self._note_down(exc)
            return None
        self._note_up()
        if "exit_code" in reply:
            code = reply["exit_code"]
            self._sync(block=True)  # the whole log is local before anyone hears the run ended
            if not isinstance(code, int) or isinstance(code, bool):
                return ExitInfo(None, "unreadable exit code file on the host")
            return ExitInfo(code)
        state = reply.maybe("state", str)
        if state == "rebooted":
            return ExitInfo(None, f"host rebooted: {self.settings.host} restarted (its boot id changed) while the "
                                  "run was going, which ended it; submit it again")
        if state in ("vanished", "unknown"):
            self._sync(block=True)
            return ExitInfo(None, f"the process disappeared on {self.settings.host} without recording an exit code")
        return None

    # ------------------------------------------------------------------- log
    def read_log(self, offset: int) -> tuple[bytes, int]:
        self._sync(block=False)
        return read_from(self.paths.log, offset)

    def _sync(self, *, block: bool) -> None:
        """Append what the host's log has beyond ours; one copier at a time (an flock), by byte offset."""
        self.paths.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths.dir / SYNC_STATE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            except BlockingIOError:
                return  # another process is copying: read what it has written
            with open(self.paths.log, "ab") as out:
                while True:
                    remote_offset = max(0, out.tell() - self.log_base)
                    chunks: list[bytes] = []

                    def keep(_kind: bytes, data: bytes, sink: list[bytes] = chunks) -> None:
                        sink.append(data)

                    try:
                        reply = self.link.request({"op": "read_log", "run_id": self.run_id, "offset": remote_offset,
                                                   "limit": LOG_CHUNK}, on_data=keep, max_data=LOG_CHUNK)
                    except LinkDown as exc:
                        self._note_down(exc)
                        return
                    data = b"".join(chunks)
                    if reply.take("size", int) != len(data):
                        raise reply.bad(f"'size' says {reply['size']} bytes of log, {len(data)} came")
                    out.write(data)
                    out.flush()
                    if len(data) < LOG_CHUNK:
                        return
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- cancel
    def cancel(self, grace: float) -> None:
        """TERM the remote process group, KILL it after ``grace`` seconds (the helper does both)."""
        try:
            self.link.request({"op": "cancel", "run_id": self.run_id, "grace": grace, "container": self.container},
                              retry=True, deadline=grace + 2 * self.settings.link_timeout)
        except LinkDown as exc:
            raise TargetError(f"cannot cancel run {self.run_id}: {exc}; it goes on there; try "
                              f"`mltrain runs cancel {self.run_id}` again once {self.settings.host} answers") from exc

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

        try:
            for attempt in (0, 1):
                try:
                    self.link.request({"op": "pack", "run_id": self.run_id}, on_data=feed)
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
        self._sync(block=True)
        note_in_log(paths.log, report.lines())  # after the last copy of the host's log: its offsets stay right
        if failed and not isinstance(failed[0], StreamStopped):
            raise failed[0]  # a local error (a full disk), not the host's


class _StopPack(EOFError):
    """Raised inside a ``pack`` reply to abandon it: the link forgets the channel (``Link.request``)."""


class SshExecutor(Executor):
    kind = "ssh"
    config_class = SshCompute
    config: SshCompute

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
        hello = link.hello()
        run_dir = f"{hello['root']}/runs/{request.run_id}"
        env = {**request.env, "MLTRAIN_OUTPUT_DIR": f"{run_dir}/outputs",
               "MLTRAIN_METRICS_FILE": f"{run_dir}/metrics.jsonl"}
        argv = list(request.argv)
        touch: list[str] = []
        container = None
        if request.image:
            self._check_mounts(link, [request.cwd, f"{run_dir}/outputs", f"{run_dir}/metrics.jsonl"])
            container = f"mltrain-{request.run_id}"
            env.update({"MLTRAIN_OUTPUT_DIR": CONTAINER_OUTPUTS, "MLTRAIN_METRICS_FILE": CONTAINER_METRICS})
            argv = _docker_run(request, env, run_dir, f"{hello['uid']}:{hello['gid']}", container)
            touch = ["metrics.jsonl"]  # a bind-mounted file must exist first
        log_base = request.paths.log.stat().st_size if request.paths.log.exists() else 0
        # secrets: the helper's Python masks the output on the host, where the log is written
        python = str(hello.get("python") or self.settings.python)
        argv, mask_env = masked(argv, python, request.secrets)
        wrapped = wrapper_argv(f"{run_dir}/output.log", f"{run_dir}/exit_code", argv)
        launch_env = {**env, **mask_env}
        cwd = request.cwd
        try:
            for _ in range(3):
                info = link.request({"op": "launch", "run_id": request.run_id, "cwd": cwd, "env": launch_env,
                                     "touch": touch, "argv": wrapped}, retry=True)
                if not info.maybe("missing_code", bool):
                    break
                # another submit turned this checkout into its own (none of its runs was using it): stage again
                cwd = self.stage_code(posixpath.basename(cwd))
                if request.image:
                    self._check_mounts(link, [cwd])
                    wrapped = wrapper_argv(f"{run_dir}/output.log", f"{run_dir}/exit_code",
                                           masked(_docker_run(replace(request, cwd=cwd), env, run_dir,
                                                              f"{hello['uid']}:{hello['gid']}", str(container)),
                                                  python, request.secrets)[0])
            else:
                raise TargetError(f"could not start run {request.run_id}: its code keeps disappearing on "
                                  f"{self.settings.host}; submit again")
        except LinkDown as exc:
            raise TargetError(f"could not start run {request.run_id} on {self.settings.host}: {exc}") from exc
        pid = info.take("pid", int)
        if pid <= 0:
            raise info.bad(f"pid {pid}")
        return SshHandle(request.paths, self.settings, request.run_id, run_dir=info.take("run_dir", str), pid=pid,
                         start_time=info.maybe("start_time", str), boot_id=info.maybe("boot_id", str) or "",
                         log_base=log_base, cancel_grace=self.cancel_grace, container=container, link=link)

    def _check_mounts(self, link: Link, sources: list[str]) -> None:
        """The container's bind mounts never hand the job the host's Docker socket (nor a folder holding it).

        They are mltrain's own folders under ``compute.remote_dir``, but a link
        there (a checkout replaced by a link to ``/run``) would carry the socket
        along: each is resolved on the host, by its helper, and compared with
        the socket's usual paths (``/var/run/docker.sock``, ``/run/docker.sock``).
        """
        from mltrain.targets.docker.util import SOCKET_PATHS, socket_exposure

        try:
            real = {source: str(link.call("realpath", path=source)["path"]) for source in sources}
        except LinkDown as exc:
            raise TargetError(f"could not start the container on {self.settings.host}: {exc}") from exc
        for source in sources:
            exposed = socket_exposure(source, SOCKET_PATHS, real.get)
            if exposed is not None:
                raise ConfigError(
                    f"compute=ssh: the container's mount {exposed[1]} on {self.settings.host} would hand the job "
                    "the Docker engine's socket (root on the host); mltrain never does that: check "
                    "compute.remote_dir and the links under it"
                )

    @classmethod
    def handle_from_dict(cls, data: Mapping[str, Any], paths: RunPaths) -> Handle:
        return SshHandle(
            paths, SshSettings.from_dict(dict(data["ssh"])), str(data["run_id"]), run_dir=str(data["run_dir"]),
            pid=int(data["pid"]), start_time=data.get("start_time"), boot_id=str(data.get("boot_id", "")),
            log_base=int(data.get("log_base", 0)), cancel_grace=float(data.get("cancel_grace", 10.0)),
            container=data.get("container"),
        )

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._tunnel is not None:
                self._tunnel.close()


def _docker_run(request: LaunchRequest, env: Mapping[str, str], run_dir: str, user: str, name: str) -> list[str]:
    """``docker run`` on the host, set up as the Docker target sets up its containers.

    Values of the variables never appear on the command line: ``-e NAME``
    passes each from the environment the helper gives the docker client.
    """
    assert request.image is not None
    labels = ["--label", f"mltrain.run_id={request.run_id}", "--label", f"mltrain.experiment={request.experiment}"]
    variables = [w for name_ in sorted(env) for w in ("-e", name_)]
    return [
        "docker", "run", "--rm", "--init", "--name", name, *labels, "--user", user,
        "--security-opt", "no-new-privileges", "--tmpfs", f"{CONTAINER_HOME}:mode=1777",
        "-v", f"{request.cwd}:{CONTAINER_CODE}:ro", "-v", f"{run_dir}/outputs:{CONTAINER_OUTPUTS}:rw",
        "-v", f"{run_dir}/metrics.jsonl:{CONTAINER_METRICS}:rw", "-w", CONTAINER_CODE,
        "-e", f"HOME={CONTAINER_HOME}", *variables, "--entrypoint", request.argv[0], request.image, *request.argv[1:],
    ]
