"""Putting a snapshot on a remote host: only the blobs it lacks, one stream, then its checkout.

The remote keeps the same content-addressed store as the workspace
(``mltrain.hosts.agent`` describes its layout), so staging a snapshot is:

1. ``have``: is its checkout already there? (an unchanged tree: one request, done)
   Which of our recent manifests does the host hold? Those are complete
   there (a manifest's marker is written only once all its blobs are), so
   only digests *not* in such a base need asking about.
2. ``begin_upload`` with those digests: which are missing, and how many bytes
   of each already arrived (a part kept from an upload the link cut). When
   the candidates are a few KiB in all (a file or two changed), or the host
   holds no blob at all (``have`` says so), they are sent without asking.
3. ``put_blobs``: every missing blob in one stream over the helper's
   channel. Small blobs go in batches of about a MiB (a header of digest
   and size for each and one sha256 of them all, then their bytes in one
   frame: a sha256 per blob was 0.7 MB of hex for 10,000 files), which keeps
   the per-file cost on both ends to a few microseconds; large ones go one
   at a time, in chunks from where the host's part ends, then their sha256.
   Large blobs go first: they are the ones that often do not shrink, and
   the link carries them while the text behind them is compressed. Each
   batch and chunk is compressed with the codec agreed in the hello
   (``codec``: zstd where both ends have it, else zlib, with lzma for
   batches while finished pieces queue up for the link; none with a
   protocol-1 helper), on a pool up to 32 MiB ahead of the link, or sent
   raw when it does not shrink (``UploadStats.skipped`` counts those).
   The host checks each blob's sha256 before placing it. sha256 rather than
   the store's blake3: the host's ``python3`` has hashlib and no blake3, and
   a check only needs both ends to agree on the bytes (the link itself is
   authenticated by SSH).
4. ``put_manifest``: as edits of the base (a few hundred bytes for a one-file
   change, instead of ~110 bytes per file), or whole and compressed when
   there is no base; the host rebuilds the canonical JSON and checks its
   sha256, then builds the checkout from hardlinks to its blobs. With no
   base (a first upload), the whole manifest goes ahead of the blobs in
   ``put_blobs`` instead: the host links each file as its blob is placed,
   while the link is still busy, and its reply names the finished checkout
   (10,000 links were ~0.3 s after the last byte); ``put_manifest`` is then
   needed only if that build could not finish.

Manifests are handled as their canonical rows (JSON arrays) here, never as
``Manifest`` objects: a resubmit reads two of them, and validating 10,000
entries twice would cost more than everything else it does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Any

from mltrain.errors import TargetError
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.manifest import name_in
from mltrain.targets.ssh.codec import Codecs, choose, compress, pack, shrinks
from mltrain.targets.ssh.link import Link, RemoteError, Reply
from mltrain.util import progress
from mltrain.util.cores import usable_cores

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SMALL = 256 << 10  # blobs below this travel in batches (a cut resends at most one batch)
BATCH = 1 << 20
SPECULATE = 256 << 10  # new blobs up to this much in all are sent without asking which the host lacks
AHEAD_BYTES = 32 << 20  # read ahead of the link: room to compress the text behind 40 MB of weights (memory: ~2x)
WORKERS = max(2, min(8, usable_cores()))  # compressing threads
READY_SECONDS = 0.5  # link time waiting in finished pieces that makes the next one worth the strong codec
RATE_SAMPLE = 4 << 20  # bytes the link must have taken before its rate is trusted (its window fills at once)
RECENT_BASES = 8
ENOSPC = (28, 122)  # ENOSPC, EDQUOT


@dataclass
class UploadStats:
    blobs: int = 0
    bytes: int = 0  # blob bytes sent, before compression
    resumed: int = 0
    codec: str | None = None  # the fast codec agreed with the helper; None: everything went raw
    packed: int = 0  # blob bytes as they went on the wire
    skipped: int = 0  # batches and chunks sent raw under a codec: they did not shrink
    strong: int = 0  # batches sent with the strong codec (lzma), while the link was the bottleneck


def stage_snapshot(link: Link, store: BlobStore, manifest_id: str, stats: UploadStats | None = None) -> str:
    """Make ``checkouts/<manifest_id>`` exist on the host; returns its path there."""
    stats = stats if stats is not None else UploadStats()
    recent = _recent_manifests(store, manifest_id)
    state = link.request({"op": "have", "manifest": manifest_id, "bases": recent}, retry=True)
    root = link.hello()["root"]
    if state.take("checkout", bool):
        return f"{root}/checkouts/{manifest_id}"
    bases = state.take_list("bases", str)
    if not set(bases) <= set(recent):  # a base we did not ask about would be loaded from our store by its name
        raise state.bad("'bases' names manifests that were not asked about")
    empty = bool(state.maybe("empty", bool))
    has_manifest = state.take("manifest", bool)
    manifest = _load(store, manifest_id)
    base_id = next((b for b in bases if b != manifest_id), None)
    base = _load(store, base_id) if base_id else None
    wanted = {row[3]: row[2] for row in manifest.rows if len(row) == 4 and row[2] > 0}
    if base is not None and not has_manifest:
        known = {row[3] for row in base.rows}
        candidates = [d for d in wanted if d not in known]
    else:
        candidates = [] if has_manifest else list(wanted)
    whole = manifest if base is None else None  # sent ahead of the blobs: the host links files as they arrive
    for _ in range(3):
        if candidates:
            path = _send_blobs(link, store, candidates, wanted, stats, ask=not empty, manifest=whole)
            if path is not None:
                return path
            empty = False
            whole = None
        reply = _put_manifest(link, manifest, base)
        if "path" in reply:
            return reply.take("path", str)
        candidates = reply.take_list("missing", str)  # blobs the host lost (removed by hand?): send them and retry
        if not set(candidates) <= wanted.keys():
            raise reply.bad("'missing' names blobs the snapshot does not hold")
        log.warning("%s lacks %d blobs its manifests promise; sending them", link.where, len(candidates))
    raise TargetError(f"could not stage snapshot {manifest_id[:12]} on {link.where}: blobs keep going missing "
                      f"there; remove {root}/blobs and submit again")


@dataclass
class _Manifest:
    """A stored manifest as its canonical bytes and rows: all an upload needs (no per-entry objects)."""

    id: str
    canonical: bytes
    rows: list[Any]


def _load(store: BlobStore, manifest_id: str) -> _Manifest:
    data = store.manifest_bytes(manifest_id)  # checked against its id; a one-line error if missing or damaged
    return _Manifest(manifest_id, data, json.loads(data)["entries"])


def _recent_manifests(store: BlobStore, exclude: str, limit: int = RECENT_BASES) -> list[str]:
    folder = store.root / "manifests"
    try:
        with os.scandir(folder) as listing:
            stamped = [(e.stat().st_mtime, e.name) for e in listing if e.name != exclude]
    except FileNotFoundError:
        return []
    return [name for _, name in sorted(stamped, reverse=True)[:limit]]


def _send_blobs(link: Link, store: BlobStore, digests: list[str], sizes: dict[str, int], stats: UploadStats, *,
                ask: bool = True, manifest: _Manifest | None = None) -> str | None:
    """Send the blobs the host lacks; with ``manifest``, that first, so the host builds its checkout as they
    arrive: its path when it did (else ``put_manifest`` builds it)."""
    if not ask or sum(sizes[d] for d in digests) <= SPECULATE:
        missing: list[tuple[str, int]] = [(d, 0) for d in digests]  # cheaper to send than to ask about (a round trip)
    else:
        missing = _missing(link.request({"op": "begin_upload", "digests": digests}), sizes, set(digests))
    if not missing:
        link.request({"op": "put_blobs", "stream": True}, body=iter([(b"J", b'{"end":true}')]))
        return None
    total = sum(sizes[d] - have for d, have in missing)
    sent_before = stats.bytes
    msg: dict[str, Any] = {"op": "put_blobs", "stream": True}
    ahead: list[tuple[bytes, bytes]] = []
    if manifest is not None:
        msg["manifest"] = {"id": manifest.id, "sha256": hashlib.sha256(manifest.canonical).hexdigest(),
                           "size": len(manifest.canonical)}
        ahead.append((b"D", zlib.compress(manifest.canonical, 1)))
    try:
        with progress.current().task(f"upload to {link.where}", total=total, unit="bytes") as task:
            reply = link.request(msg, body=chain(ahead, _blob_frames(
                store, missing, sizes, stats, lambda: task.advance(stats.bytes - sent_before), _codec(link))))
            task.close(f"uploaded {progress.size(stats.bytes - sent_before)} to {link.where}")
    except RemoteError as exc:
        if exc.errno in ENOSPC:
            raise TargetError(f"the disk holding {link.hello()['root']} on {link.where} is full ({exc}); nothing "
                              "was half-placed: free space there or set compute.remote_dir to a larger disk, "
                              "then submit again") from None
        raise
    log.info("sent %d blobs (%d bytes) to %s", reply.take("placed", int), reply.take("bytes", int), link.where)
    return reply.maybe("path", str) if manifest is not None else None


def _codec(link: Link) -> Codecs | None:
    """The codecs for this upload: the best the helper offered (a protocol-1 helper offers none: raw)."""
    hello = link.hello()
    offered = hello.maybe("codecs", list) or []
    return choose([name for name in offered if isinstance(name, str)])


def _missing(reply: Reply, sizes: dict[str, int], asked: set[str]) -> list[tuple[str, int]]:
    """``begin_upload``'s answer: blobs we asked about, each with how many of its bytes are there already."""
    rows = reply.take_list("missing", list)
    out = []
    for row in rows:
        if (len(row) != 2 or not isinstance(row[0], str) or row[0] not in asked or not isinstance(row[1], int)
                or isinstance(row[1], bool) or not 0 <= row[1] <= sizes[row[0]]):
            raise reply.bad("'missing' holds a row that is not [a digest asked about, bytes already there]")
        out.append((row[0], row[1]))
    return out


