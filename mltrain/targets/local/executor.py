"""``compute=local``: this machine. Each run executes in its own working directory.

``stage_code`` builds the snapshot's shared, read-only checkout
(``<workspace>/checkouts/<id>/``) once per snapshot. ``launch`` then gives the
run its own copy of that tree, ``runs/<id>/wd/``, made of hardlinks to the same
blobs (see :mod:`mltrain.snapshot.materialize`), and starts the script there.
So files a script writes next to itself (``torch.save("model.pt")``,
``lightning_logs/``) never collide with a concurrent sweep trial nor show up
in a later run of the same snapshot. The working directory is removed when
the run is finalized (``collect``); what the script writes under
``$MLTRAIN_OUTPUT_DIR`` (``runs/<id>/outputs/``) is what is kept.

The script is started under the sh wrapper in a new session (its own process
group), so a Ctrl-C in the terminal reaches only mltrain, which then cancels
the whole group on purpose; and the run goes on if mltrain exits.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltrain.hosts.agent import start_time as process_start_time  # the same /proc reading the remote helper does
from mltrain.hosts.wrapper import masked, wrapper_argv
from mltrain.store.workspace import RunPaths, Workspace
from mltrain.targets.base import Executor, ExitInfo, Handle, LaunchRequest, read_from
from mltrain.targets.local.config import LocalCompute

if TYPE_CHECKING:
    from mltrain.snapshot.manifest import Manifest


def _exited_within(pid: int, timeout: float) -> bool:
    """Block until our child ``pid`` exits (True) or ``timeout`` passes (False), woken by the exit itself.

    ``Popen.wait(timeout)`` polls with sleeps growing to 50 ms, which a sweep of short trials pays on
    every trial; a pidfd becomes readable the moment the process ends. Without pidfds (not Linux, or
    a kernel before 5.3) this says True and leaves the waiting to ``Popen.wait``.
    """
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return True
    try:
        poller = select.poll()  # not select.select: it fails for fds >= 1024, which a large sweep reaches
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))
    finally:
        os.close(fd)


class LocalHandle(Handle):
    kind = "local"

    def __init__(self, paths: RunPaths, pid: int, start_time: str | None, cancel_grace: float,
                 process: subprocess.Popen[bytes] | None = None) -> None:
        self.paths = paths
        self.pid = pid
        self.start_time = start_time
        self.cancel_grace = cancel_grace
        self._process = process

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "pid": self.pid, "start_time": self.start_time, "cancel_grace": self.cancel_grace}

    def _exit_from_file(self) -> ExitInfo | None:
        try:
            text = self.paths.exit_code.read_text().strip()
        except FileNotFoundError:
            return None
        return ExitInfo(int(text)) if text.lstrip("-").isdigit() else ExitInfo(None, "unreadable exit code file")

    def _alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        current = process_start_time(self.pid)
        return current is not None and (self.start_time is None or current == self.start_time)

    def poll(self) -> ExitInfo | None:
        info = self._exit_from_file()
        if info is not None:
            return info
        if self._alive():
            return None
        info = self._exit_from_file()  # it may have written the file just now
        if info is not None:
            return info
        return ExitInfo(None, "process disappeared without recording an exit code")

    def wait(self, timeout: float) -> ExitInfo | None:
        if self._process is not None:
            if not _exited_within(self._process.pid, timeout):
                return None
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        return super().wait(0 if self._process is not None else timeout)

    def read_log(self, offset: int) -> tuple[bytes, int]:
        return read_from(self.paths.log, offset)

    def _signal_group(self, sig: signal.Signals) -> bool:
        if not self._alive():
            return False
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def cancel(self, grace: float) -> None:
        if not self._signal_group(signal.SIGTERM):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.wait(0.05) is not None and not self._group_alive():
                return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # the group, stragglers included

    def release(self) -> None:
        if self._process is not None:
            self._process.poll()  # reaps it if it has ended

    def collect(self, paths: RunPaths) -> None:
        """Outputs are already in place; the run's working directory goes (only outputs are kept)."""
        from mltrain.snapshot.materialize import remove_tree

        remove_tree(paths.workdir)

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


class LocalExecutor(Executor):
    kind = "local"
    config_class = LocalCompute
    config: LocalCompute
    frameworks = ("python", "pyspark")  # pyspark: spark-submit --master local[*] here, as a plain local job

    def __init__(self, config: LocalCompute, workspace: Workspace) -> None:
        super().__init__(config, workspace)
        self._manifests: dict[str, Manifest] = {}
        """Manifests loaded by ``stage_code``, reused by ``launch`` to build the working directory."""

    @classmethod
    def default_concurrency(cls) -> int:
        """One trial per CPU: the trials share this machine."""
        return os.cpu_count() or 1

    def code_is_staged(self, snapshot_id: str) -> bool:
        return (self.workspace.checkouts / snapshot_id).is_dir()

    def stage_code(self, snapshot_id: str) -> str:
        from mltrain.snapshot.blobstore import BlobStore
        from mltrain.snapshot.take import materialize

        store = BlobStore(self.workspace.blobs)
        manifest = self._manifests[snapshot_id] = store.load_manifest(snapshot_id)
        return str(materialize(manifest, store, self.workspace.checkouts))

    def launch(self, request: LaunchRequest) -> Handle:
        paths = request.paths
        paths.outputs.mkdir(parents=True, exist_ok=True)
        cwd = self._working_dir(request)
        argv, mask_env = masked(request.argv, sys.executable, request.secrets)
        env = {**os.environ, **request.env, **mask_env}
        try:
            process = subprocess.Popen(
                wrapper_argv(str(paths.log), str(paths.exit_code), argv),
                cwd=cwd, env=env, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except BaseException:
            if cwd != request.cwd:
                from mltrain.snapshot.materialize import remove_tree

                remove_tree(cwd)
            raise
        return LocalHandle(paths, process.pid, process_start_time(process.pid), self.cancel_grace, process)

    def _working_dir(self, request: LaunchRequest) -> str:
        """The run's own copy of the checkout ``stage_code`` returned (a checkout is named by its snapshot id)."""
        checkout = Path(request.cwd)
        if checkout.parent != self.workspace.checkouts:
            return request.cwd  # not staged by this executor: run where asked
        from mltrain.snapshot.blobstore import BlobStore
        from mltrain.snapshot.materialize import make_workdir

        store = BlobStore(self.workspace.blobs)
        manifest = self._manifests.get(checkout.name) or store.load_manifest(checkout.name)
        return str(make_workdir(manifest, store, request.paths.workdir))

    @classmethod
    def handle_from_dict(cls, data: Mapping[str, Any], paths: RunPaths) -> Handle:
        return LocalHandle(paths, int(data["pid"]), data.get("start_time"), float(data.get("cancel_grace", 10.0)))
