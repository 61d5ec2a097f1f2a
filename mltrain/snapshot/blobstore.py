"""A content-addressed store of file contents ("blobs") and snapshot manifests.

Layout under ``root`` (``<workspace>/blobs/``)::

    ab/cdef...        one read-only (0o444) file per distinct content, named by its digest (0o200 while written)
    manifests/<id>    a marker per stored manifest: empty when the manifest is blob <id>, else the edits
                      that make it from one that is (see ``put_manifest``)
    tmp/              blobs being written
    lock              flock: snapshots and checkouts share it, gc takes it alone

Invariants the rest of mltrain relies on:

* A blob is readable under its final name only once complete. A new small
  blob (:meth:`BlobStore.put_new`) is written in place, created unreadable
  (0o200) and made 0o444 by ``fchmod`` after its last byte: no rename, ~30%
  less time per file than a temp file renamed into place. Other blobs are
  written to ``tmp/`` and renamed into place. :meth:`BlobStore.has` counts
  only readable blobs, and whoever stores an unreadable one again replaces it
  whole (by rename). A crash leaves at most an unreadable blob or a stray
  temp file (gc removes old ones); a write error truncates the one or removes
  the other and raises a one-line :class:`SnapshotError`. A file system that
  does not keep modes gets temp files only.
* A manifest marker exists only once every blob the manifest references is
  stored, and gc removes a manifest before its blobs. So "marker present"
  means "the whole snapshot is present": an unchanged tree is re-snapshotted
  with one ``stat`` instead of one per file.
* gc never removes a blob that a kept manifest references, nor anything
  younger than its grace period (a snapshot in progress has no manifest yet,
  and a run records its snapshot id only after the snapshot is taken). A
  marker's mtime is refreshed each time the manifest is stored again.
  A manifest stored as edits keeps the manifest they apply to: gc keeps that blob with it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from mltrain.errors import SnapshotError
from mltrain.snapshot.manifest import Manifest, hash_bytes, splice_rows

logger = logging.getLogger(__name__)

BLOB_MODE: Final = 0o444
PARTIAL_MODE: Final = 0o200
"""A blob written in place has this mode (no read bits) until it is complete."""
GC_GRACE_SECONDS: Final = 3600.0
_HEX: Final = frozenset("0123456789abcdef")
_ALL_FANS: Final = frozenset(f"{n:02x}" for n in range(256))
_counter = itertools.count()
EDITS_MAGIC: Final = b"mltrain-manifest-edits-1\n"
MAX_STORED_EDITS: Final = 256
"""A manifest further than this many entries from the last one stored in full is stored in full again."""

Edit = tuple[int, str, str]
"""(entry index, the entry's row in the base manifest, its row in this one): see ``manifest.splice_rows``."""


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte (``os.write`` may write less); the one place a store write happens."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _store_error(root: str, exc: OSError) -> SnapshotError:
    hint = (
        "free some disk space or move the workspace (workspace.dir / MLTRAIN_HOME)"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT)
        else "check that the workspace is writable"
    )
    return SnapshotError(f"cannot write to the blob store {root}: {exc.strerror or exc} ({hint})")


def is_digest(value: str) -> bool:
    return len(value) == 64 and _HEX.issuperset(value)