@dataclass
class _Piece:
    """Frames ready to send and what they carry: blob bytes before compression, blobs completed."""

    frames: list[tuple[bytes, bytes]]
    raw: int = 0
    blobs: int = 0
    wire: int = 0  # blob bytes as sent (compressed or raw)
    skipped: bool = False  # sent raw although a codec was agreed: it did not shrink
    resumed: int = 0
    strong: bool = False  # compressed with the strong codec

    @property
    def size(self) -> int:
        """Bytes of its frames' payloads: what the link has to carry for it."""
        return sum(len(payload) for _, payload in self.frames)


class _Pace:
    """How much finished work waits for the link, and how fast the link drains it.

    As zstd's ``--adapt`` does: while compressed pieces queue up for the link
    (it is the bottleneck: a slow uplink, or incompressible data going first),
    CPU spent on the strong codec costs no time and saves bytes; when they do
    not, the fast codec keeps the link fed. On loopback or a LAN the queue
    never holds ``READY_SECONDS`` of link time, so nothing changes there.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = 0  # bytes of finished pieces not yet handed to the link
        self.sent = 0  # bytes handed to the link ...
        self.busy = 0.0  # ... and the seconds it took to take them

    def finished(self, piece: _Piece) -> _Piece:
        with self.lock:
            self.ready += piece.size
        return piece

    def taken(self, piece: _Piece, seconds: float) -> None:
        with self.lock:
            self.ready -= piece.size
            self.sent += piece.size
            self.busy += seconds

    def strong(self) -> bool:
        """Whether the pieces waiting for the link will keep it busy for ``READY_SECONDS`` (once its rate is known)."""
        with self.lock:
            if self.sent < RATE_SAMPLE or self.busy <= 0:
                return False
            return self.ready >= READY_SECONDS * self.sent / self.busy


class _ReadAhead:
    """Reads files and hands pieces to the compressing pool on a thread of its own, up to ``AHEAD_BYTES``
    ahead of the link: the text behind a large incompressible file is compressed while that file is on the
    wire, and the sending thread only sends. Iterating gives the finished pieces in order."""

    def __init__(self, pool: ThreadPoolExecutor, jobs: Iterator[tuple[int, Callable[[], _Piece]]],
                 pace: _Pace) -> None:
        self.queued: queue.SimpleQueue[tuple[int, Future[_Piece]] | BaseException | None] = queue.SimpleQueue()
        self.room = threading.Condition()
        self.unsent = 0  # raw bytes of pieces submitted and not yet sent
        self.stopped = False
        self.thread = threading.Thread(target=self._fill, args=(pool, jobs, pace), name="mltrain-read-ahead",
                                       daemon=True)
        self.thread.start()

    def _fill(self, pool: ThreadPoolExecutor, jobs: Iterator[tuple[int, Callable[[], _Piece]]],
              pace: _Pace) -> None:
        try:
            for raw, job in jobs:
                with self.room:
                    while self.unsent > AHEAD_BYTES and not self.stopped:
                        self.room.wait()
                    if self.stopped:
                        return
                    self.unsent += raw
                self.queued.put((raw, pool.submit(_timed_job, job, pace)))
            self.queued.put(None)
        except BaseException as exc:  # a damaged local blob (TargetError) included: the sender raises it
            self.queued.put(exc)

    def __iter__(self) -> Iterator[_Piece]:
        while (item := self.queued.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            raw, future = item
            yield future.result()
            with self.room:
                self.unsent -= raw
                self.room.notify()

    def stop(self) -> None:
        with self.room:
            self.stopped = True
            self.room.notify()
        self.thread.join()


def _timed_job(job: Callable[[], _Piece], pace: _Pace) -> _Piece:
    return pace.finished(job())


def _blob_frames(store: BlobStore, missing: list[tuple[str, int]], sizes: dict[str, int],
                 stats: UploadStats, sent: Callable[[], None] = lambda: None,
                 codecs: Codecs | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Large blobs first, in chunks from where the host's part ends; then small ones in batches (one header, one
    body).

    Large first: they are the ones that often do not shrink (weights, archives), and the link carries them
    while the text behind is compressed. With ``codecs``, each batch and chunk is compressed on a pool
    (zlib, zstd and lzma release the GIL) up to ``AHEAD_BYTES`` ahead of the link, or sent raw when it does
    not shrink. ``sent`` is told after each body frame went out (``stats.bytes`` counts it): the progress
    display.
    """
    ordered = sorted(missing, key=lambda row: sizes[row[0]] < SMALL)  # stable: manifest order within each
    if codecs is None:
        yield from _emitted((job() for _, job in _pieces(store, ordered, sizes, None, _Pace())), stats, sent)
        return
    pace = _Pace()
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="mltrain-compress") as pool:
        ahead = _ReadAhead(pool, _pieces(store, ordered, sizes, codecs, pace), pace)
        try:
            yield from _emitted(iter(ahead), stats, sent, pace)
        finally:
            ahead.stop()
    stats.codec = codecs.fast


