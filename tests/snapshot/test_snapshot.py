"""take_snapshot: what goes in, how it is stored, what is refused, and what is never re-read."""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mltrain.snapshot.blobstore as blobstore
import mltrain.snapshot.hashing as snapshot_hash
import mltrain.snapshot.inventory as inventory_module
from mltrain.errors import SnapshotError, SourceError
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.manifest import hash_bytes
from mltrain.snapshot.take import FileEntry, Manifest, SnapshotLimits, SnapshotResult, take_snapshot


def write(root: Path, rel: str | bytes, data: bytes = b"x", mode: int | None = None) -> Path:
    path = Path(os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(rel))))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    return path


def age(root: Path, seconds: float = 3600) -> None:
    """Make every file look old, so the stat cache may trust it (see the racy-git guard)."""
    past = time.time() - seconds
    for folder, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(folder, name), (past, past), follow_symlinks=False)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write(root, "train.py", b"print('hi')\n")
    write(root, "run.sh", b"#!/bin/sh\n", mode=0o755)
    write(root, "pkg/__init__.py", b"")
    write(root, "pkg/model.py", b"W = 1\n")
    write(root, "data/table.csv", b"a,b\n1,2\n")
    return root


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "ws" / "blobs")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "ws" / "cache"


@pytest.fixture
def no_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail the test if any file content is read; yields the list of attempted reads."""
    attempted: list[str] = []

    def refuse(jobs: list[snapshot_hash.Job], *args: object, **kwargs: object) -> object:
        attempted.extend(rel for rel, _, _ in jobs)
        if jobs:
            raise AssertionError(f"read {jobs}")
        return []

    monkeypatch.setattr(inventory_module, "hash_files", refuse)
    yield attempted


def paths(result: SnapshotResult) -> list[str]:
    return [e.path for e in result.manifest.entries]


def blob_files(store: BlobStore) -> list[str]:
    root = store.root
    return sorted(
        d + n for d in os.listdir(root) if len(d) == 2 for n in os.listdir(root / d)
    ) if root.exists() else []


# ------------------------------------------------------------------ contents
def test_manifest_lists_every_file_with_mode_size_digest(src: Path, store: BlobStore) -> None:
    result = take_snapshot(src, store)
    by_path = {e.path: e for e in result.manifest.entries}
    assert sorted(by_path) == ["data/table.csv", "pkg/__init__.py", "pkg/model.py", "run.sh", "train.py"]
    assert paths(result) == sorted(paths(result))
    assert by_path["run.sh"].mode == 0o755
    assert by_path["train.py"].mode == 0o644
    assert by_path["train.py"].size == len(b"print('hi')\n")
    assert by_path["train.py"].digest == hash_bytes(b"print('hi')\n")
    assert result.manifest.algorithm == "blake3"
    assert result.files == 5
    assert result.bytes == result.manifest.total_bytes == sum(e.size for e in by_path.values())
    assert result.bytes_new == result.bytes
    for entry in result.manifest.entries:
        assert store.path(entry.digest).read_bytes() == (src / entry.path).read_bytes()
    assert store.has_manifest(result.manifest.id)
    assert store.load_manifest(result.manifest.id) == result.manifest


def test_blobs_are_stored_once_however_many_snapshots_share_them(src: Path, store: BlobStore, tmp_path: Path) -> None:
    write(src, "copy_of_model.py", b"W = 1\n")
    first = take_snapshot(src, store)
    blobs = blob_files(store)
    assert first.bytes_new == first.bytes - len(b"W = 1\n")
    other = tmp_path / "other"
    write(other, "model.py", b"W = 1\n")
    second = take_snapshot(other, store)
    assert second.bytes_new == 0
    write(src, "new.py", b"new")
    third = take_snapshot(src, store)
    assert third.bytes_new == 3
    assert len(blob_files(store)) == len(blobs) + 2 + 1  # new.py + two new manifests


def test_manifest_id_ignores_mtime_umask_and_location(src: Path, store: BlobStore, tmp_path: Path) -> None:
    first = take_snapshot(src, store).manifest.id
    age(src, 5000)
    (src / "train.py").chmod(0o600)
    (src / "run.sh").chmod(0o700)
    moved = tmp_path / "elsewhere"
    src.rename(moved)
    assert take_snapshot(moved, store).manifest.id == first


def test_executable_bit_change_changes_the_manifest(src: Path, store: BlobStore) -> None:
    first = take_snapshot(src, store).manifest
    (src / "train.py").chmod(0o755)
    second = take_snapshot(src, store).manifest
    assert second.id != first.id
    assert {e.path: e.mode for e in second.entries}["train.py"] == 0o755


def test_source_dir_must_exist(tmp_path: Path, store: BlobStore) -> None:
    with pytest.raises(SnapshotError, match="does not exist"):
        take_snapshot(tmp_path / "missing", store)
    write(tmp_path, "file")
    with pytest.raises(SourceError, match="is not a directory"):
        take_snapshot(tmp_path / "file", store)


# ------------------------------------------------------------------ exclusions
def test_always_excluded_directories(src: Path, store: BlobStore) -> None:
    write(src, ".git/HEAD", b"ref")
    write(src, ".mltrain/runs.db", b"db")
    write(src, "pkg/__pycache__/model.cpython-311.pyc", b"pyc")
    write(src, "venv/pyvenv.cfg", b"home = /usr")
    write(src, "venv/lib/site.py", b"")
    write(src, ".mltrainignore", b"!venv/\n!__pycache__/\n")
    result = take_snapshot(src, store)
    assert not [p for p in paths(result) if p.startswith((".git/", ".mltrain/", "venv/")) or "__pycache__" in p]
    assert ".mltrainignore" in paths(result)


def test_root_itself_may_hold_pyvenv_cfg(tmp_path: Path, store: BlobStore) -> None:
    write(tmp_path / "proj", "pyvenv.cfg", b"")
    write(tmp_path / "proj", "a.py", b"")
    assert paths(take_snapshot(tmp_path / "proj", store)) == ["a.py", "pyvenv.cfg"]


def test_workspace_inside_source_is_never_snapshotted(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write(root, "a.py")
    store = BlobStore(root / "ws" / "blobs")
    take_snapshot(root, store, cache_dir=root / "ws" / "cache")
    again = take_snapshot(root, store, cache_dir=root / "ws" / "cache")
    assert paths(again) == ["a.py"]


def test_secret_files_are_excluded_with_a_warning_each(src: Path, store: BlobStore) -> None:
    write(src, ".env", b"TOKEN=1")
    write(src, "certs/server.pem", b"---")
    write(src, ".ssh/id_ed25519", b"key")
    write(src, "notes.txt", b"")
    result = take_snapshot(src, store)
    assert not {".env", "certs/server.pem", ".ssh/id_ed25519"} & set(paths(result))
    assert "notes.txt" in paths(result)
    assert len(result.warnings) == 3
    assert all("\n" not in w for w in result.warnings)
    assert "excluded secret file .env (add '!/.env' to .mltrainignore to include it)" in result.warnings
    assert "excluded secret directory .ssh/ (add '!/.ssh/' to .mltrainignore to include it)" in result.warnings
    assert any("certs/server.pem" in w for w in result.warnings)


def test_secret_already_ignored_by_gitignore_is_not_warned_about(src: Path, store: BlobStore) -> None:
    write(src, ".env", b"TOKEN=1")
    write(src, ".gitignore", b".env\n")
    result = take_snapshot(src, store)
    assert ".env" not in paths(result)
    assert result.warnings == ()


def test_mltrainignore_opts_a_secret_back_in(src: Path, store: BlobStore) -> None:
    write(src, ".env.example", b"TOKEN=")
    write(src, ".env", b"TOKEN=1")
    write(src, ".mltrainignore", b"!.env.example\n")
    result = take_snapshot(src, store)
    assert ".env.example" in paths(result)
    assert ".env" not in paths(result)
    assert [w for w in result.warnings if ".env.example" in w] == []


def test_gitignore_and_mltrainignore_apply(src: Path, store: BlobStore) -> None:
    write(src, ".gitignore", b"data/\n*.log\n")
    write(src, "train.log", b"")
    write(src, "keep.log", b"")
    write(src, ".mltrainignore", b"!keep.log\n")
    result = take_snapshot(src, store)
    assert "keep.log" in paths(result)
    assert "train.log" not in paths(result)
    assert not [p for p in paths(result) if p.startswith("data/")]


def test_fifo_and_socket_are_skipped_with_warnings(src: Path, store: BlobStore) -> None:
    os.mkfifo(src / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    short = Path("/tmp") / f"mltrain-test-{os.getpid()}"
    short.mkdir(exist_ok=True)
    try:
        sock.bind(str(short / "s"))  # a socket path must be short; then move it into the tree
        sock.close()
        os.rename(short / "s", src / "sock")
        result = take_snapshot(src, store)
    finally:
        sock.close()
        for leftover in short.iterdir():
            leftover.unlink()
        short.rmdir()
    assert "pipe" not in paths(result) and "sock" not in paths(result)
    assert "skipped FIFO pipe (a snapshot holds only regular files and symlinks)" in result.warnings
    assert any(w.startswith("skipped socket sock") for w in result.warnings)


# ------------------------------------------------------------------ symlinks
def test_symlinks_inside_the_tree_are_kept_as_links(src: Path, store: BlobStore) -> None:
    (src / "link.py").symlink_to("pkg/model.py")
    (src / "pkg" / "up").symlink_to("..")
    (src / "dangling").symlink_to("not/there")
    result = take_snapshot(src, store)
    by_path = {e.path: e for e in result.manifest.entries}
    link = by_path["link.py"]
    assert link.link == "pkg/model.py"
    assert link.mode == 0o777
    assert link.size == len(b"pkg/model.py")
    assert link.digest == hash_bytes(b"pkg/model.py")
    assert by_path["pkg/up"].link == ".."
    assert by_path["dangling"].link == "not/there"
    assert not [p for p in paths(result) if p.startswith("pkg/up/")]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("../outside.txt", "symlink escape points outside the source directory (../outside.txt)"),
        ("/etc/passwd", "symlink escape has an absolute target /etc/passwd; make it relative"),
        ("sub/../../x", "points outside the source directory"),
    ],
)
def test_symlink_leaving_the_tree_is_an_error_naming_it(
    src: Path, store: BlobStore, target: str, message: str
) -> None:
    (src / "escape").symlink_to(target)
    with pytest.raises(SnapshotError) as info:
        take_snapshot(src, store)
    assert message in str(info.value)
    assert "add '/escape' to .mltrainignore" in str(info.value)
    assert "\n" not in str(info.value)


def test_symlink_through_a_linked_directory_that_leaves_is_an_error(src: Path, store: BlobStore) -> None:
    (src / "pkg" / "up").symlink_to("..")
    (src / "sneaky").symlink_to("pkg/up/pkg/up/..")  # lexically pkg/up/pkg: inside; resolved: src/..
    with pytest.raises(SnapshotError, match="symlink sneaky resolves outside the source directory"):
        take_snapshot(src, store)


def test_symlink_loop_is_reported_not_a_hang(src: Path, store: BlobStore) -> None:
    (src / "a").symlink_to("b")
    (src / "b").symlink_to("a")
    with pytest.raises(SnapshotError, match="symlink a is part of a symlink loop"):
        take_snapshot(src, store)


def test_symlink_to_an_excluded_file_warns(src: Path, store: BlobStore) -> None:
    write(src, ".gitignore", b"*.bin\n")
    write(src, "weights.bin", b"w")
    (src / "latest").symlink_to("weights.bin")
    result = take_snapshot(src, store)
    assert "symlink latest points to weights.bin, which is not in the snapshot" in result.warnings


# ------------------------------------------------------------------ odd names
ODD_NAMES = ["new\nline.py", "tab\there", "ünïcödé.py", "sp ace ", "-dash", "back\\slash"]


def test_odd_file_names_survive_manifest_json(src: Path, store: BlobStore) -> None:
    raw = os.fsdecode(b"latin1-\xe9t\xe9.txt")
    for name in [*ODD_NAMES, raw]:
        write(src, name, name.encode("utf-8", "surrogateescape"))
    (src / "link-to-raw").symlink_to(raw)
    result = take_snapshot(src, store)
    assert set(ODD_NAMES) | {raw, "link-to-raw"} <= set(paths(result))
    text = result.manifest.to_json()
    text.encode("utf-8")  # valid UTF-8 whatever the names
    assert json.loads(text)["version"] == 1
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    again = Manifest.from_json(text)
    assert again == result.manifest
    assert again.id == result.manifest.id
    assert {e.path: e.link for e in again.entries}["link-to-raw"] == raw


def test_undecodable_name_in_warnings_stays_one_line(src: Path, store: BlobStore) -> None:
    write(src, b".env\n\xff", b"secret")
    result = take_snapshot(src, store)
    assert len(result.warnings) == 1
    assert "\n" not in result.warnings[0]
    assert "\\n" in result.warnings[0]


# ------------------------------------------------------------------ errors
def test_unreadable_file_is_an_error_naming_it(src: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def deny(path: str, flags: int, *args: int, **kwargs: object) -> int:
        if os.fspath(path).endswith("model.py"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("mltrain.snapshot.hashing.os.open", deny)
    with pytest.raises(SnapshotError) as info:
        take_snapshot(src, store)
    assert str(info.value) == (
        "cannot read pkg/model.py: Permission denied "
        "(fix its permissions or add '/pkg/model.py' to .mltrainignore)"
    )


def test_unreadable_directory_is_an_error_naming_it(
    src: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def deny(path: str, flags: int, *args: int, **kwargs: object) -> int:
        if os.fspath(path).endswith("/pkg") and flags & os.O_DIRECTORY:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("mltrain.snapshot.walk.os.open", deny)
    with pytest.raises(SnapshotError, match=r"cannot read directory pkg/: Permission denied .*'/pkg/'"):
        take_snapshot(src, store)


def _full_after(writes: int) -> Callable[[int, bytes | bytearray | memoryview], None]:
    """The store's one write function, on a disk that fills after ``writes`` writes."""
    real = blobstore._write_all
    calls = {"n": 0}

    def fill_up(fd: int, data: bytes | bytearray | memoryview) -> None:
        calls["n"] += 1
        if calls["n"] > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    return fill_up


