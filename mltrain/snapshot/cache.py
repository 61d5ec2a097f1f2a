"""The stat cache: (size, mtime_ns, inode) -> digest, so unchanged files are never read again.

One file per source directory under ``<cache_dir>/snapshot/``, written
atomically, in :mod:`marshal` format behind a checksum, each column packed
(paths as one text, digests as one fixed-width text, integers as arrays):
loading makes no object per row, so an unchanged tree is recognised by a
few comparisons of whole texts and arrays. A damaged or foreign cache
(an older format included) is simply ignored. When a snapshot
changes only a few rows (a file or two edited), just those rows go to a
small ``.delta`` file beside it, tied to the full file by its checksum:
one edit then writes a few hundred bytes instead of ~1.3 MB for 10k files.

Besides digests it remembers the last manifest stored from this directory
and which entries belonged to it. When every file still matches and that
manifest is still complete in the store, the snapshot is that manifest: no
file is read, no blob is checked, no JSON is rebuilt.

The "racy git" problem: a file written in the same timestamp tick as our
read can change without its mtime changing. Entries whose mtime is within
:data:`RACY_WINDOW_NS` of the moment the walk started are therefore not
cached, and are hashed again next time.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import marshal
import operator
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

from mltrain.hosts.agent import temp_name
from mltrain.snapshot.manifest import hash_bytes
from mltrain.util.sequences import IndexedStrings

logger = logging.getLogger(__name__)

MAGIC: Final = b"mltrain-statcache-3\n"
DELTA_MAGIC: Final = b"mltrain-statcache-delta-2\n"
MAX_DELTA_ROWS: Final = 256
"""Beyond this many rows changed since the full file was written, the full file is written again."""
RACY_WINDOW_NS: Final = 2_000_000_000
"""Covers coarse file-system clocks (ext4 ticks, FAT's 2 s) between the file's mtime and ours."""


IntColumn: TypeAlias = "list[int] | array[int]"
Flags = list[bool] | list[int] | bytearray
"""Per-row yes/no: a list, or the bytes as loaded."""
"""An integer column: a list (from the walk) or an array (as loaded, no int object per row)."""
_INT_TYPES: Final = ("q", "q", "Q", "q")
"""Array type codes of sizes, mtimes (``-1`` marks a racy row), inodes (unsigned 64-bit) and modes."""
_DIGEST_WIDTH: Final = 64
_NO_DIGEST: Final = "-" * _DIGEST_WIDTH
"""How an unknown digest ("") is held in the fixed-width digest text."""


class Columns:
    """Per-file facts, one column per field, in path order.

    Columns rather than a dict of tuples: an unchanged tree is recognised by
    comparing whole columns (in C) instead of 100k lookups. As loaded from the
    cache file they stay packed: the paths as one ``\0``-joined text, the
    digests as one fixed-width hex text, the integers as arrays, ``remembered``
    as bytes. Lists of paths and digests are only made if a caller asks for
    them (the tree changed); an unchanged tree never builds a per-row object
    (100k files: loading took ~45 ms of CPU and freeing ~20 ms, mostly those objects).
    """

    def __init__(
        self,
        rels: list[str] | None = None,
        sizes: IntColumn | None = None,
        mtimes: IntColumn | None = None,
        inodes: IntColumn | None = None,
        modes: IntColumn | None = None,
        digests: list[str] | None = None,
        remembered: Flags | None = None,
        *,
        joined_rels: str | None = None,
        joined_digests: str | None = None,
    ) -> None:
        self._rels = rels if rels is not None or joined_rels is not None else []
        self._joined_rels = joined_rels
        self._digests = digests if digests is not None or joined_digests is not None else []
        self._joined_digests = joined_digests
        self.sizes: IntColumn = sizes if sizes is not None else []
        self.mtimes: IntColumn = mtimes if mtimes is not None else []
        self.inodes: IntColumn = inodes if inodes is not None else []
        self.modes: IntColumn = modes if modes is not None else []
        self.remembered: Flags = remembered if remembered is not None else []
        """The file, as described, belongs to the remembered manifest."""

    @property
    def rels(self) -> list[str]:
        if self._rels is None:
            joined = self._joined_rels
            self._rels = joined.split("\0") if joined else []
        return self._rels

    @property
    def digests(self) -> list[str]:
        if self._digests is None:
            self._digests = list(self.digest_view())
        return self._digests

    def digest_view(self) -> Sequence[str]:
        """The digests without building a list of them when they are still packed."""
        if self._digests is not None:
            return self._digests
        assert self._joined_digests is not None
        return _DigestView(self._joined_digests)

    def joined_rels(self) -> str:
        if self._joined_rels is None:
            self._joined_rels = "\0".join(self.rels)
        return self._joined_rels

    def joined_digests(self) -> str:
        if self._joined_digests is None:
            self._joined_digests = "".join([d or _NO_DIGEST for d in self.digests])
        return self._joined_digests

    def same_paths(self, rels: list[str]) -> bool:
        """``rels`` are this cache's paths, in order (compared as one text when packed)."""
        if self._rels is not None:
            return rels == self._rels
        return len(rels) == len(self.sizes) and "\0".join(rels) == self._joined_rels

    def all_remembered(self) -> bool:
        return all(self.remembered)

    def as_tuple(self) -> tuple[Sequence[Any], ...]:
        return (self.rels, self.sizes, self.mtimes, self.inodes, self.modes, self.digests, self.remembered)

    def fields(self) -> tuple[Sequence[Any], ...]:
        """:meth:`as_tuple` without the paths, and the digests as :meth:`digest_view` (for reading a few rows)."""
        return (self.sizes, self.mtimes, self.inodes, self.modes, self.digest_view(), self.remembered)

    def packed(self) -> tuple[int, str, bytes, bytes, bytes, bytes, str, bytes]:
        """What the cache file holds: the row count and each column packed."""
        columns = (self.sizes, self.mtimes, self.inodes, self.modes)
        ints = tuple(_as_array(code, column).tobytes() for code, column in zip(_INT_TYPES, columns, strict=True))
        sizes, mtimes, inodes, modes = ints
        return (len(self.sizes), self.joined_rels(), sizes, mtimes, inodes, modes, self.joined_digests(),
                bytes(self.remembered))

    @classmethod
    def unpacked(cls, packed: tuple[Any, ...]) -> Columns:
        """The columns of :meth:`packed`'s output, still packed; ValueError if they do not fit together."""
        count, joined_rels, sizes, mtimes, inodes, modes, joined_digests, remembered = packed
        ints = [array(code) for code in _INT_TYPES]
        for column, data in zip(ints, (sizes, mtimes, inodes, modes), strict=True):
            column.frombytes(data)
        if not isinstance(joined_rels, str) or not isinstance(joined_digests, str):
            raise ValueError("bad packed columns")
        if any(len(column) != count for column in ints) or len(remembered) != count:
            raise ValueError("packed columns of unequal length")
        if len(joined_digests) != count * _DIGEST_WIDTH or joined_rels.count("\0") != max(count - 1, 0):
            raise ValueError("packed columns of unequal length")
        sizes_a, mtimes_a, inodes_a, modes_a = ints
        return cls(None, sizes_a, mtimes_a, inodes_a, modes_a, None, bytearray(remembered),
                   joined_rels=joined_rels, joined_digests=joined_digests)

    def patched(self, rows: list[int], picked: list[list[Any]]) -> Columns:
        """These columns (paths shared) with ``rows`` set to ``picked`` (one list per column after the paths)."""
        columns = (self.sizes, self.mtimes, self.inodes, self.modes)
        sizes, mtimes, inodes, modes = (array(code, c) for code, c in zip(_INT_TYPES, columns, strict=True))
        remembered = bytearray(self.remembered)
        for column, values in zip((sizes, mtimes, inodes, modes, remembered), (*picked[:4], picked[5]), strict=True):
            for i, value in zip(rows, values, strict=True):
                column[i] = value
        if self._digests is not None:
            digests: list[str] | None = list(self._digests)
            for i, value in zip(rows, picked[4], strict=True):
                digests[i] = value  # type: ignore[index]
            return Columns(self._rels, sizes, mtimes, inodes, modes, digests, remembered)
        joined = self.joined_digests()
        pieces: list[str] = []
        pos = 0
        for i, value in sorted(zip(rows, picked[4], strict=True)):
            if len(value or _NO_DIGEST) != _DIGEST_WIDTH or not 0 <= i < len(sizes):
                raise ValueError("bad digest in delta")
            pieces += (joined[pos : i * _DIGEST_WIDTH], value or _NO_DIGEST)
            pos = (i + 1) * _DIGEST_WIDTH
        pieces.append(joined[pos:])
        return Columns(self._rels, sizes, mtimes, inodes, modes, None, remembered,
                       joined_rels=self._joined_rels, joined_digests="".join(pieces))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Columns):
            return NotImplemented
        return self.rels == other.rels and self.digests == other.digests and all(
            list(mine) == list(theirs) for mine, theirs in zip(self.as_tuple()[1:], other.as_tuple()[1:], strict=True)
        )

    __hash__ = None  # type: ignore[assignment]


