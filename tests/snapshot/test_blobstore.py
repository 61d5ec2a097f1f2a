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


def _aged_tree(root: Path, count: int = 30) -> None:
    """Files past the stat cache's racy window, so a re-snapshot trusts their stat."""
    for i in range(count):
        path = root / f"m{i // 10}" / f"f{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"print({i})\n")
        _age(path, 60)


def _edit(root: Path, i: int, text: str, age: float) -> None:
    path = root / f"m{i // 10}" / f"f{i}.py"
    path.write_text(text)
    _age(path, age)  # a new mtime, still out of the racy window


def _stored_as(store: BlobStore, manifest_id: str) -> tuple[str, list[int]] | None:
    """(the full manifest, the edited entries) when stored as edits; None when stored in full."""
    marker = (store.root / "manifests" / manifest_id).read_bytes()
    if not marker:
        assert store.has(manifest_id)
        return None
    assert not store.has(manifest_id) and marker.startswith(blobstore.EDITS_MAGIC)
    import json

    doc = json.loads(marker[len(blobstore.EDITS_MAGIC):])
    return doc["base"], [i for i, _, _ in doc["edits"]]


def _from_scratch(tree: Path, tmp_path: Path) -> str:
    """The id a snapshot of ``tree`` has when taken with no cache into an empty store."""
    from mltrain.snapshot.take import take_snapshot

    return take_snapshot(tree, BlobStore(tmp_path / f"scratch{time.monotonic_ns()}")).manifest.id


def test_a_re_snapshot_of_a_few_edits_stores_them_not_the_whole_manifest(tmp_path: Path) -> None:
    """One edited file in a large tree: its new manifest is kept as that one edit (where in full it grows
    ~106 bytes a file), from the last manifest stored in full, and reads back exactly as a full one."""
    from mltrain.snapshot.take import take_snapshot

    tree, store, cache = tmp_path / "tree", BlobStore(tmp_path / "blobs"), tmp_path / "cache"
    _aged_tree(tree)
    first = take_snapshot(tree, store, cache_dir=cache).manifest.id
    assert _stored_as(store, first) is None

    _edit(tree, 3, "print('three')\n", 50)
    second = take_snapshot(tree, store, cache_dir=cache).manifest.id
    assert _stored_as(store, second) == (first, [3])
    assert second == _from_scratch(tree, tmp_path)
    assert store.load_manifest(second).canonical == BlobStore(tmp_path / "blobs").manifest_bytes(second)

    _edit(tree, 27, "print('twenty-seven')\n", 40)  # edits of edits: both, from the full one
    third = take_snapshot(tree, store, cache_dir=cache).manifest.id
    assert _stored_as(store, third) == (first, [3, 27])
    assert third == _from_scratch(tree, tmp_path)

    _edit(tree, 3, "print(3)\n", 30)  # back as it was: only the other edit is left
    fourth = take_snapshot(tree, store, cache_dir=cache).manifest.id
    assert _stored_as(store, fourth) == (first, [27])
    entries = {e.path: e.digest for e in store.load_manifest(fourth).entries}
    assert entries["m0/f3.py"] == hash_bytes(b"print(3)\n")
    assert entries["m2/f27.py"] == hash_bytes(b"print('twenty-seven')\n")


def test_a_manifest_too_far_from_the_full_one_is_stored_in_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mltrain.snapshot.take import take_snapshot

    monkeypatch.setattr(blobstore, "MAX_STORED_EDITS", 2)
    tree, store, cache = tmp_path / "tree", BlobStore(tmp_path / "blobs"), tmp_path / "cache"
    _aged_tree(tree)
    first = take_snapshot(tree, store, cache_dir=cache).manifest.id
    for i in (1, 2):
        _edit(tree, i, f"print('edit {i}')\n", 50 - i)
        edited = take_snapshot(tree, store, cache_dir=cache).manifest.id
        assert _stored_as(store, edited) == (first, list(range(1, i + 1)))
    _edit(tree, 5, "print('a third edit')\n", 45)
    full = take_snapshot(tree, store, cache_dir=cache).manifest.id
    assert _stored_as(store, full) is None
    _edit(tree, 6, "print('after it')\n", 44)  # the next edits start from that one
    assert _stored_as(store, take_snapshot(tree, store, cache_dir=cache).manifest.id) == (full, [6])


def test_gc_keeps_the_manifest_that_stored_edits_apply_to(tmp_path: Path) -> None:
    from mltrain.snapshot.take import take_snapshot

    tree, store, cache = tmp_path / "tree", BlobStore(tmp_path / "blobs"), tmp_path / "cache"
    _aged_tree(tree)
    first = take_snapshot(tree, store, cache_dir=cache).manifest.id
    _edit(tree, 3, "print('three')\n", 50)
    second = take_snapshot(tree, store, cache_dir=cache).manifest.id
    _age_store(store)
    removed, _ = store.gc([second])
    assert removed == 1  # f3's first content, which only the first snapshot held
    assert not store.has_manifest(first) and store.has(first)  # no longer a snapshot, still the edits' base
    assert second == store.load_manifest(second).id == _from_scratch(tree, tmp_path)
    store.gc([])  # nothing kept: the base goes with the edits
    assert not store.has(first) and not store.has_manifest(second)