class BlobWriter:
    """Stream one blob of not-yet-known digest into the store; :meth:`commit` names it.

    Used for large files, which are hashed while they are copied, so the
    stored bytes are exactly the hashed bytes even if the source changes.
    """

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._tmp, self._fd = store._open_temp()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self.abort()
            raise _store_error(self._store.root_str, exc) from None

    def copy_from(self, src: int) -> None:
        """Append the rest of ``src`` (from its offset) by ``copy_file_range``: the kernel copies, no byte
        passes through Python. Stops quietly where the kernel cannot (another file system, not a regular
        file, an old kernel): both offsets then stand where the copy stopped, for the caller to go on."""
        while True:
            try:
                copied = os.copy_file_range(src, self._fd, 1 << 30)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    self.abort()
                    raise _store_error(self._store.root_str, exc) from None
                return
            if not copied:
                return

    def digest_written(self, hash_file: Callable[[int, int], str]) -> tuple[str, int]:
        """(digest, size) of the bytes written so far, read back from the blob itself: whatever the source
        did meanwhile, the name the blob gets is the digest of exactly what it holds."""
        fd = os.open(self._tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            return hash_file(fd, size), size
        finally:
            os.close(fd)

    def commit(self, digest: str) -> bool:
        """Move the blob into place; False if the store already had it (the copy is dropped)."""
        fd, self._fd = self._fd, -1
        try:
            os.close(fd)
            if self._store.has(digest):
                os.unlink(self._tmp)
                return False
            self._store._install(self._tmp, digest)
        except OSError as exc:
            self.abort()
            raise _store_error(self._store.root_str, exc) from None
        return True

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self.abort()


class BlobStore:
    """Blobs by content digest; see the module docstring for the layout and its invariants."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root_str = os.fspath(self.root)
        self._tmp_dir = os.path.join(self.root_str, "tmp")
        self._manifests = os.path.join(self.root_str, "manifests")
        self._ready = False
        self._chmod: bool | None = None
        """Whether the umask strips bits from BLOB_MODE (checked on the first write)."""
        self._modes_kept: bool | None = None
        """Whether this file system keeps a file's mode bits (checked before the first write in place)."""

    # ------------------------------------------------------------------ reading
    def path(self, digest: str) -> Path:
        """Where blob ``digest`` lives (``root/ab/cdef...``); it may not exist."""
        return Path(self._blob(digest))

    def has(self, digest: str) -> bool:
        """True when blob ``digest`` is stored whole (readable: one written in place is not, until complete)."""
        try:
            return os.stat(self._blob(digest)).st_mode & 0o444 != 0
        except OSError:
            return False

    @staticmethod
    def fan(digest: str) -> str:
        """The fan-out folder a blob lives in: its digest's first two hex digits."""
        return digest[:2]

    def missing_fans(self) -> frozenset[str]:
        """The fan-out folders not (yet) in the store: no blob can be found in them."""
        return _ALL_FANS.difference(_list(self.root_str))

    def has_manifest(self, manifest_id: str) -> bool:
        """True when the manifest and every blob it references are stored."""
        return is_digest(manifest_id) and os.path.exists(os.path.join(self._manifests, manifest_id))

    def load_manifest(self, manifest_id: str) -> Manifest:
        data = self.manifest_bytes(manifest_id)
        manifest = Manifest.from_json(data)
        manifest.__dict__["canonical"] = data
        manifest.__dict__["id"] = manifest_id
        return manifest

    def manifest_bytes(self, manifest_id: str) -> bytes:
        """A stored manifest's canonical JSON, checked against its id (rebuilt when stored as edits)."""
        if not is_digest(manifest_id):
            raise SnapshotError(f"unknown snapshot {manifest_id!r}: a snapshot id is 64 hex digits")
        data: bytes | None
        try:
            with open(self._blob(manifest_id), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            data = self._from_edits(manifest_id)
        if data is None:
            raise SnapshotError(
                f"unknown snapshot {manifest_id}: it is not in the blob store {self.root_str} "
                "(garbage-collected or never stored); take the snapshot again"
            )
        if hash_bytes(data) != manifest_id:
            raise self._damaged(manifest_id)
        return data

    def _damaged(self, manifest_id: str) -> SnapshotError:
        return SnapshotError(
            f"snapshot {manifest_id} is damaged in the blob store {self.root_str}; take the snapshot again"
        )

    # ------------------------------------------------------------------ writing
    def put_bytes(self, digest: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` (whose digest the caller computed) atomically, replacing any copy."""
        tmp, fd = self._open_temp()
        try:
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            self._install(tmp, digest)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise _store_error(self.root_str, exc) from None

    def put_new(self, digest: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data``, which the store lacked a moment ago, in place: created unreadable, readable once whole.

        Where the name exists meanwhile (another snapshot's blob, whole or being written, or a crash's
        leftover), or the file system does not keep modes, it is stored by :meth:`put_bytes` instead.
        """
        if not self._keeps_modes():
            self.put_bytes(digest, data)
            return
        dest = self._blob(digest)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                fd = os.open(dest, flags, PARTIAL_MODE)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                fd = os.open(dest, flags, PARTIAL_MODE)
        except FileExistsError:
            self.put_bytes(digest, data)
            return
        except OSError as exc:
            raise _store_error(self.root_str, exc) from None
        try:
            _write_all(fd, data)
            os.fchmod(fd, BLOB_MODE)
        except BaseException as exc:
            # Left unreadable (to has(), absent) and empty: removing the name could remove a whole blob
            # that another snapshot put there meanwhile. The next to store this content replaces it; gc removes it.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)
            if isinstance(exc, OSError):
                raise _store_error(self.root_str, exc) from None
            raise
        os.close(fd)

    def _keeps_modes(self) -> bool:
        """Whether a file created :data:`PARTIAL_MODE` here has no read bits (a FAT or SMB mount may show 0o755)."""
        if self._modes_kept is None:
            probe, fd = self._open_temp(PARTIAL_MODE)
            try:
                self._modes_kept = os.fstat(fd).st_mode & 0o444 == 0
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(probe)
        return self._modes_kept

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put_manifest(self, manifest: Manifest, *, base: str | None = None, edits: Sequence[Edit] = ()) -> str:
        """Store the manifest and mark it complete. Call after its blobs are stored.

        ``base`` and ``edits``: the manifest is stored manifest ``base`` (as many entries) with these entries
        rewritten, as a re-snapshot of a few edited files builds it. It is then kept as the edits from the last
        manifest stored in full (a few hundred bytes; in full it is ~106 bytes a file, 10 MB at 100k files),
        until those are more than ``MAX_STORED_EDITS``.
        """
        manifest_id = manifest.id
        marker = os.path.join(self._manifests, manifest_id)
        stored_edits = None
        if not self.has(manifest_id) and self._stored_edits(manifest_id) is None:
            if base is not None:
                stored_edits = self._edits_from_full(base, edits, manifest.count)
            if stored_edits is None:
                self.put_bytes(manifest_id, manifest.canonical)
        try:
            os.makedirs(self._manifests, exist_ok=True)
            if stored_edits is not None:
                tmp, fd = self._open_temp()
                try:
                    _write_all(fd, stored_edits)
                finally:
                    os.close(fd)
                os.replace(tmp, marker)
            else:
                try:
                    os.utime(marker)
                except FileNotFoundError:
                    with open(marker, "ab"):
                        pass
        except OSError as exc:
            raise _store_error(self.root_str, exc) from None
        return manifest_id

    def _edits_from_full(self, base: str, edits: Sequence[Edit], count: int) -> bytes | None:
        """The marker of a manifest that is ``base`` with ``edits``, as edits of a manifest stored in full;
        None where it is to be stored in full itself."""
        full, chain = base, list(edits)
        stored = self._stored_edits(base)
        if stored is not None:  # base is itself edits of a full one: both sets of edits, from that one
            full, base_count, base_edits = stored
            if base_count != count:
                return None
            chain = _composed(base_edits, chain)
        if len(chain) > MAX_STORED_EDITS or not self.has(full):
            return None
        doc = {"base": full, "count": count, "edits": chain}
        return EDITS_MAGIC + json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _stored_edits(self, manifest_id: str, *, strict: bool = False) -> tuple[str, int, list[Edit]] | None:
        """(full manifest, entries, edits) of a manifest stored as edits; None for one stored in full or
        not at all. A damaged edits marker is None too (storing the manifest again repairs it), or with
        ``strict`` (reading it) a one-line SnapshotError."""
        try:
            with open(os.path.join(self._manifests, manifest_id), "rb") as fh:
                data = fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not data.startswith(EDITS_MAGIC):
            return None
        try:
            doc = json.loads(data[len(EDITS_MAGIC):])
            base, count, rows = doc["base"], doc["count"], doc["edits"]
            edits = [(int(i), str(old), str(new)) for i, old, new in rows]
            if not is_digest(base) or not isinstance(count, int) or any(
                    not 0 <= i < count for i, _, _ in edits) or edits != sorted(edits):
                raise ValueError("edits out of range or order")
        except (ValueError, TypeError, KeyError):
            if strict:
                raise self._damaged(manifest_id) from None
            return None
        return base, count, edits

    def _from_edits(self, manifest_id: str) -> bytes | None:
        """The canonical JSON of a manifest stored as edits (checked against its id by the caller)."""
        stored = self._stored_edits(manifest_id, strict=True)
        if stored is None:
            return None
        base, count, edits = stored
        try:
            with open(self._blob(base), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        return splice_rows(data, count, edits) or b""

    @contextlib.contextmanager
    def shared_lock(self) -> Iterator[None]:
        """Held while writing or linking blobs, so gc cannot remove them underneath."""
        with self._lock(fcntl.LOCK_SH):
            yield

    # ----------------------------------------------------------------------- gc
    def gc(
        self, keep_manifest_ids: Iterable[str], *, dry_run: bool = False, grace_seconds: float = GC_GRACE_SECONDS
    ) -> tuple[int, int]:
        """Remove blobs no kept manifest references; return (blobs removed, bytes freed).

        Manifests stored (or re-stored) within ``grace_seconds`` count as kept,
        and younger blobs are spared, so gc cannot break a snapshot in flight.
        A kept id that is not in the store is skipped: without its manifest
        that snapshot is unusable anyway. Bytes are the blobs' sizes; a blob
        still hardlinked from a checkout frees its space only with the checkout.
        """
        if not os.path.isdir(self.root_str):
            return 0, 0
        with self._lock(fcntl.LOCK_EX):
            cutoff = time.time() - grace_seconds
            keep = set(keep_manifest_ids)
            markers = _list(self._manifests)
            keep.update(m for m in markers if _mtime(os.path.join(self._manifests, m)) > cutoff)
            referenced: set[str] = set()
            for manifest_id in keep:
                try:
                    manifest = self.load_manifest(manifest_id)
                except SnapshotError as exc:
                    logger.warning("gc: keeping nothing for snapshot %s: %s", manifest_id, exc)
                    continue
                referenced.add(manifest_id)
                referenced.update(e.digest for e in manifest.entries)
                stored = self._stored_edits(manifest_id)
                if stored is not None:  # stored as edits: the manifest they apply to stays
                    referenced.add(stored[0])
            if not dry_run:
                for marker in markers:
                    if marker not in keep:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(self._manifests, marker))
            removed = freed = 0
            for fan in _list(self.root_str):
                if fan not in _ALL_FANS:
                    continue
                folder = os.path.join(self.root_str, fan)
                for rest in _list(folder):
                    if fan + rest in referenced:
                        continue
                    path = os.path.join(folder, rest)
                    try:
                        st = os.lstat(path)
                        if st.st_mtime > cutoff:
                            continue
                        if not dry_run:
                            os.unlink(path)
                    except FileNotFoundError:
                        continue
                    removed += 1
                    freed += st.st_size
            if not dry_run:
                for name in _list(self._tmp_dir):
                    path = os.path.join(self._tmp_dir, name)
                    if _mtime(path) <= cutoff:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
        logger.info("gc %s: %d blobs, %d bytes", "would remove" if dry_run else "removed", removed, freed)
        return removed, freed

    # ---------------------------------------------------------------- internals
    def _blob(self, digest: str) -> str:
        if len(digest) < 3 or not _HEX.issuperset(digest):
            raise SnapshotError(f"invalid blob digest {digest!r}: expected lowercase hex")
        return f"{self.root_str}/{self.fan(digest)}/{digest[2:]}"

    def _ensure(self) -> None:
        if not self._ready:
            try:
                os.makedirs(self._tmp_dir, exist_ok=True)
            except OSError as exc:
                raise _store_error(self.root_str, exc) from None
            self._ready = True

    def _open_temp(self, mode: int = BLOB_MODE) -> tuple[str, int]:
        self._ensure()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        while True:
            tmp = f"{self._tmp_dir}/{os.getpid()}-{next(_counter)}"
            try:
                fd = os.open(tmp, flags, mode)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _store_error(self.root_str, exc) from None
            if self._chmod is None and mode == BLOB_MODE:
                self._chmod = os.fstat(fd).st_mode & 0o777 != BLOB_MODE
            return tmp, fd

    def _install(self, tmp: str, digest: str) -> None:
        """Rename a complete temp file into place under ``digest``."""
        dest = self._blob(digest)
        if self._chmod:
            os.chmod(tmp, BLOB_MODE)
        try:
            os.replace(tmp, dest)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(tmp, dest)

    @contextlib.contextmanager
    def _lock(self, how: int) -> Iterator[None]:
        self._ensure()
        fd = os.open(os.path.join(self.root_str, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)


def _composed(first: list[Edit], then: list[Edit]) -> list[Edit]:
    """Edits ``first`` then ``then`` as one set from the first's base: a row both touched goes from its
    first old row to its last new row, and a row that came back to where it began is left out."""
    rows = {i: (old, new) for i, old, new in first}
    for i, old, new in then:
        rows[i] = (rows[i][0] if i in rows else old, new)
    return [(i, old, new) for i, (old, new) in sorted(rows.items()) if old != new]


def _list(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _mtime(path: str) -> float:
    try:
        return os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0