def changed_rows(new: list[int], cached: IntColumn) -> list[int] | None:
    """The rows where a walked integer column differs from a cached one of the same length (``[]``: equal);
    None when the lengths differ or a value does not fit the cached column's type.

    Found by halving the two columns' bytes, compared in C without copies: an edit or two among 100k rows is a
    few dozen comparisons, where comparing row by row in Python took ~5 ms a column.
    """
    if len(new) != len(cached):
        return None
    if not isinstance(cached, array):
        return [i for i, (a, b) in enumerate(zip(new, cached, strict=True)) if a != b]
    try:
        mine = memoryview(array(cached.typecode, new)).cast("B")
    except OverflowError:
        return None
    theirs, width = memoryview(cached).cast("B"), cached.itemsize
    rows: list[int] = []
    spans = [(0, len(new))]
    while spans:
        lo, hi = spans.pop()
        if mine[lo * width : hi * width] == theirs[lo * width : hi * width]:
            continue
        if hi - lo == 1:
            rows.append(lo)
            continue
        mid = (lo + hi) // 2
        spans += ((mid, hi), (lo, mid))
    return rows


class PatchedDigests(IndexedStrings):
    """A column of digests as another (read-only, maybe packed) holds them, with some rows set here.

    What a re-snapshot of a tree with a few changed files works on: the unchanged rows stay in the cache's
    packed text, where a list of 100k digest strings took ~15 ms to make. A row set to None is unknown yet.
    """

    __slots__ = ("_base", "_set")

    def __init__(self, base: Sequence[str], changes: dict[int, str | None]) -> None:
        self._base = base
        self._set = changes

    def __len__(self) -> int:
        return len(self._base)

    def _item(self, index: int) -> str:
        return self._set[index] if index in self._set else self._base[index]  # type: ignore[return-value]

    def __setitem__(self, index: int, value: str | None) -> None:
        if not 0 <= index < len(self._base):
            raise IndexError(index)
        self._set[index] = value

    def __iter__(self) -> Iterator[str]:
        rows = list(self._base)
        for index, value in self._set.items():
            rows[index] = value  # type: ignore[assignment]
        return iter(rows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


def _as_array(code: str, column: IntColumn) -> array[int]:
    return column if isinstance(column, array) and column.typecode == code else array(code, column)


class _DigestView(IndexedStrings):
    """Read-only rows of a fixed-width digest text, each made only when asked for."""

    __slots__ = ("_joined",)

    def __init__(self, joined: str) -> None:
        self._joined = joined

    def __len__(self) -> int:
        return len(self._joined) // _DIGEST_WIDTH

    def _item(self, index: int) -> str:
        digest = self._joined[index * _DIGEST_WIDTH : (index + 1) * _DIGEST_WIDTH]
        return "" if digest == _NO_DIGEST else digest

    def __iter__(self) -> Iterator[str]:
        joined = self._joined
        rows = [joined[i : i + _DIGEST_WIDTH] for i in range(0, len(joined), _DIGEST_WIDTH)]
        if _NO_DIGEST in joined:
            rows = ["" if d == _NO_DIGEST else d for d in rows]
        return iter(rows)


@dataclass
class StatCache:
    """What the previous snapshot of one source directory learned."""

    root: str
    """The source directory (absolute, resolved) this cache describes."""
    path: str | None = None
    """The cache file; None when caching is off."""
    columns: Columns = field(default_factory=Columns)
    manifest_id: str | None = None
    """The last manifest stored from this directory."""
    manifest_count: int = 0
    _index: dict[str, int] | None = None
    _base: Columns | None = None
    """The columns as the full file holds them (before any delta), which a delta is relative to."""
    _base_sum: str = ""
    """Checksum of the full file's payload: a delta names the full file it extends."""
    _delta_rows: frozenset[int] = frozenset()
    """Rows where :attr:`columns` differ from the full file (those the delta file holds)."""

    @property
    def index(self) -> dict[str, int]:
        """Position of each path in :attr:`columns`."""
        if self._index is None:
            self._index = {rel: i for i, rel in enumerate(self.columns.rels)}
        return self._index

    @classmethod
    def load(cls, cache_dir: Path | None, root: str) -> StatCache:
        """The cache for ``root``, or an empty one (no cache dir, first run, damaged file)."""
        if cache_dir is None:
            return cls(root)
        name = hash_bytes(os.fsencode(root))[:32] + ".statcache"
        path = os.path.join(os.fspath(cache_dir), "snapshot", name)
        checked = _read_checked(path, MAGIC)
        if checked is None:
            return cls(root, path)
        payload, checksum = checked
        try:
            cached_root, manifest_id, count, packed = marshal.loads(payload)
            base = Columns.unpacked(packed)
        except (ValueError, EOFError, TypeError):
            return cls(root, path)
        if cached_root != root:
            return cls(root, path)
        cache = cls(root, path, base, manifest_id, count, _base=base, _base_sum=checksum)
        cache._apply_delta()
        return cache

    def save(
        self, columns: Columns, manifest_id: str | None, manifest_count: int, *, touched: Iterable[int] | None = None
    ) -> None:
        """Replace the cache; failure only costs speed next time, so it is logged, not raised.

        ``touched``, when given, vouches that ``columns`` has the same paths as :attr:`columns` and differs
        from it in no other row: the delta is then found from those rows alone, not by comparing every
        row (100k files, one edited file: saving took 42-44 ms, now 4.5-4.7).
        """
        rows = self._changed_rows(columns) if touched is None else self._changed_among(columns, touched)
        self.columns, self.manifest_id, self.manifest_count, self._index = columns, manifest_id, manifest_count, None
        if self.path is None:
            return
        if rows is not None:
            picked = [[column[i] for i in rows] for column in columns.as_tuple()[1:]]
            delta = marshal.dumps((self._base_sum, manifest_id, manifest_count, rows, picked), 2)
            if self._write(self.path + ".delta", DELTA_MAGIC, delta):
                self._delta_rows = frozenset(rows)
            return
        # Version 2: no back-references. Version 4 tracks every object the walk also holds
        # (all of them), which made dumps 2.5x slower (10k files: 6-7 ms against 2.5-3 ms).
        try:
            payload = marshal.dumps((self.root, manifest_id, manifest_count, columns.packed()), 2)
        except OverflowError:  # a stat field beyond 64 bits (an mtime past 2262): such a tree goes uncached
            logger.debug("not caching %s: a stat field does not fit 64 bits", self.root)
            return
        checksum = self._write(self.path, MAGIC, payload)
        if checksum:
            self._base, self._base_sum, self._delta_rows = columns, checksum, frozenset()
            with contextlib.suppress(OSError):
                os.unlink(self.path + ".delta")  # a stale one would not match the new checksum anyway

    def _apply_delta(self) -> None:
        """Lay the delta file, if there is one for this full file, over the columns."""
        assert self.path is not None and self._base is not None
        checked = _read_checked(self.path + ".delta", DELTA_MAGIC)
        if checked is None:
            return
        try:
            base_sum, manifest_id, count, rows, picked = marshal.loads(checked[0])
            if base_sum != self._base_sum:
                return  # written against an older full file
            merged = self._base.patched(rows, picked)
        except (ValueError, EOFError, TypeError, IndexError, OverflowError):
            return
        self.columns, self.manifest_id, self.manifest_count = merged, manifest_id, count
        self._delta_rows = frozenset(rows)

    def _changed_rows(self, columns: Columns) -> list[int] | None:
        """Rows that differ from the full file, when they are few and the paths are the same; else None."""
        base = self._base
        if base is None or not self._base_sum or len(columns.rels) != len(base.rels) or columns.rels != base.rels:
            return None
        changed: set[int] = set()
        for new, old in zip(columns.as_tuple()[1:], base.as_tuple()[1:], strict=True):
            if new != old:
                changed.update(itertools.compress(range(len(new)), map(operator.ne, new, old)))
                if len(changed) > MAX_DELTA_ROWS:
                    return None
        return sorted(changed)

    def _changed_among(self, columns: Columns, touched: Iterable[int]) -> list[int] | None:
        """:meth:`_changed_rows` when only ``touched`` rows can differ from :attr:`columns`: the rows that
        differ from the full file are among those and the ones the delta already holds."""
        base = self._base
        if base is None or not self._base_sum or self.path is None:
            return None
        candidates = self._delta_rows.union(touched)
        if len(candidates) > MAX_DELTA_ROWS:
            return None
        pairs = list(zip(columns.fields(), base.fields(), strict=True))  # rows looked at one by one: kept packed
        return sorted(i for i in candidates if any(new[i] != old[i] for new, old in pairs))

    def _write(self, path: str, magic: bytes, payload: bytes) -> str:
        """Write ``magic``, the payload's checksum and the payload atomically; the checksum, or "" on failure."""
        checksum = hash_bytes(payload)
        tmp = temp_name(path)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(magic + bytes.fromhex(checksum) + payload)
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("could not write the stat cache %s: %s", path, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return ""
        return checksum


def _read_checked(path: str, magic: bytes) -> tuple[bytes, str] | None:
    """(payload, checksum) of a file :meth:`StatCache._write` wrote; None if missing, foreign or damaged."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    head = len(magic)
    payload, checksum = data[head + 32 :], data[head : head + 32].hex()
    if data[:head] != magic or checksum != hash_bytes(payload):
        logger.debug("ignoring damaged stat cache file %s", path)
        return None
    return payload, checksum
