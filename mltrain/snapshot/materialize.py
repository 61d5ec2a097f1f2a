"""Turn a manifest back into directory trees: the shared checkout and each run's working directory.

* ``<checkouts>/<manifest id>/`` (:func:`materialize`): the snapshot staged on
  this machine, built once and shared by every run of that snapshot (and
  bind-mounted read-only into local containers). Nothing may write into it.
* ``<run dir>/wd/`` (:func:`make_workdir`): where one local run executes when
  it cannot see the checkout through an overlay (``compute.workdir=links``;
  :mod:`mltrain.targets.local.workdir` chooses). It holds the same tree, made
  the same way from the same blobs, but the directories are the run's own:
  files a script creates next to itself (``model.pt``, ``lightning_logs/``,
  ``__pycache__``) stay in that run and never reach a concurrent or later run
  of the same snapshot. It is removed when the run is finalized
  (:func:`remove_tree`); outputs belong in ``$MLTRAIN_OUTPUT_DIR``, which is kept.
  An overlay keeps the same promises without one link per file.

How each entry is made, and why:

* Regular, non-executable files are **hardlinks** to their blobs: no bytes
  are copied and a hundred checkouts of the same content cost nothing. They
  therefore share the blob's inode and its mode, 0o444: the files are
  read-only. A process running as root could still write through them and
  alter the blob itself, so jobs must not write into the snapshot's files;
  deleting or replacing one in a run's working directory is fine (that
  changes only the run's own directory entry).
* Executable files (mode 0o755) are **copied**. Mode belongs to the inode, so
  a hardlink cannot be executable while the shared blob stays 0o444; copying
  the (usually few, small) executables keeps every blob's mode uniform.
* Empty files are created, not linked (an ext4 inode allows ~65k links, and
  every package has empty ``__init__.py`` files).
* Where a hardlink is refused (another file system, too many links,
  protected hardlinks), the blob is copied.
* Symlinks are recreated from their target text.

A checkout is built once per manifest id, in a temp directory renamed into
place when complete: a reader never sees half a tree, and two concurrent
builders both end up with the same finished directory. It is built on one
thread: links are short syscalls, and threads measured no faster (10k files:
0.22-0.31 s on 1, 2 or 4 threads).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from mltrain.errors import SnapshotError
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.manifest import EXEC_MODE, FileEntry, Manifest, check_entries
from mltrain.snapshot.walk import show

logger = logging.getLogger(__name__)

TMP_PREFIX: Final = ".tmp-"
STALE_AFTER_SECONDS: Final = 3600.0
_COPY_INSTEAD: Final = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES})


def materialize(manifest: Manifest, store: BlobStore, checkouts_dir: Path) -> Path:
    """Return ``checkouts_dir/<manifest.id>/`` holding the tree, building it on first use."""
    final = Path(checkouts_dir) / manifest.id
    if final.is_dir():
        return final
    check_entries(manifest.entries)
    try:
        os.makedirs(checkouts_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{manifest.id[:16]}-", dir=checkouts_dir)
        os.chmod(tmp, 0o755)
    except OSError as exc:
        raise SnapshotError(
            f"cannot create a checkout in {checkouts_dir}: {exc.strerror} (check the workspace)"
        ) from None
    try:
        with store.shared_lock():
            build_tree(manifest, store, tmp)
        os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.is_dir():
            return final  # another process finished the same checkout first
        raise SnapshotError(f"cannot build checkout {final}: {exc.strerror or exc} (check the workspace)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("checkout %s: %d files", manifest.id, len(manifest.entries))
    _remove_stale(Path(checkouts_dir))
    return final


def make_workdir(manifest: Manifest, store: BlobStore, dest: Path) -> Path:
    """Create ``dest`` (which must not exist) holding the tree, for one run to execute in.

    Costs one link per file and one mkdir per directory: ~1 ms for a
    10-file project (see ``benchmarks/bench_snapshot.py`` for 10,000). A
    failure leaves nothing behind and is a one-line :class:`SnapshotError`.
    """
    check_entries(manifest.entries)
    created = False
    try:
        os.mkdir(dest, 0o755)
        created = True
        with store.shared_lock():
            build_tree(manifest, store, os.fspath(dest))
    except BaseException as exc:
        if created:
            remove_tree(dest)
        if isinstance(exc, OSError):
            raise SnapshotError(
                f"cannot build the working directory {dest}: {exc.strerror or exc} (check the workspace)"
            ) from None
        raise
    return dest


def remove_tree(path: Path | str) -> None:
    """Delete a tree even where its owner made folders read-only; a missing tree is fine."""

    def make_writable(func: Callable[..., object], target: str, _exc: object) -> None:
        parent = os.path.dirname(target)
        with contextlib.suppress(OSError):
            os.chmod(parent, stat.S_IRWXU | os.stat(parent).st_mode)
        if func in (os.unlink, os.rmdir, os.remove):
            with contextlib.suppress(FileNotFoundError):
                func(target)
            return
        # A folder rmtree could not open or list (os.open, os.scandir: not retried as is, they take more
        # arguments): open it up, then remove it as a tree of its own.
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IRWXU | os.stat(target).st_mode)
            remove_tree(target)

    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)


def build_tree(manifest: Manifest, store: BlobStore, tmp: str) -> None:
    """Fill the existing empty directory ``tmp`` with the manifest's tree (hold the store's shared lock)."""
    folders: set[str] = set()
    for entry in manifest.entries:
        slash = entry.path.rfind("/")
        while slash > 0 and entry.path[:slash] not in folders:
            folders.add(entry.path[:slash])
            slash = entry.path.rfind("/", 0, slash)
    for folder in sorted(folders):
        os.mkdir(os.path.join(tmp, folder))

    for entry in manifest.entries:
        _make(entry, store, os.path.join(tmp, entry.path), manifest.id)


def _make(entry: FileEntry, store: BlobStore, dest: str, manifest_id: str) -> None:
    if entry.link is not None:
        os.symlink(entry.link, dest)
        return
    if entry.size == 0:
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
        if entry.mode == EXEC_MODE:
            os.chmod(dest, EXEC_MODE)
        return
    blob = store.path(entry.digest)
    try:
        if entry.mode == EXEC_MODE:
            _copy(blob, dest, EXEC_MODE)
            return
        try:
            os.link(blob, dest)
        except OSError as exc:
            if exc.errno not in _COPY_INSTEAD:
                raise
            _copy(blob, dest, 0o444)
    except FileNotFoundError:
        if not os.path.exists(blob):
            raise SnapshotError(
                f"snapshot {manifest_id} is incomplete: the content of {show(entry.path)} is missing "
                "from the blob store; take the snapshot again"
            ) from None
        raise


def _copy(blob: Path, dest: str, mode: int) -> None:
    shutil.copyfile(blob, dest)
    os.chmod(dest, mode)


def _remove_stale(checkouts: Path) -> None:
    """Temp trees of crashed builds: removed once they are clearly abandoned."""
    cutoff = time.time() - STALE_AFTER_SECONDS
    with contextlib.suppress(OSError), os.scandir(checkouts) as listing:
        for entry in listing:
            if entry.name.startswith(TMP_PREFIX) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)
