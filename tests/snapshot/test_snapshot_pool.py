"""The hashing pool: a snapshot taken on many threads is the snapshot taken on one.

Same manifest id, same new-byte count, same warnings, same one-line error (the
first failing file's, in path order), and a store whose every blob holds the
bytes its name says. The same holds for the two lanes a 2-core box takes by
default (small files on one thread, large ones on another).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

import mltrain.snapshot.hashing as snapshot_hash
import mltrain.snapshot.take as snapshot_module
from mltrain.errors import SnapshotError
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.manifest import hash_bytes
from mltrain.snapshot.take import SnapshotResult, take_snapshot

WORKERS = (1, 2, 5, None)
"""Off, the 2-core box's pool, more threads than batches in some trees, and the default on two cores: the
small files on the calling thread, the large ones on a lane of their own (see ``lanes``)."""


@pytest.fixture(autouse=True)
def lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default (``workers=None``) as on a 2-core box with a few MiB of large files in ``_tree``: lanes."""
    monkeypatch.setattr(snapshot_hash, "usable_cores", lambda: 2)
    monkeypatch.setattr(snapshot_hash, "LANE_MIN_BYTES", snapshot_hash.SMALL)


def _tree(root: Path) -> None:
    """Enough files for several batches, with what a batch must get right: equal contents in different
    batches (stored and counted once), executables, a symlink, empty files, and large files (a batch each)."""
    for d in range(6):
        for f in range(70):
            path = root / f"pkg{d}" / f"m{f:02d}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"value = {f % 17}\n".encode() if f % 3 else f"unique = {d}, {f}\n".encode())
    (root / "pkg0" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (root / "pkg0" / "run.sh").chmod(0o755)
    (root / "pkg5" / "empty").write_bytes(b"")
    (root / "pkg1" / "link.py").symlink_to("m01.py")
    blob = os.urandom(snapshot_hash.SMALL + 123)
    (root / "data").mkdir()
    for name in ("a.bin", "b.bin"):
        (root / "data" / name).write_bytes(blob)  # the same large content twice
    (root / "data" / "c.bin").write_bytes(os.urandom(2 * snapshot_hash.SMALL))


def _store_is_sound(store: BlobStore) -> int:
    """Every blob holds exactly the bytes its name is the digest of; no temp file is left; the blob count."""
    blobs = 0
    for folder, _, names in os.walk(store.root):
        rel = os.path.relpath(folder, store.root)
        if rel == "tmp":
            assert names == []
        if len(rel) != 2:
            continue
        for name in names:
            assert hash_bytes(Path(folder, name).read_bytes()) == rel + name
            blobs += 1
    return blobs


@pytest.mark.parametrize("workers", WORKERS)
def test_the_pool_takes_the_same_snapshot(tmp_path: Path, workers: int | None) -> None:
    src = tmp_path / "src"
    _tree(src)
    serial_store, store = BlobStore(tmp_path / "one"), BlobStore(tmp_path / "many")
    serial = take_snapshot(src, serial_store, workers=1)
    pooled = take_snapshot(src, store, workers=workers)
    assert pooled.manifest.id == serial.manifest.id
    assert pooled.manifest.canonical == serial.manifest.canonical
    assert (pooled.files, pooled.bytes, pooled.bytes_new) == (serial.files, serial.bytes, serial.bytes_new)
    assert pooled.bytes_new < pooled.bytes  # the duplicates were counted once
    assert _store_is_sound(store) == _store_is_sound(serial_store)
    dry = take_snapshot(src, BlobStore(tmp_path / "dry"), workers=workers, dry_run=True)
    assert (dry.manifest.id, dry.bytes_new) == (serial.manifest.id, serial.bytes_new)


def test_on_two_cores_the_large_files_take_a_lane_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    _tree(src)
    threads: dict[str, set[str]] = {"small": set(), "large": set()}
    real_settled_read = snapshot_hash._settled_read

    def settled_read(rel: str, fd: int, stamp: object, size: int, *args: object) -> object:
        threads["large" if size >= snapshot_hash.SMALL else "small"].add(threading.current_thread().name)
        return real_settled_read(rel, fd, stamp, size, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot_hash, "_settled_read", settled_read)
    result = take_snapshot(src, BlobStore(tmp_path / "store"))
    assert threads == {"small": {threading.current_thread().name}, "large": {"mltrain-hash-large"}}
    assert result.manifest.id == take_snapshot(src, BlobStore(tmp_path / "serial"), workers=1).manifest.id
    monkeypatch.setattr(snapshot_hash, "LANE_MIN_BYTES", 1 << 40)  # too little in large files: one thread
    threads["large"].clear()
    take_snapshot(src, BlobStore(tmp_path / "little"))
    assert threads["large"] == {threading.current_thread().name}


@pytest.mark.parametrize("workers", WORKERS)
def test_an_error_in_a_large_file_before_a_small_ones_is_the_one_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int | None
) -> None:
    """Both lanes (or batches) fail: the error raised is the one of the file first in path order, a large one
    here (fault injection: an unreadable file as root, who reads every file, is made by refusing its open)."""
    src = tmp_path / "src"
    _tree(src)
    failing = {"data/c.bin", "pkg2/m10.py"}
    real_open = snapshot_hash._open

    def refuse(rel: str, path: str) -> object:
        if rel in failing:
            raise snapshot_hash._read_error(rel, OSError(errno.EACCES, os.strerror(errno.EACCES)))
        return real_open(rel, path)

    monkeypatch.setattr(snapshot_hash, "_open", refuse)
    with pytest.raises(SnapshotError, match=r"^cannot read data/c\.bin: Permission denied"):
        take_snapshot(src, BlobStore(tmp_path / "store"), workers=workers)
    failing.discard("data/c.bin")
    with pytest.raises(SnapshotError, match=r"^cannot read pkg2/m10\.py: Permission denied"):
        take_snapshot(src, BlobStore(tmp_path / "store"), workers=workers)


