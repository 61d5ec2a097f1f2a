"""Preflight: refuse an oversized snapshot before reading a byte, and say what to ignore.

The usual cause is data or checkpoints living in the source directory, so
the error names the biggest directories and files with the exact
``.mltrainignore`` line that drops each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from mltrain.errors import SnapshotError
from mltrain.snapshot_walk import Found, ignore_hint, show

SHOWN: Final = 3
DRILL_SHARE: Final = 0.5
"""Also list the insides of a directory holding this share of the total (it may be the code itself)."""


@dataclass(frozen=True)
class SnapshotLimits:
    max_files: int = 200_000
    max_bytes: int = 5 * 1024**3


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def check_limits(files: Sequence[Found], total: int, limits: SnapshotLimits, root: str) -> None:
    """Raise a one-line :class:`SnapshotError` if the walked files (``total`` bytes) exceed ``limits``."""
    count = len(files)
    if count <= limits.max_files and total <= limits.max_bytes:
        return
    by_bytes = total > limits.max_bytes
    biggest = ", ".join(
        f"{show(rel)}{'/' if is_dir else ''} {human(size) if by_bytes else _files(n)} ({ignore_hint(rel, is_dir)})"
        for rel, is_dir, size, n in _largest(files, by_bytes)
    )
    what = f"{human(total)} over snapshot.max_bytes={human(limits.max_bytes)}" if by_bytes else (
        f"{count:,} files over snapshot.max_files={limits.max_files:,}"
    )
    raise SnapshotError(
        f"snapshot of {show(root)} is too large ({what}); largest: {biggest}; or raise the limit"
    )


def _files(n: int) -> str:
    return "1 file" if n == 1 else f"{n:,} files"


def _largest(files: Sequence[Found], by_bytes: bool) -> list[tuple[str, bool, int, int]]:
    """The biggest entries (rel, is_dir, bytes, files) at the top, then inside a directory holding the bulk."""
    picks: list[tuple[str, bool, int, int]] = []
    prefix = ""
    members = list(files)
    for depth in range(3):
        sizes: dict[tuple[str, bool], list[int]] = defaultdict(lambda: [0, 0])
        for rel, _, st, _ in members:
            rest = rel[len(prefix) :]
            slash = rest.find("/")
            key = (prefix + rest[:slash], True) if slash >= 0 else (rel, False)
            sizes[key][0] += st.st_size
            sizes[key][1] += 1
        metric = 0 if by_bytes else 1
        ranked = sorted(sizes.items(), key=lambda kv: kv[1][metric], reverse=True)
        picks += [(rel, is_dir, b, n) for (rel, is_dir), (b, n) in ranked[: SHOWN if depth == 0 else 2]]
        (top, is_dir), counts = ranked[0]
        if not is_dir or counts[metric] < DRILL_SHARE * sum(v[metric] for v in sizes.values()):
            break
        prefix = top + "/"
        members = [f for f in members if f[0].startswith(prefix)]
    return picks
