"""A tree that changes while it is snapshotted: never a crash; what vanished is skipped and said, what changed
is read again.

Real races are not deterministic, so each window is also hit on purpose: a
wrapper around the one call that ends the window (the listing, the walk, a
read) makes the real change -- deletes a real file, rewrites it -- at exactly
that moment. That is fault injection: no real component deletes a file
between two given system calls on demand.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import mltrain.snapshot.hashing as snapshot_hash
import mltrain.snapshot.take as snapshot_module
import mltrain.snapshot.walk as snapshot_walk
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.manifest import hash_bytes
from mltrain.snapshot.take import SnapshotResult, take_snapshot


def _tree(root: Path, folders: int = 8, files: int = 40) -> None:
    for d in range(folders):
        for f in range(files):
            path = root / f"d{d}" / f"f{f}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"v = {d}, {f}\n".encode())
    (root / "big.bin").write_bytes(os.urandom(3 << 20))  # the large-file path (copy_file_range)


def _consistent(result: SnapshotResult, store: BlobStore) -> None:
    """Every entry's blob is in the store and holds exactly the bytes its digest names."""
    for entry in result.manifest.entries:
        if entry.link is None:
            assert hash_bytes(store.path(entry.digest).read_bytes()) == entry.digest, entry.path


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "ws" / "blobs")


def test_a_real_writer_and_deleter_never_crash_a_snapshot(tmp_path: Path, store: BlobStore) -> None:
    root = tmp_path / "src"
    _tree(root)
    stop = threading.Event()

    def churn() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            d = root / f"d{rng.randrange(8)}"
            action = rng.randrange(4)
            try:
                if action == 0:
                    shutil.rmtree(d, ignore_errors=True)
                elif action == 1:
                    d.mkdir(exist_ok=True)
                    for f in range(40):
                        (d / f"f{f}.py").write_bytes(f"w = {rng.random()}\n".encode())
                elif action == 2:
                    (d / f"f{rng.randrange(40)}.py").unlink(missing_ok=True)
                else:
                    with open(root / "big.bin", "r+b") as fh:
                        fh.seek(rng.randrange(3 << 20))
                        fh.write(os.urandom(4096))
            except OSError:  # the folder went away under our own writes: the churn goes on
                pass

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    try:
        for _ in range(15):
            result = take_snapshot(root, store, cache_dir=tmp_path / "cache")
            _consistent(result, store)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not writer.is_alive()


