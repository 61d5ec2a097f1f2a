"""The snapshot as the Ray job's ``working_dir``: a zip in Ray's own package store, named by its content.

Ray's ``JobSubmissionClient`` zips a directory, hashes it and uploads it under
``gcs://_ray_pkg_<hash>.zip`` unless the cluster has it (``GET /api/packages/...``). mltrain does the same
with the package made from the snapshot's manifest -- its id is already the content hash of the tree --
so the name is known without reading or zipping anything: an unchanged tree is one GET, no upload,
and every node unpacks (and caches) the package by that name, as for any Ray job.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from dataclasses import dataclass

from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.manifest import Manifest
from mltrain.targets.ray.client import Cluster

log = logging.getLogger(__name__)


@dataclass
class UploadStats:
    """What one ``stage`` sent (benchmarks and tests read it)."""

    uri: str = ""
    bytes_sent: int = 0
    skipped_links: int = 0


def package_uri(snapshot_id: str) -> str:
    return f"gcs://_ray_pkg_{hashlib.sha256(f'mltrain:{snapshot_id}'.encode()).hexdigest()[:32]}.zip"


def build_zip(manifest: Manifest, store: BlobStore) -> tuple[bytes, int]:
    """The tree as a zip (fixed times, sorted names: the same tree, the same bytes); and the links left out."""
    buffer = io.BytesIO()
    skipped = 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for entry in sorted(manifest.entries, key=lambda e: e.path):
            if entry.link is not None:
                skipped += 1  # Ray unpacks a zip's links as files holding their text: leave them out
                continue
            info = zipfile.ZipInfo(entry.path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | entry.mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(store.path(entry.digest), "rb") as blob, archive.open(info, "w") as out:
                while chunk := blob.read(1 << 20):
                    out.write(chunk)
    return buffer.getvalue(), skipped


def stage(cluster: Cluster, store: BlobStore, snapshot_id: str, stats: UploadStats) -> str:
    """The snapshot's package URI on ``cluster``, uploaded if the cluster lacks it."""
    uri = stats.uri = package_uri(snapshot_id)
    if cluster.has_package(uri):
        return uri
    data, stats.skipped_links = build_zip(store.load_manifest(snapshot_id), store)
    if stats.skipped_links:
        log.warning("%d symbolic link(s) of the snapshot are not sent to Ray (its packages cannot hold links)",
                    stats.skipped_links)
    cluster.put_package(uri, data)
    stats.bytes_sent = len(data)
    return uri
