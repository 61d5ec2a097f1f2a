"""The walk lists files already in path order, so nothing sorts them afterwards."""

from __future__ import annotations

import os
from pathlib import Path

from mltrain.snapshot.walk import load_rules, walk


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(path.name.encode("utf-8", "surrogateescape"))


def test_walk_order_is_the_sorted_order_of_the_paths(tmp_path: Path) -> None:
    """Folders sort as ``name/``: ``a-b`` and ``a.txt`` come before everything under ``a/``, ``a0`` after."""
    root = tmp_path / "src"
    names = ["a/x.py", "a/b/c.py", "a/b.py", "a-b/y.py", "a.txt", "a0", "a0x/z.py", "A/q.py", "b", "é/f", "z~/g",
             "a/b-c/d", "a/b.c/e", "a/b/.hidden", "sp ace/h", "a/bb"]
    for name in names:
        _touch(root / name)
    os.symlink("a.txt", root / "a+link")
    os.symlink("../b", root / "a" / "link")
    bad = os.fsdecode(b"\xff-undecodable")
    _touch(root / "a" / bad)
    walked = walk(os.fspath(root), load_rules(os.fspath(root)))
    assert walked.rels == sorted([*names, "a+link", "a/link", f"a/{bad}"])
    columns = walked.files
    assert [f[0] for f in columns] == walked.rels
    assert {f[0]: f[5] for f in columns if f[5] is not None} == {"a+link": "a.txt", "a/link": "../b"}
    for rel, size, mtime, inode, mode, link in columns:
        st = os.lstat(root / rel)
        assert (size, mtime, inode) == (st.st_size, st.st_mtime_ns, st.st_ino)
        assert mode == (0o777 if link is not None else 0o644)
