"""Read files, hash them, store what the store lacks: the only place file contents are read.

The stored bytes are always exactly the hashed bytes: a small file is read
once into memory that is both hashed and written; a large one is copied by
the kernel (``copy_file_range``) into a temp blob, which is then hashed from
the page cache and named only once its digest is known. A file that changes
meanwhile can make this snapshot see a newer version, but never puts a blob
under the wrong name.

Enough work (:func:`pool_size`) is shared by a thread per usable core, each
taking a batch of neighbouring files (or one large file) and doing the
whole job for each: open, read, hash, store. Per-file hand-offs to writer
threads were measured *slower* on 2 cores (1.1-1.4 s against 0.8-1.0 s
for 10k small files: every short syscall hands the GIL over); whole
batches keep a thread busy for a long stretch, and the GIL is released in
what costs most: the syscalls, ``copy_file_range`` and blake3 on large
buffers. Below :data:`POOL_MIN_CORES` the pool stays off (on the shared
2-core box its gain was not dependable; benchmarks/bench_snapshot.py
prints the first snapshot with the pool forced the other way), and so
does a little work (one edited file): starting threads would cost more
than it saves. blake3 also hashes each large chunk on all cores
(``max_threads``).

Below :data:`POOL_MIN_CORES`, a tree with both many small files and some
large ones (:data:`LANE_MIN_BYTES`) takes two lanes instead: the small files
on the calling thread, the large ones on a thread of their own. That thread
spends its time in ``copy_file_range`` and blake3, outside the GIL, so it
does not slow the small files' short syscalls: a first snapshot of 10k small
+ 20 large files went from ~645 to ~400 ms on the 2-core box (tmpfs, quiet).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from blake3 import blake3

from mltrain.errors import SnapshotError
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.walk import gone, ignore_hint, show
from mltrain.util.cores import usable_cores

SMALL: Final = 1 << 20
"""Files below this size are read with one syscall and written with one."""
CHUNK: Final = 8 << 20
"""Large files stream in chunks this big; blake3 hashes a chunk on several threads."""


@dataclass
class Claims:
    """Which digests this snapshot has already taken on, so equal files are stored and counted once.

    Shared by the pool's threads: a claim is a test-and-add under a lock.
    """

    store: BlobStore
    seen: set[str] = field(default_factory=set)
    _empty_fans: frozenset[str] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def first(self, digest: str) -> bool:
        """True the first time a digest is claimed."""
        with self._lock:
            if digest in self.seen:
                return False
            self.seen.add(digest)
            return True

    def new(self, digest: str) -> bool:
        """True the first time a digest is claimed if the store lacks it: this snapshot is to store it."""
        return self.first(digest) and not self._stored(digest)

    def _stored(self, digest: str) -> bool:
        """Whether the store holds ``digest``, without a stat where its fan-out folder was missing when
        this snapshot began: such a folder holds only what this snapshot claimed, or what another
        snapshot stored meanwhile (storing that again replaces it with the same bytes). Into an empty
        store that saves a failing stat per file (~8 ms per 1,000 files on the 2-core box)."""
        if self._empty_fans is None:
            with self._lock:
                if self._empty_fans is None:
                    self._empty_fans = self.store.missing_fans()
        return self.store.fan(digest) not in self._empty_fans and self.store.has(digest)

    def release(self, digest: str) -> None:
        """Let the next :meth:`first` for ``digest`` succeed again (its reader will store it)."""
        with self._lock:
            self.seen.discard(digest)


@dataclass(frozen=True, slots=True)
class Hashed:
    digest: str
    size: int
    new_bytes: int
    """``size`` if this file's content was missing from the store (counted once per digest), else 0."""


Job = tuple[str, str, int]
"""(relative path, absolute path, size when walked)."""

Stamp = tuple[int, int, int]
"""(size, mtime_ns, ctime_ns) of an open file: any write moves it."""


READ_TRIES: Final = 3
"""A file whose stat moves while it is read is read again, up to this many times in all."""

POOL_MAX: Final = 8
"""More threads than this only queue on the file system's directory locks."""
POOL_MIN_CORES: Final = 4
"""With fewer usable cores the pool stays off: on the 2-core box two threads made a first snapshot of
10k small + 20 large files twice as slow when the box was quiet (2.50 s against 1.25 s, load 1.2, medians
of 3) and slower when file creation was the bottleneck (9.5 s against 6.6 s); under CPU load from others
they won two series and tied one (1.50 against 1.77 s; 3.61 against 5.34 s; 0.91 against 0.89 s), for
~5% more CPU: not a gain to count on at two cores."""
POOL_MIN_FILES: Final = 256
POOL_MIN_BYTES: Final = 64 << 20
"""Below both of these the work is too short to pay for starting threads: it stays on the calling thread."""
BATCH_FILES: Final = 64
BATCH_BYTES: Final = 16 << 20
"""A worker takes neighbouring files (one directory, mostly) up to these many or these bytes at a time."""


