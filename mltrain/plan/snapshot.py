"""The SNAPSHOT stage's work, in one place for everyone who needs it.

``take`` is the stage itself (the source tree into the blob store, and the git state beside it); a sweep
calls it once per source directory and hands the result to each trial's plan as ``given``. ``preview`` is
what ``mltrain plan`` looks at (a dry run); ``stored`` reads back a snapshot handed in.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltrain.errors import SnapshotError
from mltrain.plan.stages import SnapshotRef

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec
    from mltrain.snapshot.take import SnapshotResult
    from mltrain.store.workspace import Workspace


def take(spec: RunSpec, workspace: Workspace, *, note: Callable[[str], None],
         patch_file: Path) -> tuple[SnapshotRef, SnapshotResult]:
    """Snapshot ``spec.source_dir`` into the workspace's blob store and capture its git state.

    ``note`` hears each warning (secret files left out, ...); the uncommitted changes, if any, are written
    to ``patch_file`` (the record keeps ``has_patch``: a patch may hold bytes that are not UTF-8).
    """
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.git import capture
    from mltrain.snapshot.take import SnapshotLimits, take_snapshot

    result = take_snapshot(spec.source_dir, BlobStore(workspace.blobs), limits=SnapshotLimits.of(spec.snapshot),
                           cache_dir=workspace.cache)
    for warning in result.warnings:
        note(f"snapshot: {warning}")
    info = capture(spec.source_dir)
    git: dict[str, Any] = info.to_dict()
    git.pop("patch", None)
    git["has_patch"] = bool(info.patch)
    patch = None
    if info.patch:
        patch_file.parent.mkdir(parents=True, exist_ok=True)
        patch_file.write_bytes(info.patch_bytes())
        patch = str(patch_file)
    return SnapshotRef(result.manifest.id, git, patch), result


def preview(spec: RunSpec, workspace: Workspace) -> SnapshotResult:
    """What ``take`` would make, storing nothing: the manifest id and how many bytes are new to the store."""
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.take import SnapshotLimits, take_snapshot

    # The stat cache makes an unchanged tree cheap to look at; use it only where a workspace already
    # exists, so planning in a fresh project still creates nothing.
    cache_dir = workspace.cache if workspace.exists() else None
    return take_snapshot(spec.source_dir, BlobStore(workspace.blobs), limits=SnapshotLimits.of(spec.snapshot),
                         cache_dir=cache_dir, dry_run=True)


def stored(workspace: Workspace, ref: SnapshotRef) -> SnapshotResult:
    """A snapshot handed in, read back from the store (it must still be there: ``gc`` may have taken it)."""
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.take import SnapshotResult

    manifest = BlobStore(workspace.blobs).load_manifest(ref.id)
    return SnapshotResult(manifest=manifest, files=len(manifest.entries), bytes=manifest.total_bytes,
                          bytes_new=0, warnings=())


def copy_patch(ref: SnapshotRef, destination: Path) -> None:
    """The uncommitted changes recorded with ``ref``, into a run's folder."""
    if not ref.patch:
        return
    try:
        shutil.copyfile(ref.patch, destination)
    except OSError as exc:
        raise SnapshotError(f"cannot copy the git patch of snapshot {ref.id[:12]} from {ref.patch}: "
                            f"{exc.strerror or exc}") from exc