def test_disk_full_leaves_store_intact(src: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    write(src, "big.bin", os.urandom(3 << 20))
    real = blobstore._write_all
    fill_up = _full_after(2)

    def no_room(*_args: object) -> int:  # the kernel's copy of a large file runs out of room too
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_copy = os.copy_file_range
    monkeypatch.setattr(blobstore, "_write_all", fill_up)
    monkeypatch.setattr(blobstore.os, "copy_file_range", no_room)
    with pytest.raises(SnapshotError) as info:
        take_snapshot(src, store)
    assert "\n" not in str(info.value) and "No space left on device" in str(info.value)
    assert os.listdir(store.root / "tmp") == []
    assert not (store.root / "manifests").exists()
    for name in blob_files(store):
        assert hash_bytes(store.path(name).read_bytes()) == name
    monkeypatch.setattr(blobstore, "_write_all", real)
    monkeypatch.setattr(blobstore.os, "copy_file_range", real_copy)
    result = take_snapshot(src, store)
    assert store.load_manifest(result.manifest.id) == result.manifest


# ------------------------------------------------------------------ preflight
def test_too_many_files_is_refused_before_reading(src: Path, store: BlobStore, no_reads: list[str]) -> None:
    for i in range(30):
        write(src, f"data/shards/part{i:02}.csv", b"1")
    with pytest.raises(SnapshotError) as info:
        take_snapshot(src, store, limits=SnapshotLimits(max_files=20))
    message = str(info.value)
    assert "\n" not in message
    assert "35 files over snapshot.max_files=20" in message
    assert "data/ 31 files (add '/data/' to .mltrainignore)" in message
    assert "data/shards/ 30 files (add '/data/shards/' to .mltrainignore)" in message
    assert no_reads == []
    assert not store.root.exists()


def test_too_many_bytes_names_largest_dirs_and_files(src: Path, store: BlobStore, no_reads: list[str]) -> None:
    write(src, "checkpoints/model.ckpt", b"0" * 3000)
    write(src, "big file [1].bin", b"0" * 2000)
    with pytest.raises(SnapshotError) as info:
        take_snapshot(src, store, limits=SnapshotLimits(max_bytes=1000))
    message = str(info.value)
    assert "\n" not in message
    assert "over snapshot.max_bytes=1000 B" in message
    assert "checkpoints/ 2.9 KiB (add '/checkpoints/' to .mltrainignore)" in message
    assert "big file [1].bin 2.0 KiB (add '/big file \\[1\\].bin' to .mltrainignore)" in message
    assert message.index("checkpoints/") < message.index("big file")
    assert no_reads == []


def test_suggested_ignore_line_does_drop_the_path(src: Path, store: BlobStore) -> None:
    write(src, "big file [1].bin", b"0" * 2000)
    with pytest.raises(SnapshotError, match=r"add '(.*?)' to \.mltrainignore") as info:
        take_snapshot(src, store, limits=SnapshotLimits(max_bytes=1000))
    line = str(info.value).split("add '")[1].split("'")[0]
    write(src, ".mltrainignore", (line + "\n").encode())
    assert "big file [1].bin" not in paths(take_snapshot(src, store, limits=SnapshotLimits(max_bytes=1000)))


# ------------------------------------------------------------------ dry run
def test_dry_run_writes_nothing_to_the_store(src: Path, store: BlobStore) -> None:
    planned = take_snapshot(src, store, dry_run=True)
    assert not store.root.exists()
    assert planned.bytes_new == planned.bytes
    real = take_snapshot(src, store)
    assert real.manifest.id == planned.manifest.id
    listing = blob_files(store)
    write(src, "extra.py", b"12345")
    planned = take_snapshot(src, store, dry_run=True)
    assert planned.bytes_new == 5
    assert blob_files(store) == listing
    assert not store.has_manifest(planned.manifest.id)


def test_dry_run_with_cache_then_real_snapshot_stores_everything(
    src: Path, store: BlobStore, cache: Path
) -> None:
    age(src)
    take_snapshot(src, store, cache_dir=cache, dry_run=True)
    result = take_snapshot(src, store, cache_dir=cache)
    assert result.bytes_new == result.bytes
    for entry in result.manifest.entries:
        assert store.has(entry.digest)


def test_dry_run_uses_and_fills_the_stat_cache(src: Path, store: BlobStore, cache: Path) -> None:
    age(src)
    first = take_snapshot(src, store, cache_dir=cache, dry_run=True)
    with pytest.MonkeyPatch.context() as mp:
        read: list[str] = []

        def spy(jobs: list[snapshot_hash.Job], *args: object, **kwargs: object) -> list[snapshot_hash.Hashed]:
            read.extend(rel for rel, _, _ in jobs)
            return snapshot_hash.hash_files(jobs, *args, **kwargs)  # type: ignore[arg-type]

        mp.setattr(inventory_module, "hash_files", spy)
        second = take_snapshot(src, store, cache_dir=cache, dry_run=True)
    assert read == []
    assert second.manifest.id == first.manifest.id
    assert second.bytes_new == first.bytes_new == first.bytes
    assert not store.root.exists()


# ------------------------------------------------------------------ stat cache
def test_unchanged_tree_is_not_read_again(src: Path, store: BlobStore, cache: Path, no_reads: list[str]) -> None:
    age(src)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inventory_module, "hash_files", snapshot_hash.hash_files)
        first = take_snapshot(src, store, cache_dir=cache)
    second = take_snapshot(src, store, cache_dir=cache)
    assert second.manifest == first.manifest
    assert second.manifest.id == first.manifest.id
    assert second.bytes_new == 0
    assert no_reads == []


