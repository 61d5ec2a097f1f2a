"""The content-addressed blob store: layout, atomic writes, manifests, gc."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

import mltrain.snapshot.blobstore as blobstore
from mltrain.errors import SnapshotError
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.manifest import FileEntry, Manifest, hash_bytes


def _manifest(*contents: bytes) -> Manifest:
    entries = tuple(
        FileEntry(f"f{i}.txt", 0o644, len(data), hash_bytes(data)) for i, data in enumerate(contents)
    )
    return Manifest("blake3", entries)


def _put(store: BlobStore, data: bytes) -> str:
    digest = hash_bytes(data)
    store.put_bytes(digest, data)
    return digest


def _age(path: Path, seconds: float = 7200) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


def _age_store(store: BlobStore) -> None:
    for folder, _, names in os.walk(store.root):
        for name in names:
            _age(Path(folder) / name)


def test_blob_lives_under_fan_out_path_read_only(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = _put(store, b"hello")
    path = store.path(digest)
    assert path == tmp_path / "blobs" / digest[:2] / digest[2:]
    assert path.read_bytes() == b"hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.has(digest)
    assert not store.has(hash_bytes(b"other"))


def test_blob_is_read_only_even_with_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        store = BlobStore(tmp_path / "blobs")
        digest = _put(store, b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.path(digest).stat().st_mode) == 0o444


def test_path_refuses_non_hex_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(SnapshotError, match="invalid blob digest"):
        store.path("../../etc/passwd")


def test_disk_full_leaves_no_temp_file_and_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "blobs")
    kept = _put(store, b"already here")

    def full(fd: int, data: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(blobstore, "_write_all", full)
    digest = hash_bytes(b"new content")
    with pytest.raises(SnapshotError) as info:
        store.put_bytes(digest, b"new content")
    message = str(info.value)
    assert "\n" not in message
    assert "No space left on device" in message and "free some disk space" in message
    assert not store.has(digest)
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
    assert store.path(kept).read_bytes() == b"already here"


def test_streamed_writer_commits_under_digest_or_drops_duplicate(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"chunk" * 1000
    with store.writer() as writer:
        writer.write(data[:100])
        writer.write(data[100:])
        assert writer.commit(hash_bytes(data)) is True
    assert store.path(hash_bytes(data)).read_bytes() == data
    with store.writer() as writer:
        writer.write(data)
        assert writer.commit(hash_bytes(data)) is False
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


def test_streamed_writer_failure_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer()

    def full(fd: int, data: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(blobstore, "_write_all", full)
    with pytest.raises(SnapshotError, match="No space left"):
        writer.write(b"abc")
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


def test_manifest_round_trip_through_the_store(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    manifest = _manifest(b"a", b"b")
    for entry in manifest.entries:
        _put(store, b"a" if entry.path == "f0.txt" else b"b")
    assert store.put_manifest(manifest) == manifest.id
    assert store.has_manifest(manifest.id)
    assert store.has(manifest.id)
    loaded = store.load_manifest(manifest.id)
    assert loaded == manifest
    assert loaded.id == manifest.id


def test_unknown_snapshot_is_a_one_line_error(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(SnapshotError, match=r"^unknown snapshot [0-9a-f]{64}: it is not in the blob store") as info:
        store.load_manifest("0" * 64)
    assert "\n" not in str(info.value)
    with pytest.raises(SnapshotError, match="unknown snapshot 'nope'"):
        store.load_manifest("nope")


def test_damaged_manifest_is_reported(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    manifest = _manifest(b"a")
    store.put_manifest(manifest)
    path = store.path(manifest.id)
    path.chmod(0o644)
    path.write_bytes(b"{}")
    with pytest.raises(SnapshotError, match="is damaged"):
        store.load_manifest(manifest.id)


def test_gc_keeps_referenced_and_removes_the_rest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    shared, only_old, only_new = b"shared", b"old only", b"new only"
    for data in (shared, only_old, only_new):
        _put(store, data)
    old = _manifest(shared, only_old)
    new = _manifest(shared, only_new)
    store.put_manifest(old)
    store.put_manifest(new)
    stray = _put(store, b"unreferenced")
    _age_store(store)

    assert store.gc([new.id], dry_run=True) == (3, len(b"unreferenced") + len(only_old) + len(old.canonical))
    assert store.has(stray) and store.has_manifest(old.id)

    removed, freed = store.gc([new.id])
    assert (removed, freed) == (3, len(b"unreferenced") + len(only_old) + len(old.canonical))
    assert not store.has(stray) and not store.has(hash_bytes(only_old))
    assert not store.has_manifest(old.id) and not store.has(old.id)
    assert store.has(hash_bytes(shared)) and store.has(hash_bytes(only_new)) and store.has_manifest(new.id)
    assert store.load_manifest(new.id) == new


def test_gc_spares_young_blobs_and_recent_manifests(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    _put(store, b"in flight")
    recent = _manifest(b"recent")
    _put(store, b"recent")
    store.put_manifest(recent)
    assert store.gc([]) == (0, 0)
    _age_store(store)
    store.put_manifest(recent)  # taken again: its marker is refreshed, so it counts as kept
    removed, _ = store.gc([])
    assert removed == 1
    assert store.has(hash_bytes(b"recent")) and store.has_manifest(recent.id)
    assert store.gc([], grace_seconds=0) == (2, len(b"recent") + len(recent.canonical))


def test_gc_skips_a_kept_id_the_store_does_not_have(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    _put(store, b"x")
    _age_store(store)
    assert store.gc(["f" * 64]) == (1, 1)


def test_gc_removes_stale_temp_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    _put(store, b"x")
    stale = tmp_path / "blobs" / "tmp" / "123-4"
    stale.write_bytes(b"half a blob")
    _age(stale)
    store.gc([], grace_seconds=3600)
    assert not stale.exists()


def test_gc_on_missing_store_is_a_no_op(tmp_path: Path) -> None:
    assert BlobStore(tmp_path / "nothing").gc([]) == (0, 0)