def test_ctrl_c_in_the_small_file_lane_stops_the_large_file_lane_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt (injected: no real signal lands on a chosen file) reaches the caller once the large-file
    thread has stopped, with no manifest recorded and no blob under a wrong name."""
    src = tmp_path / "src"
    _tree(src)
    real_open = snapshot_hash._open

    def interrupted(rel: str, path: str) -> object:
        if rel == "pkg3/m00.py":
            raise KeyboardInterrupt
        return real_open(rel, path)

    monkeypatch.setattr(snapshot_hash, "_open", interrupted)
    store = BlobStore(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        take_snapshot(src, store)
    assert not [t for t in threading.enumerate() if t.name == "mltrain-hash-large"]
    assert not any((store.root / "manifests").glob("*"))
    _store_is_sound(store)


@pytest.mark.parametrize("cores", [1, 2, snapshot_hash.POOL_MIN_CORES, 16])
def test_the_default_pool_is_sized_to_the_cores_and_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int
) -> None:
    """The sizing rule, for machines this one is not (the core count is the one thing faked)."""
    monkeypatch.setattr(snapshot_hash, "usable_cores", lambda: cores)
    jobs = [("", "", 10)] * 421
    expected = min(cores, snapshot_hash.POOL_MAX) if cores >= snapshot_hash.POOL_MIN_CORES else 1
    assert snapshot_hash.pool_size(jobs) == expected
    assert snapshot_hash.pool_size(jobs[: snapshot_hash.POOL_MIN_FILES - 1]) == 1  # little work stays serial
    assert snapshot_hash.pool_size([("", "", snapshot_hash.POOL_MIN_BYTES)]) == expected  # but not little data
    src = tmp_path / "src"
    _tree(src)
    default = take_snapshot(src, BlobStore(tmp_path / "default"))
    assert default.manifest.id == take_snapshot(src, BlobStore(tmp_path / "one"), workers=1).manifest.id


def _delete_after_walk(monkeypatch: pytest.MonkeyPatch, doomed: list[Path]) -> None:
    """Fault injection: delete real files in the window between the walk and the reads."""
    real_walk = snapshot_module.walk

    def walk_then_delete(*args: object, **kwargs: object) -> object:
        walked = real_walk(*args, **kwargs)  # type: ignore[arg-type]
        for path in doomed:
            path.unlink(missing_ok=True)
        return walked

    monkeypatch.setattr(snapshot_module, "walk", walk_then_delete)


@pytest.mark.parametrize("workers", WORKERS)
def test_files_vanishing_on_any_thread_are_skipped_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int | None
) -> None:
    src = tmp_path / "src"
    _tree(src)
    doomed = [src / "pkg0" / "m05.py", src / "pkg3" / "m69.py", src / "data" / "b.bin"]
    _delete_after_walk(monkeypatch, doomed)
    result = take_snapshot(src, BlobStore(tmp_path / "store"), workers=workers)
    monkeypatch.undo()
    assert result.warnings == tuple(
        sorted(f"skipped {p.relative_to(src)}: it was deleted or replaced while the snapshot was taken" for p in doomed)
    )
    assert result.manifest.id == take_snapshot(src, BlobStore(tmp_path / "after"), workers=1).manifest.id


@pytest.mark.parametrize("workers", WORKERS)
def test_a_read_error_on_any_thread_is_the_first_files_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int | None
) -> None:
    """An I/O error (which no real disk here produces on demand: fault injection) in two files of different
    batches: the error is the one a serial snapshot meets first, and the store holds no blob under a wrong name."""
    src = tmp_path / "src"
    _tree(src)
    failing = {"pkg2/m10.py", "pkg5/m60.py"}
    real_read = snapshot_hash._read

    def read(rel: str, fd: int, n: int) -> bytes:
        if rel in failing:
            raise snapshot_hash._read_error(rel, OSError(errno.EIO, os.strerror(errno.EIO)))
        return real_read(rel, fd, n)

    monkeypatch.setattr(snapshot_hash, "_read", read)
    store = BlobStore(tmp_path / "store")
    with pytest.raises(SnapshotError) as caught:
        take_snapshot(src, store, workers=workers)
    message = str(caught.value)
    assert message.startswith("cannot read pkg2/m10.py: Input/output error (fix its permissions or add ")
    assert "\n" not in message
    _store_is_sound(store)
    assert not any((store.root / "manifests").glob("*"))  # no snapshot was recorded


def test_pooled_snapshot_results_are_in_path_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    result: SnapshotResult = take_snapshot(src, BlobStore(tmp_path / "store"), workers=5)
    paths = [e.path for e in result.manifest.entries]
    assert paths == sorted(paths)
    store = BlobStore(tmp_path / "store")
    for entry in result.manifest.entries:
        if entry.link is None:
            assert store.path(entry.digest).read_bytes() == (src / entry.path).read_bytes()