def pool_size(jobs: Sequence[Job]) -> int:
    """How many threads hash ``jobs``: one per usable core (up to :data:`POOL_MAX`) when there are
    :data:`POOL_MIN_CORES` and enough work, else 1."""
    cores = min(usable_cores(), POOL_MAX)
    if cores < POOL_MIN_CORES or (len(jobs) < POOL_MIN_FILES and sum(job[2] for job in jobs) < POOL_MIN_BYTES):
        return 1
    return cores


def _batches(jobs: Sequence[Job]) -> list[Sequence[Job]]:
    """``jobs`` cut into runs of neighbours, in order; a large file is a batch of its own."""
    batches: list[Sequence[Job]] = []
    start = count = size = 0
    for index, job in enumerate(jobs):
        if job[2] >= SMALL:
            if index > start:
                batches.append(jobs[start:index])
            batches.append(jobs[index : index + 1])
            start, count, size = index + 1, 0, 0
            continue
        count += 1
        size += job[2]
        if count >= BATCH_FILES or size >= BATCH_BYTES:
            batches.append(jobs[start : index + 1])
            start, count, size = index + 1, 0, 0
    if start < len(jobs):
        batches.append(jobs[start:])
    return batches


def hash_files(
    jobs: Sequence[Job], store: BlobStore, claims: Claims, *, dry_run: bool, warnings: list[str] | None = None,
    workers: int | None = None,
) -> list[Hashed | None]:
    """Hash every job (and unless ``dry_run`` store missing content); results in job order.

    A file deleted or replaced (by a directory, link or FIFO) since the walk is None, with a line in
    ``warnings``: the snapshot is of the tree as it was read. So is a file that kept changing while
    it was read (:data:`READ_TRIES` reads): its last read is kept.

    ``workers`` threads share the jobs (None: :func:`pool_size` decides). Results, warnings and
    errors are those of the serial order whatever the pool: the first failing job's error is raised.
    """
    notes = warnings if warnings is not None else []
    pool = pool_size(jobs) if workers is None else workers
    lanes = _lanes(jobs) if workers is None and pool == 1 else None
    if lanes is not None:
        return _hash_lanes(jobs, *lanes, store, claims, dry_run, notes)
    batches = _batches(jobs) if pool > 1 else []
    if len(batches) < 2:
        return _hash_batch(jobs, store, claims, dry_run, notes)
    batch_notes: list[list[str]] = [[] for _ in batches]
    results: list[Hashed | None] = []
    with ThreadPoolExecutor(min(pool, len(batches)), thread_name_prefix="mltrain-hash") as executor:
        futures = [executor.submit(_hash_batch, batch, store, claims, dry_run, batch_notes[i])
                   for i, batch in enumerate(batches)]
        try:
            for future in futures:
                results += future.result()
        finally:
            for future in futures:
                future.cancel()
    for lines in batch_notes:
        notes += lines
    return results


LANE_MIN_CORES: Final = 2
LANE_MIN_BYTES: Final = 32 << 20
"""With this much in large files beside :data:`POOL_MIN_FILES` small ones, the large files take a lane of their
own (below :data:`POOL_MIN_CORES`; from there the pool shares all files)."""


def threads_used(jobs: Sequence[Job]) -> str:
    """How :func:`hash_files` reads ``jobs`` by default on this machine, in words (benchmarks print it)."""
    pool = pool_size(jobs)
    if pool > 1:
        return f"{pool} threads"
    return "2 threads: small files | large files" if _lanes(jobs) is not None else "1 thread"


def _lanes(jobs: Sequence[Job]) -> tuple[list[int], list[int]] | None:
    """(small job indexes, large job indexes) where both lanes hold enough work to run side by side on
    :data:`LANE_MIN_CORES`, else None."""
    if len(jobs) <= POOL_MIN_FILES or usable_cores() < LANE_MIN_CORES:  # a re-snapshot of a few edits, mostly
        return None
    large = [i for i, job in enumerate(jobs) if job[2] >= SMALL]
    if len(jobs) - len(large) < POOL_MIN_FILES or sum(jobs[i][2] for i in large) < LANE_MIN_BYTES:
        return None
    taken = set(large)
    return [i for i in range(len(jobs)) if i not in taken], large