def test_a_damaged_edits_marker_reads_as_a_damaged_snapshot(tmp_path: Path) -> None:
    from mltrain.snapshot.take import take_snapshot

    tree, store, cache = tmp_path / "tree", BlobStore(tmp_path / "blobs"), tmp_path / "cache"
    _aged_tree(tree)
    take_snapshot(tree, store, cache_dir=cache)
    _edit(tree, 3, "print('three')\n", 50)
    second = take_snapshot(tree, store, cache_dir=cache).manifest.id
    marker = store.root / "manifests" / second
    marker.chmod(0o644)
    forged = hash_bytes(b"print('forged')\n").encode()
    marker.write_bytes(marker.read_bytes().replace(hash_bytes(b"print('three')\n").encode(), forged))
    with pytest.raises(SnapshotError, match="damaged"):
        store.load_manifest(second)
    marker.write_bytes(blobstore.EDITS_MAGIC + b'{"base": "not json')
    with pytest.raises(SnapshotError, match="damaged"):
        store.load_manifest(second)
    take_snapshot(tree, store, cache_dir=tmp_path / "fresh-cache")  # storing it again repairs it
    assert store.load_manifest(second).id == second


def test_a_snapshot_into_an_empty_store_asks_no_missing_blob_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fan-out folders missing when a snapshot begins hold nothing it could find: no stat per file there.
    Into a filled store each file is looked up, and nothing is stored twice."""
    from mltrain.snapshot.take import take_snapshot

    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"f{i}.txt").write_text(f"content {i}\n")
    looked_up: list[str] = []
    real_has = BlobStore.has
    monkeypatch.setattr(BlobStore, "has", lambda self, digest: looked_up.append(digest) or real_has(self, digest))
    store = BlobStore(tmp_path / "store")
    first = take_snapshot(src, store)
    assert looked_up == [first.manifest.id]  # only put_manifest asks, for the manifest
    assert first.bytes_new == first.bytes
    looked_up.clear()
    again = take_snapshot(src, store, cache_dir=tmp_path / "no-cache")  # every file hashed again
    assert len(looked_up) > 300 and again.bytes_new == 0


def test_a_blob_stored_meanwhile_in_a_fan_that_was_missing_is_stored_again_whole(tmp_path: Path) -> None:
    """Another snapshot storing into a fan-out folder this one saw missing: this one writes the blob again,
    the same bytes under the same name (atomically), and the store stays sound."""
    from mltrain.snapshot.hashing import Claims

    store = BlobStore(tmp_path / "store")
    claims = Claims(store)
    first = hash_bytes(b"first")
    assert claims.new(first)  # the store was empty: every fan-out folder missing
    data = next(d for d in (str(i).encode() for i in range(10_000)) if hash_bytes(d)[:2] == first[:2])
    neighbour = hash_bytes(data)  # another blob in the same fan-out folder
    BlobStore(tmp_path / "store").put_bytes(neighbour, data)  # another snapshot, meanwhile
    assert claims.new(neighbour)  # not looked up: this snapshot stores it again
    store.put_bytes(neighbour, data)
    assert store.path(neighbour).read_bytes() == data
    assert not Claims(store).new(neighbour)  # a snapshot beginning now sees it


def test_a_new_blob_written_in_place_is_unreadable_until_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"written in place\n"
    digest = hash_bytes(data)
    seen_while_written: list[tuple[bool, int]] = []
    real_write_all = blobstore._write_all

    def watch(fd: int, chunk: bytes) -> None:
        seen_while_written.append((store.has(digest), stat.S_IMODE(os.stat(store.path(digest)).st_mode)))
        real_write_all(fd, chunk)

    monkeypatch.setattr(blobstore, "_write_all", watch)
    store.put_new(digest, data)
    assert seen_while_written == [(False, blobstore.PARTIAL_MODE)]
    assert store.has(digest) and store.path(digest).read_bytes() == data
    assert stat.S_IMODE(store.path(digest).stat().st_mode) == blobstore.BLOB_MODE
    assert os.listdir(store.root / "tmp") == []  # no temp file, no rename


def test_a_partial_blob_left_by_a_crash_is_absent_and_replaced_whole(tmp_path: Path) -> None:
    """What a writer killed mid-blob leaves: its name, unreadable, holding part of the bytes."""
    store = BlobStore(tmp_path / "blobs")
    data = b"the whole content\n" * 100
    digest = hash_bytes(data)
    partial = store.path(digest)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:50])
    partial.chmod(blobstore.PARTIAL_MODE)
    assert not store.has(digest)
    store.put_new(digest, data)
    assert store.has(digest) and partial.read_bytes() == data


def test_a_file_system_that_does_not_keep_modes_gets_temp_files_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FAT or SMB mount shows every file 0o755 whatever it was made with (none can be mounted here: the
    probe's fstat is faked to answer so). There no blob is written in place, where a crash would leave a
    partial blob that looks whole."""
    store = BlobStore(tmp_path / "blobs")
    real_fstat = os.fstat

    def fat_fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        return os.stat_result((st.st_mode | 0o755, *tuple(st)[1:]))

    monkeypatch.setattr(blobstore.os, "fstat", fat_fstat)
    renamed: list[str] = []
    real_install = store._install
    monkeypatch.setattr(store, "_install", lambda tmp, digest: renamed.append(digest) or real_install(tmp, digest))
    data = b"on a FAT mount\n"
    store.put_new(hash_bytes(data), data)
    assert renamed == [hash_bytes(data)] and store.path(hash_bytes(data)).read_bytes() == data