def test_only_the_changed_file_is_read(
    src: Path, store: BlobStore, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    age(src)
    take_snapshot(src, store, cache_dir=cache)
    write(src, "pkg/model.py", b"W = 2\n")
    read: list[str] = []
    real = snapshot_hash.hash_files

    def spy(jobs: list[snapshot_hash.Job], *args: object, **kwargs: object) -> list[snapshot_hash.Hashed]:
        read.extend(rel for rel, _, _ in jobs)
        return real(jobs, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(inventory_module, "hash_files", spy)
    result = take_snapshot(src, store, cache_dir=cache)
    assert read == ["pkg/model.py"]
    assert result.bytes_new == len(b"W = 2\n")
    assert {e.path: e.digest for e in result.manifest.entries}["pkg/model.py"] == hash_bytes(b"W = 2\n")


def test_racy_change_in_the_same_timestamp_is_still_seen(src: Path, store: BlobStore, cache: Path) -> None:
    """A same-size rewrite that keeps the mtime (as a write within one clock tick would) is caught."""
    path = src / "pkg" / "model.py"
    before = path.stat()
    take_snapshot(src, store, cache_dir=cache)
    path.write_bytes(b"W = 9\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    result = take_snapshot(src, store, cache_dir=cache)
    assert {e.path: e.digest for e in result.manifest.entries}["pkg/model.py"] == hash_bytes(b"W = 9\n")


def test_old_files_are_trusted_by_size_mtime_inode(src: Path, store: BlobStore, cache: Path) -> None:
    age(src)
    take_snapshot(src, store, cache_dir=cache)
    path = src / "pkg" / "model.py"
    path.write_bytes(b"W = 22\n")  # size differs
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    result = take_snapshot(src, store, cache_dir=cache)
    assert {e.path: e.digest for e in result.manifest.entries}["pkg/model.py"] == hash_bytes(b"W = 22\n")


def test_replaced_file_with_same_size_and_mtime_is_seen_by_inode(src: Path, store: BlobStore, cache: Path) -> None:
    age(src)
    take_snapshot(src, store, cache_dir=cache)
    path = src / "pkg" / "model.py"
    old = path.stat()
    keep = src / "pkg" / "keep-inode-busy"
    os.link(path, keep)
    new = src / "pkg" / "model.py.new"
    new.write_bytes(b"W = 7\n")
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(new, path)
    keep.unlink()
    result = take_snapshot(src, store, cache_dir=cache)
    assert {e.path: e.digest for e in result.manifest.entries}["pkg/model.py"] == hash_bytes(b"W = 7\n")


def test_damaged_cache_is_ignored(src: Path, store: BlobStore, cache: Path) -> None:
    age(src)
    first = take_snapshot(src, store, cache_dir=cache)
    for file in (cache / "snapshot").iterdir():
        file.write_bytes(file.read_bytes()[:-10] + b"garbage!!!")
    assert take_snapshot(src, store, cache_dir=cache).manifest.id == first.manifest.id


def _cache_files(cache: Path) -> dict[str, bytes]:
    return {f.suffix: f.read_bytes() for f in (cache / "snapshot").iterdir()}


def _edit(src: Path, data: bytes) -> None:
    write(src, "pkg/model.py", data)
    age(src)  # old enough for the stat cache to trust


def test_one_edit_writes_a_small_delta_the_next_snapshot_trusts(
    src: Path, store: BlobStore, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    age(src)
    take_snapshot(src, store, cache_dir=cache)
    full = _cache_files(cache)[".statcache"]
    _edit(src, b"W = 2\n")
    edited = take_snapshot(src, store, cache_dir=cache)
    files = _cache_files(cache)
    assert files[".statcache"] == full  # the full file is not rewritten for one row
    assert 0 < len(files[".delta"]) < 1024
    read: list[str] = []
    monkeypatch.setattr(inventory_module, "hash_files", lambda jobs, *a, **k: read.extend(j[0] for j in jobs) or [])
    again = take_snapshot(src, store, cache_dir=cache)
    assert read == []  # the delta vouches for the edited file and the manifest
    assert again.manifest.id == edited.manifest.id
    assert again.bytes_new == 0


def test_delta_of_an_older_full_file_or_damaged_is_ignored(
    src: Path, store: BlobStore, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mltrain.snapshot import cache as snapshot_cache
    from mltrain.snapshot.cache import StatCache

    age(src)
    take_snapshot(src, store, cache_dir=cache)
    _edit(src, b"W = 2\n")
    take_snapshot(src, store, cache_dir=cache)
    stale = next((cache / "snapshot").glob("*.delta"))
    stale_bytes = stale.read_bytes()
    with monkeypatch.context() as mp:
        mp.setattr(snapshot_cache, "MAX_DELTA_ROWS", 0)  # too many rows changed: the full file is rewritten
        _edit(src, b"W = 33\n")
        third = take_snapshot(src, store, cache_dir=cache)
    assert not stale.exists()
    stale.write_bytes(stale_bytes)  # a delta written against the previous full file
    loaded = StatCache.load(cache, os.path.realpath(src))
    assert loaded.manifest_id == third.manifest.id
    stale.write_bytes(stale_bytes[:-3] + b"!!!")
    assert StatCache.load(cache, os.path.realpath(src)).manifest_id == third.manifest.id
    assert take_snapshot(src, store, cache_dir=cache).manifest.id == third.manifest.id


def _age_one(path: Path) -> None:
    """Make one file look old (``age`` moves every file's mtime, which touches every row)."""
    past = time.time() - 3600
    os.utime(path, (past, past), follow_symlinks=False)


def _swap_unseen(path: Path, data: bytes, store: BlobStore) -> None:
    """Change a file's bytes in place keeping its stat, and drop its blob and the stored manifests,
    so only a read (not the stat cache) can see the new content."""
    before = path.stat()
    old = path.read_bytes()
    assert len(data) == len(old)
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.unlink(store._blob(hash_bytes(old)))
    for marker in Path(store._manifests).iterdir():
        marker.unlink()


def test_cache_saved_from_the_touched_rows_equals_the_one_saved_from_every_row(
    tmp_path: Path, src: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit saves the stat cache by looking only at the rows it touched; after each kind of edit
    (aged, racy, mode, link text, a blob gone from the store, a dry run) the cache must be exactly the
    one a comparison of every row writes."""
    from mltrain.snapshot.cache import StatCache

    (src / "pkg" / "link.py").symlink_to("model.py")
    age(src)
    edits: list[Callable[[], object]] = [
        lambda: (src / "pkg" / "__init__.py").rename(src / "pkg" / "base.py"),  # new paths: a whole new cache file
        lambda: _age_one(write(src, "pkg/model.py", b"W = 2\n")),
        lambda: write(src, "train.py", b"print('racy')\n"),  # too recent to trust: kept with a never-matching mtime
        lambda: _age_one(src / "train.py"),
        lambda: (src / "run.sh").chmod(0o644),
        lambda: ((src / "pkg" / "link.py").unlink(), (src / "pkg" / "link.py").symlink_to("base.py")),
        lambda: _swap_unseen(src / "data" / "table.csv", b"a,b\n5,6\n", store),  # read again: its blob is gone
        lambda: _age_one(write(src, "pkg/model.py", b"W = 3\n")),
    ]
    saves: list[bool] = []
    original = inventory_module.Inventory._rows_unlike_cache

    def spy(self: inventory_module.Inventory) -> set[int] | None:
        rows = original(self)
        saves.append(rows is not None)
        return rows

    take_snapshot(src, store)  # every blob stored: a dry run's unremembered rows are then not read again
    for step, edit in enumerate([lambda: None, *edits]):
        edit()
        # At first a dry run leaves every row unremembered in the caches the real runs then use;
        # after that, dry runs keep their own caches.
        for dry_run, caches in ((True, ""), (False, "")) if step == 0 else ((False, ""), (True, "-dry")):
            pair = (tmp_path / f"fast{caches}", tmp_path / f"full{caches}")
            with monkeypatch.context() as mp:
                mp.setattr(inventory_module.Inventory, "_rows_unlike_cache", spy)
                ours = take_snapshot(src, store, cache_dir=pair[0], dry_run=dry_run)
            with monkeypatch.context() as mp:
                mp.setattr(inventory_module.Inventory, "_rows_unlike_cache", lambda self: None)
                theirs = take_snapshot(src, store, cache_dir=pair[1], dry_run=dry_run)
            assert ours.manifest.id == theirs.manifest.id, step
            loaded = [StatCache.load(folder, os.path.realpath(src)) for folder in pair]
            assert loaded[0].columns == loaded[1].columns, (step, dry_run)
            assert loaded[0].manifest_id == loaded[1].manifest_id, (step, dry_run)
    assert saves.count(True) >= len(edits)  # the touched-rows path was taken, not just the full one


@pytest.mark.parametrize(
    ("edit", "splices"),
    [
        pytest.param(lambda src: write(src, "data/table.csv", b"a,b\n3,4\n"), True, id="same-size"),
        pytest.param(lambda src: write(src, "train.py", b"print('a longer hello')\n"), True, id="size"),
        pytest.param(lambda src: (src / "pkg" / "model.py").chmod(0o755), True, id="mode"),
        pytest.param(lambda src: write(src, "run.sh", b"#!/bin/bash\n"), True, id="last-entry"),
        pytest.param(lambda src: (write(src, "data/table.csv", b"x"), write(src, "train.py", b"y")), True,
                     id="first+last"),
        pytest.param(lambda src: write(src, b"caf\xc3\xa9 \n\xff.py", b"2"), True, id="odd-name-edited"),
        pytest.param(
            lambda src: ((src / "pkg" / "model.py").unlink(), (src / "pkg" / "model.py").symlink_to("__init__.py")),
            True, id="file-to-link",
        ),
        pytest.param(  # the cache holds no link texts: rebuilt in full
            lambda src: ((src / "link.py").unlink(), write(src, "link.py", b"now a file")), False, id="link-to-file"
        ),
    ],
)
def test_a_manifest_spliced_from_the_last_one_is_byte_for_byte_a_full_build(
    src: Path, store: BlobStore, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    edit: Callable[[Path], object], splices: bool,
) -> None:
    write(src, b"caf\xc3\xa9 \n\xff.py", b"1")
    (src / "link.py").symlink_to("train.py")
    age(src)
    take_snapshot(src, store, cache_dir=cache)
    spliced: list[bool] = []
    real = inventory_module.splice_rows

    def spy(*args: object) -> bytes | None:
        result = real(*args)  # type: ignore[arg-type]
        spliced.append(result is not None)
        return result

    monkeypatch.setattr(inventory_module, "splice_rows", spy)
    edit(src)
    age(src)
    ours = take_snapshot(src, store, cache_dir=cache).manifest
    full = take_snapshot(src, BlobStore(tmp_path / "other"), cache_dir=None).manifest
    assert ours.canonical == full.canonical
    assert ours.id == full.id == hash_bytes(ours.canonical)
    assert store.load_manifest(ours.id) == full
    assert spliced == ([True] if splices else [])


def test_store_losing_blobs_is_noticed_despite_the_cache(src: Path, store: BlobStore, cache: Path) -> None:
    age(src)
    first = take_snapshot(src, store, cache_dir=cache)
    store.gc([], grace_seconds=0)
    assert not store.has_manifest(first.manifest.id)
    again = take_snapshot(src, store, cache_dir=cache)
    assert again.bytes_new == again.bytes
    for entry in again.manifest.entries:
        assert store.has(entry.digest)


def test_hundred_unchanged_snapshots_do_not_grow_the_workspace(src: Path, store: BlobStore, cache: Path) -> None:
    age(src)
    take_snapshot(src, store, cache_dir=cache)

    def size() -> int:
        ws = store.root.parent
        return sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(ws) for n in names)

    before = size()
    for _ in range(100):
        take_snapshot(src, store, cache_dir=cache)
    assert size() == before


# ------------------------------------------------------------------ manifest format
def test_manifest_from_json_refuses_paths_that_escape(tmp_path: Path) -> None:
    good = FileEntry("a.txt", 0o644, 1, "0" * 64)
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b", ""):
        text = Manifest("blake3", (good,)).to_json().replace('"a.txt"', json.dumps(bad))
        with pytest.raises(SnapshotError, match="snapshot manifest is corrupt"):
            Manifest.from_json(text)
    escaping = Manifest("blake3", (FileEntry("l", 0o777, 2, "0" * 64, "../.."),)).to_json()
    with pytest.raises(SnapshotError, match="symlink leaves the tree"):
        Manifest.from_json(escaping)
    clash = Manifest("blake3", (FileEntry("a", 0o644, 1, "0" * 64), FileEntry("a/b", 0o644, 1, "0" * 64))).to_json()
    with pytest.raises(SnapshotError, match="both a file and a directory"):
        Manifest.from_json(clash)
    with pytest.raises(SnapshotError, match="corrupt"):
        Manifest.from_json("not json")


def test_canonical_json_is_stable(src: Path, store: BlobStore) -> None:
    manifest = take_snapshot(src, store).manifest
    doc = json.loads(manifest.to_json())
    assert list(doc) == ["algorithm", "entries", "fields", "version"]
    assert doc["fields"] == ["path", "mode", "size", "digest", "link"]
    assert manifest.to_json() == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert manifest.id == hash_bytes(manifest.to_json().encode())


# ------------------------------------------------------------------ many files, large files, duplicates
def test_many_small_and_large_files_with_duplicates(src: Path, store: BlobStore, tmp_path: Path) -> None:
    contents = {f"many/f{i:03}.txt": os.urandom(100 + i) for i in range(60)}
    contents["many/dup.txt"] = contents["many/f000.txt"]
    contents["big/a.bin"] = os.urandom(snapshot_hash.SMALL + 5)
    contents["big/b.bin"] = os.urandom(3 * snapshot_hash.SMALL)
    contents["big/a-copy.bin"] = contents["big/a.bin"]
    for rel, data in contents.items():
        write(src, rel, data)
    result = take_snapshot(src, store)
    by_path = {e.path: e for e in result.manifest.entries}
    for rel, data in contents.items():
        assert by_path[rel].digest == hash_bytes(data)
        assert by_path[rel].size == len(data)
        assert store.path(hash_bytes(data)).read_bytes() == data
    assert result.bytes_new == result.bytes - len(contents["many/f000.txt"]) - len(contents["big/a.bin"])
    assert os.listdir(store.root / "tmp") == []
    dry = take_snapshot(src, BlobStore(tmp_path / "other"), dry_run=True)
    assert dry.manifest.id == result.manifest.id
    assert dry.bytes_new == result.bytes_new


def test_disk_full_midway_through_many_files(
    src: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(80):
        write(src, f"many/f{i:03}.txt", os.urandom(64))
    monkeypatch.setattr(blobstore, "_write_all", _full_after(20))
    with pytest.raises(SnapshotError, match="No space left on device"):
        take_snapshot(src, store)
    assert os.listdir(store.root / "tmp") == []
    assert not (store.root / "manifests").exists()
    partial = [name for name in blob_files(store) if not store.has(name)]
    assert len(partial) == 1 and store.path(partial[0]).stat().st_size == 0  # the one being written, emptied
    for name in set(blob_files(store)) - set(partial):
        assert hash_bytes(store.path(name).read_bytes()) == name
    monkeypatch.undo()  # room again: the next snapshot replaces the partial blob whole
    take_snapshot(src, store)
    for name in blob_files(store):
        assert store.has(name) and hash_bytes(store.path(name).read_bytes()) == name


def test_large_files_fall_back_to_reading_where_the_kernel_cannot_copy(
    src: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_file_range refused (another file system, an old kernel): the same blob, through the buffer."""
    data = os.urandom(3 * snapshot_hash.SMALL + 7)
    write(src, "big.bin", data)

    def refused(*_args: object) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(blobstore.os, "copy_file_range", refused)
    result = take_snapshot(src, store)
    (entry,) = [e for e in result.manifest.entries if e.path == "big.bin"]
    assert entry.digest == hash_bytes(data) and store.path(entry.digest).read_bytes() == data
    assert os.listdir(store.root / "tmp") == []