@dataclass
class _Lane:
    """One thread's share of :func:`_hash_lanes`: its jobs (by index), their results and warnings, its error."""

    indexes: list[int]
    results: list[Hashed | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)
    """``len(notes)`` after each job, so the warnings can be put back in job order."""
    error: Exception | None = None

    def run(self, jobs: Sequence[Job], store: BlobStore, claims: Claims, dry_run: bool, stop: threading.Event) -> None:
        try:
            _hash_batch([jobs[i] for i in self.indexes], store, claims, dry_run, self.notes, self.results,
                        marks=self.marks, stop=stop)
        except Exception as exc:  # raised by hash_files, in job order
            self.error = exc

    @property
    def failed_at(self) -> int:
        """The index of the job that raised :attr:`error`."""
        return self.indexes[len(self.results)]


def _hash_lanes(
    jobs: Sequence[Job], small: list[int], large: list[int], store: BlobStore, claims: Claims, dry_run: bool,
    notes: list[str],
) -> list[Hashed | None]:
    """Small files on the calling thread while a second thread copies and hashes the large ones.

    The large-file lane spends its time in ``copy_file_range`` and blake3, both outside the GIL, so
    it hardly slows the small-file lane's many short syscalls, unlike a pool sharing small files.
    Results, warnings and the error raised are those of the serial order.
    """
    lanes = (_Lane(small), _Lane(large))
    stop = threading.Event()
    thread = threading.Thread(target=lanes[1].run, args=(jobs, store, claims, dry_run, stop),
                              name="mltrain-hash-large", daemon=True)
    thread.start()
    try:
        lanes[0].run(jobs, store, claims, dry_run, stop)
    except BaseException:  # an interrupt: the other lane stops at its next file
        stop.set()
        raise
    finally:
        thread.join()
    failed = [lane for lane in lanes if lane.error is not None]
    if failed:
        first = min(failed, key=lambda lane: lane.failed_at).error
        assert first is not None
        raise first
    results: list[Hashed | None] = [None] * len(jobs)
    by_job: list[tuple[int, list[str]]] = []
    for lane in lanes:
        start = 0
        for index, result, end in zip(lane.indexes, lane.results, lane.marks, strict=True):
            results[index] = result
            if end > start:
                by_job.append((index, lane.notes[start:end]))
            start = end
    for _, lines in sorted(by_job):
        notes += lines
    return results


def _hash_batch(
    jobs: Sequence[Job], store: BlobStore, claims: Claims, dry_run: bool, notes: list[str],
    results: list[Hashed | None] | None = None, *, marks: list[int] | None = None,
    stop: threading.Event | None = None,
) -> list[Hashed | None]:
    """The jobs one after the other on the calling thread, appended to ``results`` (on an error, its length
    is the failing job's position); ``marks`` gets ``len(notes)`` after each job; ``stop`` ends it early."""
    results = [] if results is None else results
    buffer: bytearray | None = None
    for rel, path, size in jobs:
        if stop is not None and stop.is_set():
            break
        opened = _open(rel, path)
        if opened is None:
            notes.append(gone(rel))
            results.append(None)
        else:
            fd, stamp = opened
            try:
                if size >= SMALL:
                    buffer = buffer or bytearray(CHUNK)
                results.append(_settled_read(rel, fd, stamp, size, buffer, store, claims, dry_run, notes))
            finally:
                os.close(fd)
        if marks is not None:
            marks.append(len(notes))
    return results


def _settled_read(
    rel: str, fd: int, opened: Stamp, size: int, buffer: bytearray | None, store: BlobStore, claims: Claims,
    dry_run: bool, notes: list[str],
) -> Hashed:
    """Read one file until a read starts and ends with the same stat (size, mtime, ctime), or the tries run out.

    A writer that changes the file during the read moves its mtime and ctime; the bytes read
    may then mix old and new content. Nothing is stored from such a read but the last one.
    ``opened`` is the stamp taken as the file was opened: the first read starts from it.
    """
    for attempt in range(1, READ_TRIES + 1):
        before = opened if attempt == 1 else _stamp(rel, fd)
        last = attempt == READ_TRIES

        def settled(before: Stamp = before, last: bool = last) -> bool:
            if _stamp(rel, fd) == before:
                return True
            if last:
                notes.append(f"{show(rel)} changed while it was read ({READ_TRIES} tries); the snapshot holds "
                             "its last read, which may mix old and new content: take it again once it is quiet")
            return last

        if attempt > 1:
            os.lseek(fd, 0, os.SEEK_SET)
            size = before[0]
        if size < SMALL:
            hashed = _small(rel, fd, size, store, claims, settled, dry_run=dry_run)
        else:
            hashed = _stream(rel, fd, b"", buffer or bytearray(CHUNK), store, claims, settled, dry_run=dry_run)
        if hashed is not None:
            return hashed
    raise AssertionError("the last try always settles")


