"""A large tree is stat'ed by the walk and helper processes together: the same walk, whoever stat'ed a folder.

Real helper processes, real folders. What cannot be had on demand is a file deleted in the instant between
the listing and the helper's ``lstat`` (the deletion is made there, by wrapping :meth:`StatPool.offer`) and
a helper that dies mid-walk (killed here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mltrain.errors import SnapshotError
from mltrain.snapshot import statpool
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.statpool import StatPool
from mltrain.snapshot.take import take_snapshot
from mltrain.snapshot.walk import WalkResult, load_rules, walk
from mltrain.util import cores

FORCE = 10**9
"""An ``expect`` past :data:`statpool.MIN_FILES`: helpers whatever this small tree's size."""


@pytest.fixture(autouse=True)
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-core machine gets no helper; these tests want one wherever they run."""
    monkeypatch.setattr(cores, "usable_cores", lambda: 2)


def _tree(root: Path) -> None:
    """Plain folders (a helper's), and folders the walk keeps to itself (links, ignored names, subfolders)."""
    for d in range(12):
        for f in range(6):
            path = root / f"pkg{d:02d}" / f"mod{f}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# {d} {f}\n" * (d + f))
    (root / "pkg03" / "run.sh").write_text("#!/bin/sh\n")
    (root / "pkg03" / "run.sh").chmod(0o755)
    (root / "mixed" / "sub").mkdir(parents=True)
    (root / "mixed" / "a.py").write_text("a\n")
    (root / "mixed" / "sub" / "b.py").write_text("b\n")
    os.symlink("../pkg00/mod0.py", root / "mixed" / "link.py")
    (root / "zlast").mkdir()
    os.symlink("../mixed/a.py", root / "zlast" / "link.py")
    (root / ".gitignore").write_text("*.log\n")
    (root / "pkg05" / "skip.log").write_text("ignored\n")


def _offers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders helpers took, in order."""
    taken: list[str] = []
    offer = StatPool.offer

    def counted(self: StatPool, fd: int, names: list[str], row: int, rel_dir: str) -> bool:
        took = offer(self, fd, names, row, rel_dir)
        if took:
            taken.append(rel_dir)
        return took

    monkeypatch.setattr(StatPool, "offer", counted)
    return taken


def _same(one: WalkResult, other: WalkResult) -> None:
    assert one.files == other.files
    assert one.link_targets == other.link_targets
    assert one.warnings == other.warnings


def test_a_walk_with_helpers_is_the_walk_without(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    root = os.fspath(tmp_path)
    alone = walk(root, load_rules(root))
    taken = _offers(monkeypatch)
    helped = walk(root, load_rules(root), expect=FORCE)
    assert len(taken) >= 4 and all(rel.startswith("pkg") for rel in taken)  # plain folders only
    _same(helped, alone)
    assert "pkg05/skip.log" not in helped.rels
    assert dict(zip(helped.rels, helped.modes, strict=True))["pkg03/run.sh"] == 0o755


def test_a_small_tree_or_one_core_starts_no_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    taken = _offers(monkeypatch)
    walk(os.fspath(tmp_path), load_rules(os.fspath(tmp_path)), expect=statpool.MIN_FILES - 1)
    monkeypatch.setattr(cores, "usable_cores", lambda: 1)
    walk(os.fspath(tmp_path), load_rules(os.fspath(tmp_path)), expect=FORCE)
    assert taken == []


def test_a_file_deleted_before_its_helper_stats_it_is_left_out_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    root = os.fspath(tmp_path)
    offer = StatPool.offer
    deleted: list[str] = []

    def deleting(self: StatPool, fd: int, names: list[str], row: int, rel_dir: str) -> bool:
        if rel_dir == "pkg04/":  # after the listing, before the helper's lstat
            os.unlink(os.path.join(root, rel_dir, names[1]))
            deleted.append(rel_dir + names[1])
        return offer(self, fd, names, row, rel_dir)

    monkeypatch.setattr(StatPool, "offer", deleting)
    helped = walk(root, load_rules(root), expect=FORCE)
    assert deleted == ["pkg04/mod1.py"]
    assert "pkg04/mod1.py" not in helped.rels
    assert f"skipped {deleted[0]}: it was deleted or replaced while the snapshot was taken" in helped.warnings
    monkeypatch.setattr(StatPool, "offer", offer)
    now = walk(root, load_rules(root))  # the rows after it, links included, still line up
    assert (helped.files, helped.link_targets) == (now.files, now.link_targets)


def test_a_helper_that_dies_costs_only_speed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    root = os.fspath(tmp_path)
    collect = StatPool.collect
    killed: list[int] = []

    def after_a_kill(self: StatPool, where: str, result: WalkResult) -> Any:
        for helper in self._helpers:
            helper.process.kill()
            killed.append(helper.process.wait())
        return collect(self, where, result)

    monkeypatch.setattr(StatPool, "collect", after_a_kill)
    taken = _offers(monkeypatch)
    helped = walk(root, load_rules(root), expect=FORCE)
    assert killed and taken
    _same(helped, walk(root, load_rules(root)))


def test_a_file_that_cannot_be_stated_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An errno other than 'gone' (EIO, say: not to be had from a healthy disk) stops the snapshot in one line."""
    _tree(tmp_path)
    monkeypatch.setattr(statpool, "_stat_again", lambda root, rel: (0, 0, 0, -5))

    def dead(self: StatPool, where: str, result: WalkResult) -> Any:
        for helper in self._helpers:
            helper.process.kill()
            helper.process.wait()
        return collect(self, where, result)

    collect = StatPool.collect
    monkeypatch.setattr(StatPool, "collect", dead)
    with pytest.raises(SnapshotError, match=r"^cannot stat pkg\d\d/mod\d\.py: Input/output error$"):
        walk(os.fspath(tmp_path), load_rules(os.fspath(tmp_path)), expect=FORCE)


def test_a_resnapshot_of_a_large_tree_uses_helpers_and_sees_a_change(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The stat cache's count from the last snapshot is what turns helpers on."""
    src = tmp_path / "src"
    _tree(src)
    store, cache = BlobStore(tmp_path / "blobs"), tmp_path / "cache"
    monkeypatch.setattr(statpool, "MIN_FILES", 10)
    taken = _offers(monkeypatch)
    first = take_snapshot(src, store, cache_dir=cache)
    assert taken == []  # no count yet: no helper
    (src / "pkg07" / "mod2.py").write_text("changed, and longer than it was\n")
    again = take_snapshot(src, store, cache_dir=cache)
    assert taken
    assert again.manifest.id != first.manifest.id
    before = {(e.path, e.digest) for e in first.manifest.entries}
    assert {e.path for e in again.manifest.entries if (e.path, e.digest) not in before} == {"pkg07/mod2.py"}
