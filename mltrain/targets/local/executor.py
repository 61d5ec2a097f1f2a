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

The script is started by ``mltrain.hosts.local.LocalHost`` -- the same job code
the SSH helper runs on a host -- under the sh wrapper in a new session (its own
process group), so a Ctrl-C in the terminal reaches only mltrain, which then
cancels the whole group on purpose; and the run goes on if mltrain exits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltrain.hosts.local import LocalHost
from mltrain.store.workspace import RunPaths, Workspace
from mltrain.targets.base import Executor, Handle, HostHandle, LaunchRequest, Resources, process_resources, read_from
from mltrain.targets.local.config import LocalCompute
from mltrain.util.cores import usable_cores

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec
    from mltrain.hosts.hardware import Inventory
    from mltrain.snapshot.manifest import Manifest
    from mltrain.targets.local.workdir import WorkingDir


@dataclass(frozen=True)
class LocalHandle(HostHandle):
    """A run on this machine: its folder is the job's run folder on the ``LocalHost``."""

    kind = "local"

    def host(self) -> LocalHost:
        return LocalHost(self.paths.dir.parent)

    def read_log(self, offset: int) -> tuple[bytes, int]:
        return read_from(self.paths.log, offset)

    def collect(self, paths: RunPaths) -> None:
        """Outputs are already in place; the run's working directory goes (only outputs are kept)."""
        from mltrain.targets.local.workdir import remove

        remove(paths)


class LocalExecutor(Executor):
    kind = "local"
    config_class = LocalCompute
    config: LocalCompute
    frameworks = ("python", "pyspark", "distributed")  # pyspark: spark-submit --master local[*] here, as a plain job

    def __init__(self, config: LocalCompute, workspace: Workspace) -> None:
        super().__init__(config, workspace)
        self._manifests: dict[str, Manifest] = {}
        """Manifests loaded by ``stage_code``, reused by ``launch`` to build the working directory."""

    def job_sees_client_paths(self) -> bool:
        return True

    @classmethod
    def default_concurrency(cls) -> int:
        """One trial per core this process may use (a container's or taskset's share): the trials share them."""
        return usable_cores()

    def gpu_inventory(self) -> Inventory:
        return self._host_inventory()

    def resources(self, spec: RunSpec) -> Resources:
        """``CUDA_VISIBLE_DEVICES`` of the devices ``nvidia-smi`` lists here; thread counts for cpus."""
        return process_resources(spec.resources, self.gpu_inventory, "this machine")

    def code_is_staged(self, snapshot_id: str) -> bool:
        return (self.workspace.checkouts / snapshot_id).is_dir()

    def stage_code(self, snapshot_id: str) -> str:
        from mltrain.snapshot.blobstore import BlobStore
        from mltrain.snapshot.take import materialize

        checkout = self.workspace.checkouts / snapshot_id
        if checkout.is_dir():
            return str(checkout)  # a resubmit: reading a 10k-file manifest back costs ~0.1 s, and no run needs it here
        store = BlobStore(self.workspace.blobs)
        manifest = self._manifests[snapshot_id] = store.load_manifest(snapshot_id)
        return str(materialize(manifest, store, self.workspace.checkouts))

    def launch(self, request: LaunchRequest) -> Handle:
        from mltrain.targets.local import workdir

        paths = request.paths
        wd = self._working_dir(request)
        try:
            job = LocalHost(paths.dir.parent).launch(request.run_id, [*wd.prefix, *request.argv], cwd=wd.cwd,
                                                     env=request.env, secrets=request.secrets)
        except BaseException:
            if wd.cwd != request.cwd:
                workdir.remove(paths)
            raise
        return LocalHandle(paths, job.run_id, job.run_dir, job.pid, job.start_time, job.boot_id,
                           cancel_grace=self.cancel_grace)

    def _working_dir(self, request: LaunchRequest) -> WorkingDir:
        """The run's own view of the checkout ``stage_code`` returned (a checkout is named by its snapshot id)."""
        from mltrain.targets.local import workdir

        checkout = Path(request.cwd)
        if checkout.parent != self.workspace.checkouts:
            return workdir.WorkingDir(request.cwd)  # not staged by this executor: run where asked
        from mltrain.snapshot.blobstore import BlobStore

        store = BlobStore(self.workspace.blobs)
        return workdir.make(self.config.workdir, self.workspace, request.paths, checkout,
                            manifest=lambda: self._manifests.get(checkout.name) or store.load_manifest(checkout.name),
                            store=lambda: store)

    @classmethod
    def handle_from_dict(cls, data: Mapping[str, Any], paths: RunPaths) -> Handle:
        return LocalHandle.from_dict(data, paths)
