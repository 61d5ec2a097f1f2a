"""The stat cache as loaded stays packed; the snapshots it vouches for must equal ones taken without it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import mltrain.snapshot.inventory as inventory_module
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.cache import Columns, StatCache
from mltrain.snapshot.manifest import Manifest
from mltrain.snapshot.take import take_snapshot
from tests.snapshot.test_snapshot import age


def _write(root: Path, rel: str, data: bytes, *, old: bool = True) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if old:
        past = time.time() - 3600
        os.utime(path, (past, past))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for i in range(30):
        _write(root, f"pkg{i % 3}/m{i}.py", f"x = {i}\n".encode())
    _write(root, "a.txt", b"a")
    (root / "link.py").symlink_to("pkg0/m0.py")
    age(root)
    return root


def test_packed_columns_round_trip_and_compare_equal() -> None:
    columns = Columns(["a", "b/c", "é"], [1, 2, 3], [10, -1, 2**62], [2**64 - 1, 5, 6], [0o644, 0o755, 0o777],
                      ["0" * 64, "", "f" * 64], [True, False, True])
    packed = Columns.unpacked(columns.packed())
    assert packed == columns
    assert packed.rels == ["a", "b/c", "é"]
    assert list(packed.digest_view()) == ["0" * 64, "", "f" * 64]
    assert packed.digest_view()[1] == "" and packed.digest_view()[-1] == "f" * 64
    assert packed.same_paths(["a", "b/c", "é"]) and not packed.same_paths(["a", "b/c"])
    patched = packed.patched([1], [[7], [8], [9], [0o644], ["1" * 64], [True]])
    assert patched.digests == ["0" * 64, "1" * 64, "f" * 64]
    assert list(patched.sizes) == [1, 7, 3] and list(patched.remembered) == [1, 1, 1]
    assert Columns.unpacked(Columns().packed()) == Columns()


EDITS: list[Callable[[Path], object]] = [
    lambda src: None,
    lambda src: _write(src, "pkg1/m1.py", b"x = 'edited'\n"),  # one row: a delta file
    lambda src: None,  # unchanged over the delta
    lambda src: _write(src, "pkg2/m2.py", b"x = 22\n", old=False),  # racy: hashed again next time
    lambda src: _write(src, "pkg2/m2.py", b"x = 23\n", old=False),  # same size, same second
    lambda src: (src / "pkg0" / "m3.py").chmod(0o755),
    lambda src: ((src / "link.py").unlink(), (src / "link.py").symlink_to("pkg1/m1.py")),
    lambda src: _write(src, "new/file.py", b"new"),  # new paths: a whole new cache file
    lambda src: None,
    lambda src: (src / "a.txt").unlink(),
]


def test_cached_snapshots_equal_uncached_ones_after_each_edit(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    cache = tmp_path / "cache"
    built: list[int] = []
    real_build = inventory_module.Inventory.build

    def build(self: inventory_module.Inventory, workers: int | None = None) -> tuple[Manifest, int]:
        built.append(step)
        return real_build(self, workers)

    monkeypatch.setattr(inventory_module.Inventory, "build", build)
    for step, edit in enumerate(EDITS):
        edit(src)
        cached = take_snapshot(src, store, cache_dir=cache).manifest
        if step == 2:  # nothing changed since the delta: the packed cache's manifest, nothing rebuilt
            assert step not in built
        fresh = take_snapshot(src, BlobStore(tmp_path / f"fresh{step}"), cache_dir=None).manifest
        assert cached.id == fresh.id, step
        assert cached.canonical == fresh.canonical, step
        assert cached.entries == fresh.entries, step
        assert store.load_manifest(cached.id).entries == fresh.entries, step
        loaded = StatCache.load(cache, os.path.realpath(src))
        assert loaded.manifest_id == cached.id, step
        assert loaded.columns.rels == [e.path for e in fresh.entries], step


def test_a_stat_field_beyond_64_bits_leaves_the_tree_uncached_not_failed(tmp_path: Path) -> None:
    cache = StatCache.load(tmp_path, "/some/root")
    cache.save(Columns(["a"], [1], [2**63], [1], [0o644], ["0" * 64], [True]), "0" * 64, 1)
    assert StatCache.load(tmp_path, "/some/root").columns == Columns()
    assert not Columns.unpacked(Columns(["a"], [1], [5], [1], [0o644], ["0" * 64], [True]).packed()).same_paths([])


@pytest.mark.parametrize("changed", [[], [0], [99_999], [3, 4, 77_777], list(range(0, 100_000, 997))])
def test_changed_rows_finds_exactly_the_rows_that_differ(changed: list[int]) -> None:
    from array import array

    from mltrain.snapshot.cache import changed_rows

    cached = list(range(100_000))
    walked = list(cached)
    for row in changed:
        walked[row] = -walked[row] - 1
    assert changed_rows(walked, array("q", cached)) == changed
    assert changed_rows(walked, cached) == changed  # an unpacked cache column
    assert changed_rows(walked[:-1], array("q", cached)) is None  # other lengths: no row-by-row answer
    assert changed_rows([2**64, *walked[1:]], array("q", cached)) is None  # beyond the column's type


def test_patched_digests_read_as_the_list_they_stand_for() -> None:
    from mltrain.snapshot.cache import PatchedDigests

    base = [f"{i:064x}" for i in range(10)]
    patched = PatchedDigests(base, {3: None})
    patched[7] = "f" * 64
    expected = [*base[:3], None, *base[4:7], "f" * 64, *base[8:]]
    assert list(patched) == expected and patched == expected and len(patched) == 10
    assert [patched[i] for i in range(-10, 10)] == expected + expected
    assert patched[2:5] == expected[2:5] and base[7] == f"{7:064x}"  # the base is never written
    with pytest.raises(IndexError):
        patched[10] = "0" * 64