# ---------------------------------------------------------------- fault injection at each window
def _after_walk(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Make ``change`` to the real tree in the window after the walk listed and stat'ed it, before any read."""
    real_walk = snapshot_module.walk

    def walk_then_change(*args: object, **kwargs: object) -> snapshot_walk.WalkResult:
        walked = real_walk(*args, **kwargs)  # type: ignore[arg-type]
        change()
        return walked

    monkeypatch.setattr(snapshot_module, "walk", walk_then_change)


def test_a_file_deleted_between_walk_and_read_is_skipped_and_said(
    tmp_path: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "src"
    _tree(root, folders=2, files=3)
    def delete() -> None:
        (root / "d0" / "f1.py").unlink()
        shutil.rmtree(root / "d1")

    _after_walk(monkeypatch, delete)
    result = take_snapshot(root, store, cache_dir=tmp_path / "cache")
    kept = [e.path for e in result.manifest.entries]
    assert "d0/f1.py" not in kept and not any(p.startswith("d1/") for p in kept)
    assert "d0/f0.py" in kept and "big.bin" in kept
    assert "skipped d0/f1.py: it was deleted or replaced while the snapshot was taken" in result.warnings
    assert "skipped d1/f2.py: it was deleted or replaced while the snapshot was taken" in result.warnings
    _consistent(result, store)
    monkeypatch.undo()
    again = take_snapshot(root, store, cache_dir=tmp_path / "cache")  # the stat cache is not confused by it
    assert again.manifest.id == result.manifest.id and not again.warnings


def test_a_file_replaced_by_a_fifo_or_folder_between_walk_and_read(
    tmp_path: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "src"
    _tree(root, folders=1, files=3)
    def replace() -> None:
        (root / "d0" / "f0.py").unlink()
        os.mkfifo(root / "d0" / "f0.py")  # would block a plain open for ever
        (root / "d0" / "f1.py").unlink()
        (root / "d0" / "f1.py").mkdir()

    _after_walk(monkeypatch, replace)
    result = take_snapshot(root, store)
    assert [e.path for e in result.manifest.entries] == ["big.bin", "d0/f2.py"]
    assert sum("deleted or replaced" in w for w in result.warnings) == 2


def test_a_folder_or_file_deleted_between_listing_and_stat(
    tmp_path: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "src"
    _tree(root, folders=3, files=3)
    (root / "d2" / "link.py").symlink_to("f0.py")
    real_scandir = os.scandir
    done: list[str] = []

    def scandir_then_delete(target: int) -> object:
        listing = list(real_scandir(target))  # the window: listed, not yet stat'ed or entered
        names = {entry.name for entry in listing}
        if "d0" in names and not done:
            shutil.rmtree(root / "d0")  # a folder listed in its parent, gone before it is opened
            done.append("d0")
        if "f1.py" in names and "d1" not in done and os.path.samestat(os.fstat(target), os.stat(root / "d1")):
            (root / "d1" / "f1.py").unlink()  # a file listed, gone before its lstat
            done.append("d1")
        if "link.py" in names and "d2" not in done:
            (root / "d2" / "link.py").unlink()  # a link listed, replaced before its readlink
            (root / "d2" / "link.py").write_text("now a file\n")
            done.append("d2")
        return _Listing(listing)

    monkeypatch.setattr(snapshot_walk.os, "scandir", scandir_then_delete)
    result = take_snapshot(root, store)
    monkeypatch.undo()
    kept = [e.path for e in result.manifest.entries]
    assert not any(p.startswith("d0/") for p in kept)
    assert "skipped d0/: it was deleted or replaced while the snapshot was taken" in result.warnings
    assert "d1/f1.py" not in kept and "d1/f0.py" in kept
    assert "skipped d1/f1.py: it was deleted or replaced while the snapshot was taken" in result.warnings
    assert "d2/link.py" not in kept
    assert "skipped d2/link.py: it was deleted or replaced while the snapshot was taken" in result.warnings
    assert set(done) == {"d0", "d1", "d2"}


class _Listing:
    """What ``os.scandir`` returns (a context manager over entries), over a list already read."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self.entries = entries

    def __enter__(self) -> list[os.DirEntry[str]]:
        return self.entries

    def __exit__(self, *exc: object) -> None:
        return None


def _rewriting_reads(path: Path, times: int) -> Callable[..., object]:
    """``os.read`` that rewrites ``path`` (really, with new bytes and a new mtime) during its first ``times`` reads."""
    real_read = os.read
    count = [0]

    def read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if count[0] < times and os.path.samestat(os.fstat(fd), os.stat(path)):
            count[0] += 1
            st = os.stat(path)
            path.write_bytes(f"rewritten {count[0]}\n".encode())
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        return data

    return read


def test_a_file_rewritten_while_read_is_read_again(
    tmp_path: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "src"
    _tree(root, folders=1, files=2)
    target = root / "d0" / "f0.py"
    monkeypatch.setattr(snapshot_hash.os, "read", _rewriting_reads(target, times=1))
    result = take_snapshot(root, store)
    entry = next(e for e in result.manifest.entries if e.path == "d0/f0.py")
    assert entry.digest == hash_bytes(b"rewritten 1\n")  # the second read, not the torn first one
    assert not result.warnings
    _consistent(result, store)


def test_a_file_that_never_settles_is_kept_from_its_last_read_and_said(
    tmp_path: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "src"
    _tree(root, folders=1, files=2)
    target = root / "d0" / "f0.py"
    monkeypatch.setattr(snapshot_hash.os, "read", _rewriting_reads(target, times=snapshot_hash.READ_TRIES))
    result = take_snapshot(root, store)
    assert any(w.startswith("d0/f0.py changed while it was read (3 tries)") for w in result.warnings)
    _consistent(result, store)


def test_a_large_file_rewritten_during_its_copy_is_copied_again(
    tmp_path: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "src"
    _tree(root, folders=1, files=1)
    big = root / "big.bin"
    final = os.urandom(2 << 20)
    real_copy = os.copy_file_range
    rewrites = [0]

    def copy_then_rewrite(src: int, dst: int, count: int, *args: object) -> int:
        copied = real_copy(src, dst, count, *args)  # type: ignore[arg-type]
        if not rewrites[0] and copied and os.path.samestat(os.fstat(src), os.stat(big)):
            rewrites[0] += 1
            st = os.stat(big)
            with open(big, "r+b") as fh:
                fh.write(final)
            os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        return copied

    monkeypatch.setattr(os, "copy_file_range", copy_then_rewrite)
    result = take_snapshot(root, store)
    assert rewrites == [1]
    entry = next(e for e in result.manifest.entries if e.path == "big.bin")
    assert entry.digest == hash_bytes(big.read_bytes())
    assert not result.warnings
    _consistent(result, store)
    # the copy from the torn read was dropped, not stored under its own name
    blobs = {p for p in store.root.rglob("*") if p.is_file() and len(p.relative_to(store.root).parts[0]) == 2}
    assert blobs == {store.path(e.digest) for e in result.manifest.entries} | {store.path(result.manifest.id)}