def _emitted(pieces: Iterator[_Piece], stats: UploadStats, sent: Callable[[], None],
             pace: _Pace | None = None) -> Iterator[tuple[bytes, bytes]]:
    for piece in pieces:
        started = time.perf_counter()
        yield from piece.frames  # the consumer sends while we are suspended here
        if pace is not None:
            pace.taken(piece, time.perf_counter() - started)
        stats.blobs += piece.blobs
        stats.packed += piece.wire
        stats.skipped += piece.skipped
        stats.resumed += piece.resumed
        stats.strong += piece.strong
        if piece.raw:
            stats.bytes += piece.raw
            sent()
    yield b"J", b'{"end":true}'


def _pieces(store: BlobStore, missing: list[tuple[str, int]], sizes: dict[str, int],
            codecs: Codecs | None, pace: _Pace) -> Iterator[tuple[int, Callable[[], _Piece]]]:
    """What to send, in order, as (raw bytes, a job that makes its frames): compressing is the part worth a
    thread."""
    rows: list[list[Any]] = []
    body: list[bytes] = []
    batched = 0
    fast = codecs.fast if codecs is not None else None
    for digest, have in missing:
        size = sizes[digest]
        if size < SMALL:
            data = _read_small(store.path(digest), size)
            rows.append([digest, size])
            body.append(data)
            batched += size
            if batched >= BATCH:
                yield batched, partial(_batch, codecs, pace, rows, body)
                rows, body, batched = [], [], 0
            continue
        hasher = hashlib.sha256()
        with open(store.path(digest), "rb") as fh:
            if have:
                hasher.update(fh.read(have))
            chunk = fh.read(CHUNK)
            used = fast if fast is not None and chunk and shrinks(chunk) else None  # one mode per blob
            head: dict[str, Any] = {"blob": digest, "offset": have, "size": size}
            if used:
                head["codec"] = used
            yield 0, partial(_Piece, [(b"J", json.dumps(head).encode())], resumed=int(have > 0))
            while chunk:
                hasher.update(chunk)
                yield len(chunk), partial(_chunk, used, chunk, skipped=fast is not None and used is None)
                chunk = fh.read(CHUNK)
        yield 0, partial(_Piece, [(b"J", json.dumps({"sha256": hasher.hexdigest()}).encode())], blobs=1)
    if rows:
        yield batched, partial(_batch, codecs, pace, rows, body)


