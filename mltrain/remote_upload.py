"""Putting a snapshot on a remote host: only the blobs it lacks, one stream, then its checkout.

The remote keeps the same content-addressed store as the workspace
(``mltrain.remote_agent`` describes its layout), so staging a snapshot is:

1. ``have``: is its checkout already there? (an unchanged tree: one request, done)
   Which of our recent manifests does the host hold? Those are complete
   there (a manifest's marker is written only once all its blobs are), so
   only digests *not* in such a base need asking about.
2. ``begin_upload`` with those digests: which are missing, and how many bytes
   of each already arrived (a part kept from an upload the link cut).
3. ``put_blobs``: every missing blob, back to back, in one stream over the
   helper's channel -- a header, the bytes from where the host's part ends,
   and a sha256 of the whole blob that the host checks before renaming the
   blob into place. sha256 rather than the store's blake3: the host's
   ``python3`` has hashlib and no blake3, and a check only needs both ends to
   agree on the bytes (the link itself is authenticated by SSH).
4. ``put_manifest``: as edits of the base (a few hundred bytes for a one-file
   change, instead of ~110 bytes per file), or whole and compressed when
   there is no base; the host rebuilds the canonical JSON and checks its
   sha256, then builds the checkout from hardlinks to its blobs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mltrain.blobstore import BlobStore
from mltrain.errors import TargetError
from mltrain.remote import Link, RemoteError
from mltrain.snapshot_manifest import Manifest

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RECENT_BASES = 8
PREFETCH = 16  # frames (at most a MiB each) read ahead of the sender
ENOSPC = (28, 122)  # ENOSPC, EDQUOT


@dataclass
class UploadStats:
    blobs: int = 0
    bytes: int = 0
    resumed: int = 0


def stage_snapshot(link: Link, store: BlobStore, manifest_id: str, stats: UploadStats | None = None) -> str:
    """Make ``checkouts/<manifest_id>`` exist on the host; returns its path there."""
    stats = stats if stats is not None else UploadStats()
    recent = _recent_manifests(store, manifest_id)
    state = link.request({"op": "have", "manifest": manifest_id, "bases": recent}, retry=True)
    root = link.hello()["root"]
    if state["checkout"]:
        return f"{root}/checkouts/{manifest_id}"
    manifest = store.load_manifest(manifest_id)
    base_id = next((b for b in state["bases"] if b != manifest_id), None)
    base = store.load_manifest(base_id) if base_id else None
    wanted = {e.digest: e.size for e in manifest.entries if e.link is None and e.size > 0}
    if base is not None and not state["manifest"]:
        known = {e.digest for e in base.entries}
        candidates = [d for d in wanted if d not in known]
    else:
        candidates = [] if state["manifest"] else list(wanted)
    for _ in range(3):
        if candidates:
            _send_blobs(link, store, candidates, wanted, stats)
        reply = _put_manifest(link, manifest, base)
        if "path" in reply:
            return str(reply["path"])
        candidates = list(reply["missing"])  # blobs the host lost (removed by hand?): send them and retry
        log.warning("%s lacks %d blobs its manifests promise; sending them", link.where, len(candidates))
    raise TargetError(f"could not stage snapshot {manifest_id[:12]} on {link.where}: blobs keep going missing "
                      f"there; remove {root}/blobs and submit again")


def _recent_manifests(store: BlobStore, exclude: str, limit: int = RECENT_BASES) -> list[str]:
    folder = store.root / "manifests"
    try:
        with os.scandir(folder) as listing:
            stamped = [(e.stat().st_mtime, e.name) for e in listing if e.name != exclude]
    except FileNotFoundError:
        return []
    return [name for _, name in sorted(stamped, reverse=True)[:limit]]


def _send_blobs(link: Link, store: BlobStore, digests: list[str], sizes: dict[str, int], stats: UploadStats) -> None:
    missing = link.request({"op": "begin_upload", "digests": digests})["missing"]
    if not missing:
        link.request({"op": "put_blobs", "stream": True}, body=iter([(b"J", b'{"end":true}')]))
        return
    try:
        reply = link.request({"op": "put_blobs", "stream": True},
                             body=_blob_frames(store, missing, sizes, stats))
    except RemoteError as exc:
        if exc.errno in ENOSPC:
            raise TargetError(f"the disk holding {link.hello()['root']} on {link.where} is full ({exc}); nothing "
                              "was half-placed: free space there or set compute.remote_dir to a larger disk, "
                              "then submit again") from None
        raise
    log.info("sent %d blobs (%d bytes) to %s", reply["placed"], reply["bytes"], link.where)


def _blob_frames(store: BlobStore, missing: list[list[Any]], sizes: dict[str, int],
                 stats: UploadStats) -> Iterator[tuple[bytes, bytes]]:
    """The frames of every missing blob, read and hashed by a thread a few MiB ahead of the sender."""
    frames: queue.Queue[tuple[bytes, bytes] | BaseException | None] = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in _read_blobs(store, missing, sizes, stats):
                while not stop.is_set():
                    try:
                        frames.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            frames.put(None)
        except BaseException as exc:
            frames.put(exc)

    worker = threading.Thread(target=produce, name="mltrain-upload-reader", daemon=True)
    worker.start()
    try:
        while (item := frames.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
            if item[0] == b"D":
                stats.bytes += len(item[1])
            elif item[1].startswith(b'{"sha256"'):
                stats.blobs += 1
    finally:
        stop.set()
        worker.join()


def _read_blobs(store: BlobStore, missing: list[list[Any]], sizes: dict[str, int],
                stats: UploadStats) -> Iterator[tuple[bytes, bytes]]:
    for digest, have in missing:
        size = sizes[digest]
        offset = int(have) if 0 <= int(have) <= size else 0
        yield b"J", json.dumps({"blob": digest, "offset": offset, "size": size}).encode()
        hasher = hashlib.sha256()
        with open(store.path(digest), "rb") as fh:
            if offset:
                hasher.update(fh.read(offset))
                stats.resumed += 1
            while chunk := fh.read(CHUNK):
                hasher.update(chunk)
                yield b"D", chunk
        yield b"J", json.dumps({"sha256": hasher.hexdigest()}).encode()
    yield b"J", b'{"end":true}'


def _rows(manifest: Manifest) -> list[Any]:
    rows: list[Any] = json.loads(manifest.canonical)["entries"]
    return rows


def manifest_edits(base: Manifest, new: Manifest) -> list[list[Any]]:
    """``new``'s rows as keep/delete/insert runs over ``base``'s (both sorted by path)."""
    old_rows, new_rows = _rows(base), _rows(new)
    old_paths = [e.path for e in base.entries]
    new_paths = [e.path for e in new.entries]
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


def _put_manifest(link: Link, manifest: Manifest, base: Manifest | None) -> dict[str, Any]:
    sha = hashlib.sha256(manifest.canonical).hexdigest()
    msg: dict[str, Any] = {"op": "put_manifest", "id": manifest.id, "sha256": sha}
    if base is not None:
        reply = link.request({**msg, "base": base.id, "edits": manifest_edits(base, manifest)})
        if not reply.get("mismatch"):
            return reply
        log.info("%s rebuilt a different manifest from the edits; sending it whole", link.where)
    reply = link.request(msg, body=iter([(b"D", zlib.compress(manifest.canonical, 1))]))
    if reply.get("mismatch"):
        raise TargetError(f"snapshot manifest {manifest.id[:12]} arrived damaged on {link.where}; submit again")
    return reply