def _stamp(rel: str, fd: int) -> Stamp:
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise _read_error(rel, exc) from None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EISDIR, errno.ENXIO)
"""Opening a walked file fails with these when it (or a folder above it) was deleted, or replaced by a
directory (EISDIR), a symlink (ELOOP: O_NOFOLLOW) or a FIFO with no writer (ENXIO is a socket)."""


def _open(rel: str, path: str) -> tuple[int, Stamp] | None:
    """The file opened for reading and its stamp; None if it is gone or no longer a regular file."""
    try:
        # O_NONBLOCK: a FIFO swapped in since the walk must not hang the snapshot.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise _read_error(rel, exc) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return fd, (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        pass
    os.close(fd)  # a FIFO or device swapped in since the walk
    return None


def _read(rel: str, fd: int, n: int) -> bytes:
    try:
        return os.read(fd, n)
    except OSError as exc:
        raise _read_error(rel, exc) from None


Settled = Callable[[], bool]
"""True when the file did not change during the read just made (or it may be kept anyway)."""


def _small(
    rel: str, fd: int, size: int, store: BlobStore, claims: Claims, settled: Settled, *, dry_run: bool
) -> Hashed | None:
    data = _read(rel, fd, size + 1)
    if len(data) > size:  # grew since the walk: take what is there now
        if len(data) >= SMALL:
            return _stream(rel, fd, data, bytearray(CHUNK), store, claims, settled, dry_run=dry_run)
        while more := _read(rel, fd, SMALL):
            data += more
    if not settled():
        return None
    digest = blake3(data).hexdigest()
    if not claims.new(digest):
        return Hashed(digest, len(data), 0)
    if not dry_run:
        store.put_new(digest, data)
    return Hashed(digest, len(data), len(data))


def _stream(
    rel: str, fd: int, head: bytes, buffer: bytearray, store: BlobStore, claims: Claims, settled: Settled, *,
    dry_run: bool,
) -> Hashed | None:
    """A large file: into a temp blob by the kernel's copy, then hashed from the blob itself.

    The blob is named by the digest of exactly the bytes it holds, read back
    from the page cache the copy just filled; the source changing meanwhile
    can make this snapshot see a newer version, never a blob under the wrong
    name (and a read during which it changed is dropped, see ``settled``).
    ``copy_file_range`` keeps 440 MB of large files out of Python's
    memory: 3.5x faster than reading into a buffer, hashing and writing it.
    """
    if dry_run:
        digest, size = _hash_stream(rel, fd, head, buffer)
        if not settled():
            return None
        new = claims.new(digest)
        return Hashed(digest, size, size if new else 0)
    writer = store.writer()
    placed = False
    try:
        writer.write(head)
        writer.copy_from(fd)
        for chunk in _chunks(rel, fd, buffer):  # where the kernel could not copy (or stopped)
            writer.write(chunk)
        if not settled():
            return None  # the temp blob is dropped below
        digest, size = writer.digest_written(_hash_fd)
        new = False  # another file of this snapshot already stored it: the copy is dropped below
        if claims.first(digest):
            new, placed = writer.commit(digest), True
    finally:
        if not placed:
            writer.abort()
    return Hashed(digest, size, size if new else 0)


def _hash_fd(fd: int, size: int) -> str:
    """blake3 of a file we own and nobody truncates (so mapping it is safe), on all cores."""
    hasher = blake3(max_threads=blake3.AUTO)
    if size:
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
            hasher.update(mapped)
    return str(hasher.hexdigest())


def _hash_stream(rel: str, fd: int, head: bytes, buffer: bytearray) -> tuple[str, int]:
    """Hash a file by reading it (a dry run stores nothing, so there is no blob to hash)."""
    hasher = blake3(max_threads=blake3.AUTO)
    hasher.update(head)
    size = len(head)
    for chunk in _chunks(rel, fd, buffer):
        hasher.update(chunk)
        size += len(chunk)
    return str(hasher.hexdigest()), size


def _chunks(rel: str, fd: int, buffer: bytearray) -> Iterator[memoryview]:
    """The rest of ``fd`` through ``buffer``, one read at a time (each chunk is valid until the next)."""
    while True:
        try:
            n = os.readv(fd, [buffer])
        except OSError as exc:
            raise _read_error(rel, exc) from None
        if not n:
            return
        yield memoryview(buffer)[:n]


def _read_error(rel: str, exc: OSError) -> SnapshotError:
    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
        return SnapshotError(f"{show(rel)} changed while the snapshot was taken; take it again")
    return SnapshotError(f"cannot read {show(rel)}: {exc.strerror} (fix its permissions or {ignore_hint(rel, False)})")
