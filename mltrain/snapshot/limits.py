"""Preflight: refuse an oversized snapshot before reading a byte, and say what to ignore.

The usual cause is data or checkpoints living in the source directory, so
the error names the biggest directories and files with the exact
``.mltrainignore`` line that drops each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from mltrain.errors import SnapshotError
from mltrain.snapshot.walk import Found, WalkResult, ignore_hint, show

if TYPE_CHECKING:
    from mltrain.config.schema import SnapshotConfig

SHOWN: Final = 3
DRILL_SHARE: Final = 0.5
"""Follow a directory into a subdirectory holding at least this share of it."""


@dataclass(frozen=True)
class SnapshotLimits:
    max_files: int = 200_000
    max_bytes: int = 5 * 1024**3
    allow_large_root: bool = False
    """Allow a source directory that is ``/``, a mount point, or (holds) the home directory."""

    @classmethod
    def of(cls, config: SnapshotConfig) -> SnapshotLimits:
        """The limits a run's ``snapshot`` settings (:class:`mltrain.config.schema.SnapshotConfig`) ask for."""
        return cls(max_files=config.max_files, max_bytes=config.max_bytes,
                   allow_large_root=config.allow_large_root)


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def check_limits(walked: WalkResult, limits: SnapshotLimits, root: str) -> None:
    """Raise a one-line :class:`SnapshotError` if the walked files exceed ``limits``."""
    count = len(walked.rels)
    total = sum(walked.sizes)
    if count <= limits.max_files and total <= limits.max_bytes:
        return
    files = walked.files
    by_bytes = total > limits.max_bytes
    biggest = ", ".join(
        f"{show(rel)}{'/' if is_dir else ''} {human(size) if by_bytes else _files(n)} ({ignore_hint(rel, is_dir)})"
        for rel, is_dir, size, n in _largest(files, by_bytes)
    )
    if by_bytes:
        what, knob = f"{human(total)} over snapshot.max_bytes={human(limits.max_bytes)}", "snapshot.max_bytes"
    else:
        what, knob = f"{count:,} files over snapshot.max_files={limits.max_files:,}", "snapshot.max_files"
    raise SnapshotError(f"snapshot of {show(root)} is too large ({what}); largest: {biggest}; or raise {knob}")


def _files(n: int) -> str:
    return "1 file" if n == 1 else f"{n:,} files"


class _Entry(NamedTuple):
    rel: str
    is_dir: bool
    bytes: int
    files: int


def _largest(files: Sequence[Found], by_bytes: bool) -> list[_Entry]:
    """The biggest top-level entries, then the deepest directory that still holds most of the
    biggest one (when ``src/`` holds everything, ``src/data/`` is the news)."""

    def weight(entry: _Entry) -> int:
        return entry.bytes if by_bytes else entry.files

    ranked = _rank(files, "", weight)
    entry, deepest = ranked[0], None
    while entry.is_dir:
        prefix = entry.rel + "/"
        inner = _rank([f for f in files if f[0].startswith(prefix)], prefix, weight)[0]
        if not inner.is_dir or weight(inner) < DRILL_SHARE * weight(entry):
            break
        entry = deepest = inner
    return [*ranked[:SHOWN], deepest] if deepest is not None else ranked[:SHOWN]


def _rank(files: Sequence[Found], prefix: str, weight: Callable[[_Entry], int]) -> list[_Entry]:
    """Entries one level below ``prefix``, heaviest first."""
    sizes: dict[tuple[str, bool], list[int]] = defaultdict(lambda: [0, 0])
    for rel, size, *_ in files:
        slash = rel.find("/", len(prefix))
        key = (rel[:slash], True) if slash >= 0 else (rel, False)
        sizes[key][0] += size
        sizes[key][1] += 1
    return sorted((_Entry(rel, d, b, n) for (rel, d), (b, n) in sizes.items()), key=weight, reverse=True)
