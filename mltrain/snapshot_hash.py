"""Read files, hash them, store what the store lacks: the only place file contents are read.

The stored bytes are always exactly the hashed bytes: a small file is read
once into memory that is both hashed and written; a large one is hashed
chunk by chunk as it streams into a temp blob, named only once its digest
is known. A file that changes meanwhile can make this snapshot see a newer
version, but never puts a blob under the wrong name.

Threads, and why this shape (measured on 10k x 4 KiB files, 2 cores):
reading and hashing a small file is mostly Python, and several threads doing
it fight over the GIL and run *slower* than one. Creating a blob file is
mostly kernel time (inode, two directory updates) and overlaps well. So the
calling thread reads and hashes small files, a few writer threads create
their blobs, and one more thread streams the large files (blake3 and the
copies release the GIL, and blake3 spreads a big chunk over all cores).
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from blake3 import blake3

from mltrain.blobstore import BlobStore
from mltrain.errors import SnapshotError
from mltrain.snapshot_walk import ignore_hint, show

SMALL: Final = 1 << 20
"""Files below this size are read with one syscall and written with one."""
CHUNK: Final = 8 << 20
"""Large files stream in chunks this big; blake3 hashes a chunk on several threads."""
WRITERS: Final = 2
QUEUE_DEPTH: Final = 256
"""Small blobs waiting for a writer (bounds memory to QUEUE_DEPTH x SMALL)."""
INLINE_BELOW: Final = 16
"""Fewer new blobs than this are written by the calling thread: starting threads costs more."""


@dataclass
class Claims:
    """Which digests some worker has already taken on (two equal files would race otherwise)."""

    owners: dict[str, int] = field(default_factory=dict)

    def first(self, digest: str) -> bool:
        """True for exactly one caller per digest (``dict.setdefault`` is atomic under the GIL)."""
        token = threading.get_ident()
        return self.owners.setdefault(digest, token) == token


@dataclass(frozen=True, slots=True)
class Hashed:
    digest: str
    size: int
    new_bytes: int
    """``size`` if this file's content was missing from the store (counted once per digest), else 0."""


Job = tuple[str, str, int]
"""(relative path, absolute path, size when walked)."""


def hash_files(jobs: Sequence[Job], store: BlobStore, claims: Claims, *, dry_run: bool) -> list[Hashed]:
    """Hash every job (and unless ``dry_run`` store missing content); results in job order."""
    results: list[Hashed | None] = [None] * len(jobs)
    large = [i for i, job in enumerate(jobs) if job[2] >= SMALL]
    small = [i for i, job in enumerate(jobs) if job[2] < SMALL]
    lane = _Lane(jobs, large, results, store, claims, dry_run=dry_run) if large else None
    writers = None if dry_run or len(small) < INLINE_BELOW else _Writers(store)
    try:
        if lane is not None and not small:
            lane.run()
        elif lane is not None:
            lane.start()
        for i in small:
            rel, path, size = jobs[i]
            results[i] = _small(rel, path, size, store, claims, writers, dry_run=dry_run)
    except BaseException:
        if lane is not None:
            lane.stop = True
        raise
    finally:
        if writers is not None:
            writers.close()
        if lane is not None:
            lane.join()
    for failure in (writers.error if writers else None, lane.error if lane else None):
        if failure is not None:
            raise failure
    return results  # type: ignore[return-value]


def _open(rel: str, path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _read_error(rel, exc) from None


def _read(rel: str, fd: int, n: int) -> bytes:
    try:
        return os.read(fd, n)
    except OSError as exc:
        raise _read_error(rel, exc) from None


def _small(
    rel: str, path: str, size: int, store: BlobStore, claims: Claims, writers: _Writers | None, *, dry_run: bool
) -> Hashed:
    fd = _open(rel, path)
    try:
        data = _read(rel, fd, size + 1)
        if len(data) > size:  # grew since the walk: take what is there now
            if len(data) >= SMALL:
                return _stream(rel, fd, data, bytearray(CHUNK), store, claims, dry_run=dry_run)
            while more := _read(rel, fd, SMALL):
                data += more
    finally:
        os.close(fd)
    digest = blake3(data).hexdigest()
    if not claims.first(digest) or store.has(digest):
        return Hashed(digest, len(data), 0)
    if writers is not None:
        writers.put(digest, data)
    elif not dry_run:
        store.put_bytes(digest, data)
    return Hashed(digest, len(data), len(data))


def _stream(
    rel: str, fd: int, head: bytes, buffer: bytearray, store: BlobStore, claims: Claims, *, dry_run: bool
) -> Hashed:
    """Hash while copying into a temp blob; the blob is named by the digest of exactly those bytes."""
    hasher = blake3(max_threads=blake3.AUTO)
    writer = None if dry_run else store.writer()
    try:
        size = 0
        chunk = memoryview(head)
        while chunk:
            hasher.update(chunk)
            if writer is not None:
                writer.write(chunk)
            size += len(chunk)
            try:
                n = os.readv(fd, [buffer])
            except OSError as exc:
                raise _read_error(rel, exc) from None
            chunk = memoryview(buffer)[:n]
        digest = hasher.hexdigest()
        if not claims.first(digest):
            new = False
        elif writer is None:
            new = not store.has(digest)
        else:
            new = writer.commit(digest)
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return Hashed(digest, size, size if new else 0)


class _Lane(threading.Thread):
    """Large files, one after another, beside the small-file work."""

    def __init__(
        self, jobs: Sequence[Job], indices: list[int], results: list[Hashed | None], store: BlobStore,
        claims: Claims, *, dry_run: bool,
    ) -> None:
        super().__init__(name="mltrain-snapshot-large", daemon=True)
        self.jobs, self.indices, self.results = jobs, indices, results
        self.store, self.claims, self.dry_run = store, claims, dry_run
        self.error: BaseException | None = None
        self.stop = False

    def run(self) -> None:
        buffer = bytearray(CHUNK)
        try:
            for i in self.indices:
                if self.stop:
                    return
                rel, path, _ = self.jobs[i]
                fd = _open(rel, path)
                try:
                    self.results[i] = _stream(rel, fd, b"", buffer, self.store, self.claims, dry_run=self.dry_run)
                finally:
                    os.close(fd)
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        if self.is_alive():
            super().join(timeout)


class _Writers:
    """Threads that turn (digest, bytes) into blobs; the first failure is kept and re-raised by the caller."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_DEPTH)
        self.error: BaseException | None = None
        self.threads = [
            threading.Thread(target=self._work, name=f"mltrain-snapshot-writer-{n}", daemon=True)
            for n in range(WRITERS)
        ]
        for thread in self.threads:
            thread.start()

    def put(self, digest: str, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((digest, data))

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # keep draining so the producer never blocks on a full queue
            try:
                self.store.put_bytes(*item)
            except BaseException as exc:
                self.error = exc


def _read_error(rel: str, exc: OSError) -> SnapshotError:
    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
        return SnapshotError(f"{show(rel)} changed while the snapshot was taken; take it again")
    return SnapshotError(f"cannot read {show(rel)}: {exc.strerror} (fix its permissions or {ignore_hint(rel, False)})")
