"""The manifest: what a snapshot holds, as one canonical, content-addressed document.

A manifest is the list of files (path, mode, size, content digest, link
target) and nothing machine-specific: no mtimes, owners or absolute paths, so
the same tree gives the same manifest id on every machine. Its id is the
digest of its canonical JSON, which is also the blob the store keeps.

Canonical JSON (``version`` 1): ``{"algorithm":..., "entries":[...],
"fields":[...], "version":1}`` with sorted keys, no spaces, UTF-8, one array
per entry in ``fields`` order. A path or link target that is not valid UTF-8
(POSIX allows any bytes but ``/`` and NUL) is written as ``{"hex": "..."}``
of its raw bytes, so the JSON stays valid UTF-8 for every reader and the
bytes round-trip exactly. In memory such names are ``str`` with surrogate
escapes, the way :func:`os.fsdecode` gives them.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from functools import cached_property
from json.encoder import encode_basestring as _quote
from typing import Any, Final

from blake3 import blake3

from mltrain.errors import SnapshotError

ALGORITHM: Final = "blake3"
FORMAT_VERSION: Final = 1
FIELDS: Final = ("path", "mode", "size", "digest", "link")
FILE_MODE: Final = 0o644
EXEC_MODE: Final = 0o755
LINK_MODE: Final = 0o777
"""Symlinks carry 0o777, the only permission Linux gives a link."""

_HEX: Final = frozenset("0123456789abcdef")


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """The content digest used throughout the store."""
    return blake3(data).hexdigest()


def file_mode(st_mode: int) -> int:
    """Reduce a file's permission bits to git's two cases, so umask and owner never change an id."""
    return EXEC_MODE if st_mode & 0o100 else FILE_MODE


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file (or symlink) of a snapshot."""

    path: str
    """POSIX path relative to the source directory."""
    mode: int
    """0o644 or 0o755 for files, 0o777 for symlinks."""
    size: int
    digest: str
    """Hex content digest; for a symlink, the digest of its target text."""
    link: str | None = None
    """Symlink target text (relative, stays inside the tree) when the entry is a symlink."""


@dataclass(frozen=True)
class Manifest:
    """The snapshot's file list, sorted by path."""

    algorithm: str
    entries: tuple[FileEntry, ...]

    @cached_property
    def canonical(self) -> bytes:
        """The canonical JSON as bytes: what is hashed and what is stored.

        Byte for byte what ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
        ensure_ascii=False)`` gives, written out directly (2.5x faster for 10k entries).
        """
        rows = [
            f"[{_name_json(e.path)},{e.mode},{e.size},{_quote(e.digest)}]"
            if e.link is None
            else f"[{_name_json(e.path)},{e.mode},{e.size},{_quote(e.digest)},{_name_json(e.link)}]"
            for e in self.entries
        ]
        head = f'{{"algorithm":{_quote(self.algorithm)},"entries":['
        tail = f'],"fields":{json.dumps(list(FIELDS), separators=(",", ":"))},"version":{FORMAT_VERSION}}}'
        return (head + ",".join(rows) + tail).encode("utf-8")

    @cached_property
    def id(self) -> str:
        """Content hash of the canonical JSON: equal trees give equal ids on any machine."""
        return hash_bytes(self.canonical)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> str:
        return self.canonical.decode("utf-8")

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate; a manifest that could write outside its checkout is refused."""
        try:
            doc = json.loads(text)
            if doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported manifest version {doc.get('version')!r}")
            algorithm = doc["algorithm"]
            if algorithm != ALGORITHM:
                raise ValueError(f"unsupported hash algorithm {algorithm!r}")
            entries = tuple(_entry_in(row) for row in doc["entries"])
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise SnapshotError(f"snapshot manifest is corrupt ({exc}); take the snapshot again") from None
        check_entries(entries)
        return cls(algorithm, entries)


def check_entries(entries: tuple[FileEntry, ...]) -> None:
    """Refuse anything a checkout could not hold safely: unsorted, duplicate, escaping or clashing paths."""
    previous = ""
    files: set[str] = set()
    for entry in entries:
        problem = _entry_problem(entry)
        if problem is None and entry.path <= previous:
            problem = "entries are not sorted by path or repeat one"
        if problem is None:
            slash = entry.path.find("/")
            while slash > 0:
                if entry.path[:slash] in files:
                    problem = f"{entry.path[:slash]!r} is both a file and a directory"
                    break
                slash = entry.path.find("/", slash + 1)
        if problem is not None:
            raise SnapshotError(f"snapshot manifest is corrupt ({entry.path!r}: {problem}); take the snapshot again")
        files.add(entry.path)
        previous = entry.path


def _entry_problem(entry: FileEntry) -> str | None:
    parts = entry.path.split("/")
    if not entry.path or entry.path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in entry.path:
        return "not a clean relative path"
    if len(entry.digest) != 64 or not _HEX.issuperset(entry.digest):
        return "bad digest"
    if entry.size < 0:
        return "negative size"
    if entry.link is None:
        return None if entry.mode in (FILE_MODE, EXEC_MODE) else f"bad mode {entry.mode:o}"
    if entry.mode != LINK_MODE:
        return f"bad symlink mode {entry.mode:o}"
    if not link_stays_inside(entry.path, entry.link):
        return "symlink leaves the tree"
    return None


def link_stays_inside(path: str, target: str) -> bool:
    """Lexically: does a link at ``path`` with text ``target`` resolve inside the tree?"""
    if not target or target.startswith("/") or "\0" in target:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved != ".." and not resolved.startswith("../")


def _name_json(name: str) -> str:
    if name.isascii():
        return _quote(name)
    value = _name_out(name)
    return _quote(value) if isinstance(value, str) else f'{{"hex":"{value["hex"]}"}}'


def _name_out(name: str) -> str | dict[str, str]:
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return {"hex": name.encode("utf-8", "surrogateescape").hex()}
    return name


def _name_in(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("hex"), str):
        return bytes.fromhex(value["hex"]).decode("utf-8", "surrogateescape")
    raise ValueError(f"bad name {value!r}")


def _entry_in(row: Any) -> FileEntry:
    if not isinstance(row, list) or len(row) not in (4, 5):
        raise ValueError(f"bad entry {row!r}")
    mode, size, digest = row[1], row[2], row[3]
    if not (isinstance(mode, int) and isinstance(size, int) and isinstance(digest, str)):
        raise ValueError(f"bad entry {row!r}")
    return FileEntry(_name_in(row[0]), mode, size, digest, _name_in(row[4]) if len(row) == 5 else None)
