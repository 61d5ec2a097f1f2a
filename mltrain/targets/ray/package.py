"""The snapshot as the Ray job's code: zips in Ray's own package store, each named by its content.

Ray's ``JobSubmissionClient`` zips a directory, hashes it and uploads it under
``gcs://_ray_pkg_<hash>.zip`` unless the cluster has it (``GET /api/packages/...``); a node unpacks and
caches a package by that name. mltrain uses the same store, but splits the tree into parts so that a
one-file change re-sends that file's part only (a few KiB), not the whole tree:

* the files, in path order, are cut into parts where a path's hash says so (about 48 cuts over the tree,
  so a part's members depend on paths only, never on sizes: editing or adding a file changes one part);
  a file over 64 KiB is a part of its own; at most ``MAX_PARTS`` parts;
* each part is a zip named by its members (path, content digest, mode): an unchanged part is one GET;
* the job's ``working_dir`` is a small index zip naming the parts, which go as the job's ``py_modules``
  (each unpacked by Ray into a folder named after it); the job's wrapper (``jobwrap``) links the parts'
  files into a working folder of the run's own -- so files a script writes beside itself never reach
  Ray's cached copy nor a concurrent trial.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import threading
import time
import zipfile
from dataclasses import dataclass, field
from typing import ClassVar

from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.manifest import FileEntry, Manifest
from mltrain.targets.ray.client import Cluster

log = logging.getLogger(__name__)

INDEX = ".mltrain-parts.json"
MAX_PARTS = 64
CUTS = 48  # hash cuts over a tree, on average
BIG = 64 * 1024  # a file larger than this is a part of its own
KNOWN_FOR = 60.0  # seconds a package the cluster had is taken as still there (Ray pins it 10 min after a GET)


@dataclass
class UploadStats:
    """What one ``stage`` sent (benchmarks and tests read it)."""

    uri: str = ""
    parts: int = 0
    bytes_sent: int = 0
    parts_sent: int = 0
    skipped_links: int = 0


@dataclass(frozen=True)
class Staged:
    """The snapshot on the cluster: the index (the job's ``working_dir``) and the parts (its ``py_modules``)."""

    index: str
    parts: tuple[str, ...]


@dataclass
class _Known:
    """Packages a cluster had lately, per process: a sweep's trials do not ask again for each part."""

    seen: dict[tuple[str, str], float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    shared: ClassVar[_Known]

    def has(self, cluster: Cluster, uri: str) -> bool:
        key = (cluster.url, uri)
        with self.lock:
            when = self.seen.get(key)
        if when is not None and time.monotonic() - when < KNOWN_FOR:
            return True
        if cluster.has_package(uri):
            self.add(cluster, uri)
            return True
        return False

    def add(self, cluster: Cluster, uri: str) -> None:
        with self.lock:
            self.seen[(cluster.url, uri)] = time.monotonic()


_Known.shared = _Known()


def _uri(kind: str, members: object) -> str:
    digest = hashlib.sha256(f"mltrain-{kind}:{json.dumps(members, sort_keys=True)}".encode()).hexdigest()
    return f"gcs://_ray_pkg_{digest[:32]}.zip"


def split(entries: tuple[FileEntry, ...]) -> list[list[FileEntry]]:
    """The files in parts (see the module docstring); links are left out (Ray's zips cannot hold them)."""
    files = sorted((e for e in entries if e.link is None), key=lambda e: e.path)
    every = max(1, math.ceil(len(files) / CUTS))
    parts: list[list[FileEntry]] = []
    current: list[FileEntry] = []
    for entry in files:
        if entry.size > BIG:
            if current:
                parts.append(current)
                current = []
            parts.append([entry])
            continue
        current.append(entry)
        if int(hashlib.sha256(entry.path.encode()).hexdigest()[:8], 16) % every == 0:
            parts.append(current)
            current = []
    if current:
        parts.append(current)
    while len(parts) > MAX_PARTS:  # merge neighbours, from the start, until few enough
        parts = [[*parts[i], *parts[i + 1]] if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts


def _members(part: list[FileEntry]) -> list[list[object]]:
    return [[e.path, e.digest, e.mode] for e in part]


def part_uris(manifest: Manifest) -> list[str]:
    return [_uri("part", _members(part)) for part in split(manifest.entries)]


def index_uri(parts: list[str]) -> str:
    return _uri("index", parts)


def _zip(files: list[tuple[str, int, bytes | str]], store: BlobStore | None) -> bytes:
    """A zip of ``(name, mode, blob digest | bytes)``, fixed times: the same members, the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, mode, source in files:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as out:
                if isinstance(source, bytes):
                    out.write(source)
                    continue
                assert store is not None
                with open(store.path(source), "rb") as blob:
                    while chunk := blob.read(1 << 20):
                        out.write(chunk)
    return buffer.getvalue()


def _put(cluster: Cluster, uri: str, data: bytes, stats: UploadStats) -> None:
    cluster.put_package(uri, data)
    _Known.shared.add(cluster, uri)
    stats.bytes_sent += len(data)
    stats.parts_sent += 1


def stage(cluster: Cluster, store: BlobStore, snapshot_id: str, stats: UploadStats) -> Staged:
    """The snapshot on ``cluster``: each part and the index uploaded if the cluster lacks it."""
    manifest = store.load_manifest(snapshot_id)
    stats.skipped_links = sum(1 for e in manifest.entries if e.link is not None)
    if stats.skipped_links:
        log.warning("%d symbolic link(s) of the snapshot are not sent to Ray (its packages cannot hold links)",
                    stats.skipped_links)
    parts = split(manifest.entries)
    uris = [_uri("part", _members(part)) for part in parts]
    for part, uri in zip(parts, uris, strict=True):
        if not _Known.shared.has(cluster, uri):
            _put(cluster, uri, _zip([(e.path, e.mode, e.digest) for e in part], store), stats)
    index = stats.uri = index_uri(uris)
    stats.parts = len(uris)
    if not _Known.shared.has(cluster, index):
        body = json.dumps({"snapshot": snapshot_id, "parts": [_folder(uri) for uri in uris]}).encode()
        _put(cluster, index, _zip([(INDEX, 0o644, body)], None), stats)
    return Staged(index, tuple(uris))


def _folder(uri: str) -> str:
    """The folder Ray unpacks a package into is named after it (``_ray_pkg_<hash>``)."""
    return uri.rsplit("/", 1)[-1].removesuffix(".zip")
