"""materialize: a manifest back into a directory, once per manifest id."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from mltrain.errors import SnapshotError
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.take import materialize, take_snapshot


def write(root: Path, rel: str, data: bytes, mode: int | None = None) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write(root, "train.py", b"print('train')\n")
    write(root, "bin/run.sh", b"#!/bin/sh\necho hi\n", mode=0o755)
    write(root, "bin/empty-tool", b"", mode=0o755)
    write(root, "pkg/__init__.py", b"")
    write(root, "pkg/sub/deep.py", b"deep = True\n")
    write(root, "new\nline.txt", b"odd name")
    (root / "latest").symlink_to("pkg/sub/deep.py")
    (root / "pkg" / "up").symlink_to("..")
    return root


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "ws" / "blobs")


def tree(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    """Every path under root: (kind, content or link text, permission bits)."""
    out: dict[str, tuple[str, bytes | str, int]] = {}
    for folder, dirs, names in os.walk(root):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), 0)
            else:
                out[rel] = ("file", Path(path).read_bytes(), stat.S_IMODE(st.st_mode) & 0o111)
    return out


def test_checkout_reproduces_the_tree(src: Path, store: BlobStore, tmp_path: Path) -> None:
    manifest = take_snapshot(src, store).manifest
    checkout = materialize(manifest, store, tmp_path / "ws" / "checkouts")
    assert checkout == tmp_path / "ws" / "checkouts" / manifest.id
    assert tree(checkout) == tree(src)
    assert (checkout / "latest").read_bytes() == b"deep = True\n"


def test_plain_files_are_hardlinks_and_executables_are_copies(src: Path, store: BlobStore, tmp_path: Path) -> None:
    manifest = take_snapshot(src, store).manifest
    checkout = materialize(manifest, store, tmp_path / "co")
    digests = {e.path: e.digest for e in manifest.entries}
    plain = (checkout / "train.py").stat()
    assert plain.st_ino == store.path(digests["train.py"]).stat().st_ino
    assert stat.S_IMODE(plain.st_mode) == 0o444
    script = (checkout / "bin" / "run.sh").stat()
    assert script.st_ino != store.path(digests["bin/run.sh"]).stat().st_ino
    assert stat.S_IMODE(script.st_mode) == 0o755
    assert stat.S_IMODE(store.path(digests["bin/run.sh"]).stat().st_mode) == 0o444
    assert stat.S_IMODE((checkout / "bin" / "empty-tool").stat().st_mode) == 0o755
    empty = (checkout / "pkg" / "__init__.py").stat()
    assert empty.st_size == 0 and empty.st_nlink == 1


def test_second_call_reuses_the_checkout(src: Path, store: BlobStore, tmp_path: Path) -> None:
    manifest = take_snapshot(src, store).manifest
    first = materialize(manifest, store, tmp_path / "co")
    marker = first / "pkg" / "sub"
    before = marker.stat().st_ino
    second = materialize(manifest, store, tmp_path / "co")
    assert second == first
    assert marker.stat().st_ino == before
    assert sorted(p.name for p in (tmp_path / "co").iterdir()) == [manifest.id]


def test_concurrent_builders_agree(src: Path, store: BlobStore, tmp_path: Path) -> None:
    manifest = take_snapshot(src, store).manifest
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(materialize(manifest, store, tmp_path / "co"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1
    assert sorted(p.name for p in (tmp_path / "co").iterdir()) == [manifest.id]
    assert tree(results[0]) == tree(src)


def test_missing_blob_is_a_clear_error_and_leaves_nothing(src: Path, store: BlobStore, tmp_path: Path) -> None:
    manifest = take_snapshot(src, store).manifest
    victim = next(e for e in manifest.entries if e.path == "train.py")
    store.path(victim.digest).unlink()
    with pytest.raises(SnapshotError, match=r"is incomplete: the content of train.py is missing"):
        materialize(manifest, store, tmp_path / "co")
    assert list((tmp_path / "co").iterdir()) == []


def test_copies_when_a_hardlink_is_refused(
    src: Path, store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = take_snapshot(src, store).manifest

    def cross_device(src_path: object, dst_path: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr("mltrain.snapshot.materialize.os.link", cross_device)
    checkout = materialize(manifest, store, tmp_path / "co")
    assert tree(checkout) == tree(src)
    assert (checkout / "train.py").stat().st_nlink == 1


def test_stale_temp_trees_are_cleaned(src: Path, store: BlobStore, tmp_path: Path) -> None:
    stale = tmp_path / "co" / ".tmp-abandoned"
    (stale / "x").mkdir(parents=True)
    os.utime(stale, (0, 0))
    manifest = take_snapshot(src, store).manifest
    materialize(manifest, store, tmp_path / "co")
    assert not stale.exists()