def _batch(codecs: Codecs | None, pace: _Pace, rows: list[list[Any]], body: list[bytes]) -> _Piece:
    data = b"".join(body)
    strong = codecs is not None and codecs.strong is not None and pace.strong()
    used, payload = pack(None if codecs is None else codecs.strong if strong else codecs.fast, data)
    head: dict[str, Any] = {"batch": rows, "sha256": hashlib.sha256(data).hexdigest()}
    if used:
        head["codec"] = used
    return _Piece([(b"J", json.dumps(head).encode()), (b"D", payload)], len(data), len(rows), len(payload),
                  codecs is not None and used is None, strong=strong and used is not None)


def _chunk(codec: str | None, chunk: bytes, *, skipped: bool) -> _Piece:
    payload = compress(codec, chunk) if codec else chunk
    return _Piece([(b"D", payload)], len(chunk), 0, len(payload), skipped)


def _read_small(path: os.PathLike[str], size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, size + 1)
    finally:
        os.close(fd)
    if len(data) != size:
        raise TargetError(f"blob {os.fspath(path)} is {len(data)} bytes, not the {size} its snapshot says: the "
                          "local blob store is damaged: delete that file and take the snapshot again")
    return data


def manifest_edits(old_rows: list[Any], new_rows: list[Any]) -> list[list[Any]]:
    """``new_rows`` as keep/delete/insert runs over ``old_rows`` (both manifests' rows, sorted by path)."""
    old_paths = [name_in(r[0]) for r in old_rows]
    new_paths = [name_in(r[0]) for r in new_rows]
    edits: list[list[Any]] = []

    def add(kind: str, value: Any) -> None:
        if edits and edits[-1][0] == kind:
            edits[-1][1] = edits[-1][1] + value
        else:
            edits.append([kind, value])

    i = j = 0
    while i < len(old_paths) or j < len(new_paths):
        if i < len(old_paths) and j < len(new_paths) and old_paths[i] == new_paths[j]:
            if old_rows[i] == new_rows[j]:
                add("k", 1)
            else:
                add("d", 1)
                add("i", [new_rows[j]])
            i += 1
            j += 1
        elif j >= len(new_paths) or (i < len(old_paths) and old_paths[i] < new_paths[j]):
            add("d", 1)
            i += 1
        else:
            add("i", [new_rows[j]])
            j += 1
    return edits


def _put_manifest(link: Link, manifest: _Manifest, base: _Manifest | None) -> Reply:
    sha = hashlib.sha256(manifest.canonical).hexdigest()
    msg: dict[str, Any] = {"op": "put_manifest", "id": manifest.id, "sha256": sha}
    if base is not None:
        reply = link.request({**msg, "base": base.id, "edits": manifest_edits(base.rows, manifest.rows)})
        if not reply.maybe("mismatch", bool):
            return reply
        log.info("%s rebuilt a different manifest from the edits; sending it whole", link.where)
    msg["size"] = len(manifest.canonical)  # the helper inflates it capped at this
    reply = link.request(msg, body=iter([(b"D", zlib.compress(manifest.canonical, 1))]))
    if reply.maybe("mismatch", bool):
        raise TargetError(f"snapshot manifest {manifest.id[:12]} arrived damaged on {link.where}; submit again")
    return reply
