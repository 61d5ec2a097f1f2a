"""Extracting a tar stream a job produced (hostile input) into the run's folder, and nowhere else.

Both ways outputs come back as an archive -- the SSH helper's ``pack`` and the
Docker engine's ``get_archive`` -- end here. The stream is parsed by a small
push parser of our own (ustar, pax and GNU long names), not by ``tarfile``:
``tarfile`` reads an extended header of any size into memory before anyone can
look at it, and keeps every member it has seen, so a stream could not be
bounded from outside. Here every byte is counted as it arrives (headers and
skipped members included) and the stream stops, with one line saying why, at:

* ``MLTRAIN_OUTPUTS_MAX_BYTES`` bytes (default 32 GiB; ``512m``, ``64g`` work),
* ``MLTRAIN_OUTPUTS_MAX_FILES`` members (default 200,000),
* an extended header (pax, GNU long name) over 64 KiB, or a malformed header.

What is written, and how (the rules of :mod:`mltrain.util.safefs`):

* every component is opened from the destination's fd with ``O_NOFOLLOW``; a
  folder missing from the stream is made; a component that is a link or a file
  refuses the member (a link planted earlier in the stream is never entered);
* a file is written to a new ``O_EXCL`` file under a random name, then renamed
  over its name (a repeated name: the last one wins, whole); a link is made
  under a random name, then renamed; nothing is left half-written;
* refused, with the reason: absolute names, ``..``, names over 255 bytes or
  paths over 4096, links whose text leaves the destination, hard links to
  anything but a file extracted before (those are copied), devices, fifos and
  other types, and a name that would change type (a folder becoming a link, a
  link a folder, a file a folder...);
* modes keep the owner's and read/execute bits only (no setuid, no group or
  other write); owners and times are not applied;
* at the end every link made is checked again against the finished tree (a
  chain of links, each inside on its own, can lead out) and dropped if it
  leads outside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mltrain.errors import ConfigError
from mltrain.util import safefs

log = logging.getLogger(__name__)

BLOCK = 512
MAX_HEADER = 64 * 1024  # one pax or GNU long-name header: paths are at most 4 KiB, this is room to spare
MAX_EXTENSIONS = 8  # extended headers in a row before a member
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class StreamStopped(Exception):
    """Raised by :meth:`Extractor.feed` once the extractor takes no more (a limit, a malformed stream)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one stream; ``from_env`` reads the overrides."""

    max_bytes: int = 32 * 1024**3
    max_files: int = 200_000
    max_header: int = MAX_HEADER

    @classmethod
    def from_env(cls) -> Limits:
        return cls(max_bytes=_env_size("MLTRAIN_OUTPUTS_MAX_BYTES", cls.max_bytes),
                   max_files=_env_count("MLTRAIN_OUTPUTS_MAX_FILES", cls.max_files))


def _env_size(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)(?:i?b)?", text)
    if match is None or int(match.group(1)) <= 0:
        raise ConfigError(f"{name}={text!r}: give a size such as 512m, 64g or a number of bytes")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _env_count(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not re.fullmatch(r"[0-9]+", text) or int(text) <= 0:
        raise ConfigError(f"{name}={text!r}: give a positive whole number")
    return int(text)


@dataclass
class Report:
    """What one extraction did: refusals (``name: why``), and why the stream was cut short, if it was."""

    refused: list[str] = field(default_factory=list)  # the first MAX_REPORTED, by name
    more_refused: int = 0  # and how many after those
    stopped: str | None = None
    members: int = 0
    received: int = 0  # bytes read from the stream, plus those written as copies of hard-linked files

    def refuse(self, name: str, why: str) -> None:
        if len(self.refused) < MAX_REPORTED:
            self.refused.append(f"{safefs.show(name)}: {why}")
        else:
            self.more_refused += 1

    def lines(self) -> list[str]:
        """The warnings to show the user, one line each."""
        out = [f"not extracted: {item}" for item in self.refused]
        if self.more_refused:
            out.append(f"not extracted: {self.more_refused:,} more entries")
        if self.stopped:
            out.append(f"extraction stopped: {self.stopped}")
        return out


@dataclass
class _Member:
    kind: str  # "file", "dir", "symlink", "hardlink", or a word for what is refused
    name: str
    linkname: str
    mode: int
    size: int


_TYPES = {b"0": "file", b"\0": "file", b"7": "file", b"1": "hardlink", b"2": "symlink", b"5": "dir",
          b"3": "character device", b"4": "block device", b"6": "fifo"}
_EXTENSIONS = (b"x", b"g", b"L", b"K")
_NO_DATA = ("dir", "symlink", "hardlink", "character device", "block device", "fifo")
MAX_REPORTED = 50  # refusals kept by name; past that, counted


class Extractor:
    """A push parser and writer: ``feed`` it the stream's chunks as they arrive, then ``close`` it.

    ``folders`` maps a member prefix to a destination folder (``{"run/outputs":
    paths.outputs}``: everything under ``run/outputs/`` goes there); ``files``
    maps a member name to a destination file (``{"run/metrics.jsonl":
    paths.metrics}``). Other members are read past. A destination's own parent
    is trusted (the run's folder); everything below it is reached by fd.
    """

    def __init__(self, *, folders: Mapping[str, Path] | None = None, files: Mapping[str, Path] | None = None,
                 limits: Limits | None = None) -> None:
        self.limits = limits or Limits.from_env()
        self.folders = {_key(k): Path(v) for k, v in (folders or {}).items()}
        self.files = {_key(k): Path(v) for k, v in (files or {}).items()}
        self.report = Report()
        self._buffer = bytearray()  # a header block, or an extended header, being gathered
        self._want = BLOCK  # bytes still wanted in the buffer (HEADER/EXTENSION states)
        self._state = "header"  # header | extension | data | end | stopped
        self._extension: tuple[bytes, int] | None = None  # (type, size) of the extended header being read
        self._pending: dict[str, str] = {}  # path/linkpath/size from extended headers, for the next member
        self._extensions_in_row = 0
        self._data_left = 0  # bytes of member data still to come (then padding)
        self._pad_left = 0
        self._out: tuple[int, str, int, str, _Member] | None = None  # the file being written: fd, temp name, folder fd,
        # its name, the member
        self._roots: dict[tuple[str, ...], int] = {}  # destination folder fds, by route
        self._dirs: OrderedDict[tuple[tuple[str, ...], tuple[str, ...]], int] = OrderedDict()
        self._links: list[tuple[tuple[str, ...], tuple[str, ...]]] = []  # (route, parts) of links made
        self._files_made: dict[tuple[tuple[str, ...], tuple[str, ...]], bool] = {}
        self._closed = False

    # ------------------------------------------------------------- the stream
    def feed(self, data: bytes) -> None:
        """Take the next bytes of the stream; raises :class:`StreamStopped` once it takes no more."""
        if self._state == "stopped":
            raise StreamStopped(self.report.stopped or "stopped")
        over = self.report.received + len(data) - self.limits.max_bytes
        self.report.received += len(data)
        view = memoryview(data)
        if over > 0:
            view = view[: len(view) - over]
        try:
            self._consume(view)
        except StreamStopped:
            raise
        except BaseException:
            self._abandon()
            self._state = "stopped"
            raise
        if over > 0 and self._state != "stopped":
            self._stop(self._too_big())
        if self._state == "stopped":
            raise StreamStopped(self.report.stopped or "stopped")

    def close(self) -> Report:
        """Finish: a stream that ended mid-member is reported; links made are checked against the finished tree."""
        if self._closed:
            return self.report
        self._closed = True
        if self._state not in ("header", "end", "stopped") or (self._state == "header" and self._buffer):
            self.report.stopped = "the archive ended in the middle of a member (cut short); that member was dropped"
        self._abandon()
        try:
            self._check_links()
        finally:
            for fd in [*self._dirs.values(), *self._roots.values()]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._dirs.clear()
            self._roots.clear()
        for line in self.report.lines():
            log.warning("%s", line)
        return self.report

    def _too_big(self) -> str:
        return (f"the outputs passed {_human(self.limits.max_bytes)} (raise MLTRAIN_OUTPUTS_MAX_BYTES to bring "
                "back more); the rest was not brought back")

    def _stop(self, why: str) -> None:
        self._abandon()
        self.report.stopped = why
        self._state = "stopped"

    def _consume(self, view: memoryview) -> None:
        pos, size = 0, len(view)
        while pos < size and self._state != "stopped":
            if self._state == "end":
                return  # the rest is padding (counted against the byte limit, never used)
            if self._state in ("header", "extension"):
                take = view[pos: pos + self._want]
                self._buffer += take
                self._want -= len(take)
                pos += len(take)
                if self._want == 0:  # whole: back to waiting for a header, unless the handler says otherwise
                    done, was = bytes(self._buffer), self._state
                    self._expect_header()
                    if was == "header":
                        self._on_header(done)
                    else:
                        self._on_extension(done)
                continue
            if self._data_left:
                take = view[pos: pos + self._data_left]
                if self._out is not None:
                    _write_all(self._out[0], take)
                self._data_left -= len(take)
                pos += len(take)
                if self._data_left == 0:
                    self._finish_file()
                continue
            take_n = min(self._pad_left, size - pos)
            self._pad_left -= take_n
            pos += take_n
            if self._pad_left == 0:
                self._expect_header()

    def _expect_header(self) -> None:
        self._state, self._want = "header", BLOCK
        self._buffer.clear()

    def _skip(self, size: int) -> None:
        """Read past ``size`` bytes of member data (and its padding)."""
        self._state = "data"
        self._data_left, self._pad_left = size, _padding(size)
        if size == 0:
            self._finish_file()

    # --------------------------------------------------------------- headers
    def _on_header(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self._state = "end"
            return
        try:
            member, ext = _parse_header(block)
        except ValueError as exc:
            self._stop(f"not a valid tar stream ({exc}) after {self.report.received:,} bytes")
            return
        if member.kind == "sparse file" and ext is None:  # old GNU sparse: more headers follow, in its own format
            self._stop("a GNU sparse member, which mltrain does not read; the rest was not brought back")
            return
        if ext is not None:
            self._extensions_in_row += 1
            if self._extensions_in_row > MAX_EXTENSIONS:
                self._stop("more than 8 extended headers in a row (not a valid tar stream)")
            elif member.size > self.limits.max_header:
                self._stop(f"an extended header of {member.size:,} bytes (at most {self.limits.max_header:,})")
            elif member.size == 0:
                self._extension = (ext, 0)
                self._on_extension(b"")
            else:
                self._extension = (ext, member.size)
                self._state, self._want = "extension", member.size + _padding(member.size)
            return
        self._extensions_in_row = 0
        self.report.members += 1
        if self.report.members > self.limits.max_files:
            self._stop(f"more than {self.limits.max_files:,} entries (raise MLTRAIN_OUTPUTS_MAX_FILES to "
                       "bring back more); the rest was not brought back")
            return
        pending, self._pending = self._pending, {}
        member.name = pending.get("path", member.name)
        member.linkname = pending.get("linkpath", member.linkname)
        if "size" in pending:
            if not re.fullmatch(r"[0-9]+", pending["size"]):
                self._stop("an extended header with a bad size (not a valid tar stream)")
                return
            member.size = int(pending["size"])
        if pending.get("sparse"):
            member.kind = "sparse file"
        if member.kind in _NO_DATA:
            member.size = 0  # as tarfile reads them: no data follows these, whatever the size field says
        self._member(member)

    def _on_extension(self, data: bytes) -> None:
        assert self._extension is not None
        kind, size = self._extension
        self._extension = None
        body = data[:size]
        if kind == b"x":
            try:
                records = _pax_records(body)
            except ValueError as exc:
                self._stop(f"a malformed pax header ({exc})")
                return
            for key, value in records.items():
                if key in ("path", "linkpath", "size"):
                    self._pending[key] = value
                elif key.startswith("GNU.sparse."):
                    self._pending["sparse"] = "1"
        elif kind in (b"L", b"K"):
            self._pending["path" if kind == b"L" else "linkpath"] = _text(body.split(b"\0", 1)[0])
        # a global header (g) is read past: nothing in it is used

    # --------------------------------------------------------------- members
    def _member(self, member: _Member) -> None:
        target = self._route(member)
        if target is None:
            self._skip(member.size)
            return
        problem = self._place(member, target)
        if problem is not None:
            self.report.refuse(member.name, problem)
            self._skip(member.size)

    def _route(self, member: _Member) -> tuple[str, tuple[str, ...], tuple[str, ...]] | None:
        """("folder"|"file"|"refuse", route, parts below it) for a member to act on; None for one to read past."""
        parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
        if member.name.startswith("/") or ".." in parts or "\0" in member.name:
            return ("refuse", (), parts)  # never meant for us, and a sign of a hostile stream: say so
        for route in self.folders:
            if parts[: len(route)] == route:
                return ("folder", route, parts[len(route):])
        for route in self.files:
            if parts == route:
                return ("file", route, ())
        return None

    def _place(self, member: _Member, target: tuple[str, tuple[str, ...], tuple[str, ...]]) -> str | None:
        """Start writing ``member`` (or make it); the reason it is refused, or None."""
        how, route, parts = target
        if how == "refuse":
            return "not a clean relative path"
        if how == "file":
            if member.kind != "file":
                return f"a {member.kind}, not a regular file"
            dest = self.files[route]
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd = self._root(route, dest.parent)
            return self._open_file(member, fd, dest.name, route, ())
        for name in parts:
            if (why := safefs.bad_name(name)) is not None:
                return why
        if len(os.fsencode("/".join(parts))) > safefs.MAX_PATH:
            return f"a path longer than {safefs.MAX_PATH} bytes"
        root = self._root(route, self.folders[route])
        if not parts:
            return None if member.kind == "dir" else f"a {member.kind} where the outputs folder is"
        if member.kind not in ("file", "dir", "symlink", "hardlink"):
            return f"a {member.kind} (only files, folders and links inside are kept)"
        parent = self._folder(route, root, parts[:-1])
        if isinstance(parent, str):
            return parent
        name = parts[-1]
        existing = safefs.lstat_at(parent, name)
        have = None if existing is None else safefs.kind_of(existing.st_mode)
        if member.kind == "dir":
            if have is None:
                os.mkdir(name, 0o700, dir_fd=parent)
            elif have != safefs.DIR:
                return f"a folder where a {have} is (a name may not change type)"
            fd = os.open(name, safefs.DIR_FLAGS, dir_fd=parent)
            try:
                os.fchmod(fd, (member.mode & 0o755) | 0o700)
            finally:
                os.close(fd)
            return None
        if member.kind == "symlink":
            if have not in (None, safefs.LINK):
                return f"a link where a {have} is (a name may not change type)"
            if safefs.link_leaves(parts, member.linkname):
                return f"a link leading outside the outputs (-> {safefs.show(member.linkname)})"
            safefs.symlink_into(member.linkname, parent, name)
            self._links.append((route, parts))
            return None
        if have not in (None, safefs.FILE):
            return f"a file where a {have} is (a name may not change type)"
        if member.kind == "hardlink":
            return self._copy_link(member, route, root, parent, parts)
        return self._open_file(member, parent, name, route, parts)

    def _open_file(self, member: _Member, dir_fd: int, name: str, route: tuple[str, ...],
                   parts: tuple[str, ...]) -> str | None:
        existing = safefs.lstat_at(dir_fd, name)
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            return f"a file where a {safefs.kind_of(existing.st_mode)} is (a name may not change type)"
        fd, tmp = safefs.create_temp(dir_fd)
        self._out = (fd, tmp, dir_fd, name, member)
        self._files_made[(route, parts)] = True
        self._state = "data"
        self._data_left, self._pad_left = member.size, _padding(member.size)
        if member.size == 0:
            self._finish_file()
        return None

    def _finish_file(self) -> None:
        """The member's data is all here: put the file in place (or, for a skipped member, go on)."""
        out, self._out = self._out, None
        if out is not None:
            fd, tmp, dir_fd, name, member = out
            try:
                try:
                    os.fchmod(fd, (member.mode & 0o755) | 0o600)
                finally:
                    os.close(fd)
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
        if self._pad_left == 0:
            self._expect_header()

    def _copy_link(self, member: _Member, route: tuple[str, ...], root: int, parent: int,
                   parts: tuple[str, ...]) -> str | None:
        """A hard link to a file extracted before, under the same destination, is written as a copy of it.

        ``parent`` (the link's folder) stays open: ``_folder`` closes only the
        least recently used of its cached fds, never the one just used.
        """
        raw = member.linkname.split("/")
        source = tuple(p for p in raw if p not in ("", "."))
        if member.linkname.startswith("/") or source[: len(route)] != route or ".." in source:
            return f"a hard link to {safefs.show(member.linkname)} (only to a file extracted before)"
        rel = source[len(route):]
        if not rel or (route, rel) not in self._files_made:
            return f"a hard link to {safefs.show(member.linkname)} (only to a file extracted before)"
        folder = self._folder(route, root, rel[:-1], create=False)
        if isinstance(folder, str):
            return f"a hard link to {safefs.show(member.linkname)}: {folder}"
        try:
            src = os.open(rel[-1], safefs.READ_FLAGS, dir_fd=folder)
        except OSError:
            return f"a hard link to {safefs.show(member.linkname)}, which is not a file"
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                return f"a hard link to {safefs.show(member.linkname)}, which is not a file"
            self.report.received += st.st_size  # a copy costs what sending it would have
            if self.report.received > self.limits.max_bytes:
                self._stop(self._too_big())
                return None
            fd, tmp = safefs.create_temp(parent)
            try:
                while chunk := os.read(src, 1 << 20):
                    _write_all(fd, chunk)
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            except BaseException:
                os.close(fd)
                os.unlink(tmp, dir_fd=parent)
                raise
            os.close(fd)
            os.rename(tmp, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
            self._files_made[(route, parts)] = True
        finally:
            os.close(src)
        return None

    # -------------------------------------------------------------- folders
    def _root(self, route: tuple[str, ...], dest: Path) -> int:
        fd = self._roots.get(route)
        if fd is None:
            if route in self.folders:
                dest.mkdir(parents=True, exist_ok=True)
            fd = self._roots[route] = safefs.open_root(dest)
        return fd

    def _folder(self, route: tuple[str, ...], root: int, parts: tuple[str, ...], *, create: bool = True) -> int | str:
        """The fd of the folder ``parts`` under ``root`` (made if missing), or why there is none."""
        key = (route, parts)
        fd = self._dirs.get(key)
        if fd is not None:
            self._dirs.move_to_end(key)
            return fd
        fd = os.dup(root)
        try:
            for depth, name in enumerate(parts):
                st = safefs.lstat_at(fd, name)
                if st is None and create:  # a folder the stream never named: as a plain mkdir would make it
                    os.mkdir(name, 0o755, dir_fd=fd)
                elif st is None or not stat.S_ISDIR(st.st_mode):
                    what = "missing" if st is None else f"a {safefs.kind_of(st.st_mode)}, not a folder"
                    os.close(fd)
                    return f"its folder {safefs.show('/'.join(parts[: depth + 1]))} is {what}"
                child = os.open(name, safefs.DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._dirs[key] = fd
        if len(self._dirs) > 32:
            os.close(self._dirs.popitem(last=False)[1])
        return fd

    # -------------------------------------------------------------- the end
    def _abandon(self) -> None:
        """Drop a file being written (its temp name goes; its real name is untouched)."""
        out, self._out = self._out, None
        if out is not None:
            fd, tmp, dir_fd, *_ = out
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)

    def _check_links(self) -> None:
        """Drop every link made whose target, followed through the finished tree, leads outside.

        All are judged first, then removed: dropping one link must not make
        another that went through it look harmless (it would then be a
        dangling link, one ``mkdir`` away from leading outside again).
        """
        leaving: list[tuple[tuple[str, ...], tuple[str, ...], str]] = []
        for route, parts in dict.fromkeys(self._links):
            root = self._roots.get(route)
            text = None if root is None else safefs.read_link(root, parts)
            if root is not None and text is not None and not safefs.link_resolves_inside(root, parts, text):
                leaving.append((route, parts, text))
        for route, parts, text in leaving:
            with contextlib.suppress(OSError):  # the folder is ours; if it still fails, finalize's check says so
                safefs.remove_at(self._roots[route], parts)
            self.report.refuse("/".join((*route, *parts)), "a link leading outside the outputs through "
                               f"other links (-> {safefs.show(text)})")


def extract(chunks: Iterable[bytes], *, folders: Mapping[str, Path] | None = None,
            files: Mapping[str, Path] | None = None, limits: Limits | None = None) -> Report:
    """Extract a tar stream (an iterable of chunks) as :class:`Extractor` says; the stream is closed after.

    Stops reading at the first limit, so an endless stream ends here (and a
    closable one, such as an engine's HTTP stream, is closed).
    """
    extractor = Extractor(folders=folders, files=files, limits=limits)
    iterator = iter(chunks)
    try:
        for chunk in iterator:
            extractor.feed(chunk)
    except StreamStopped:
        pass
    finally:
        for thing in (iterator, chunks):
            close = getattr(thing, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
        report = extractor.close()
    return report


# ---------------------------------------------------------------- parsing
def _parse_header(block: bytes) -> tuple[_Member, bytes | None]:
    """A member from one 512-byte header; the second value is the extension type for pax/GNU long headers."""
    stored = _number(block[148:156])
    unsigned = sum(block[:148]) + sum(block[156:]) + 8 * 32
    signed = unsigned - 256 * sum(1 for b in (*block[:148], *block[156:]) if b > 127)
    if stored not in (unsigned, signed):
        raise ValueError("bad header checksum")
    typeflag = block[156:157]
    size = _number(block[124:136])
    if size < 0:
        raise ValueError("a negative size")
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0":  # POSIX: a prefix field (GNU's "ustar  " uses those bytes otherwise)
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    linkname = block[157:257].split(b"\0", 1)[0]
    mode = _number(block[100:108]) & 0o7777
    if typeflag in _EXTENSIONS:
        return _Member("extension", "", "", 0, size), typeflag
    kind = _TYPES.get(typeflag, f"member of type {typeflag!r}")
    if typeflag == b"S":
        kind = "sparse file"
    if kind == "file" and typeflag == b"\0" and name.endswith(b"/"):
        kind = "dir"  # old tars marked folders by a trailing slash alone
    return _Member(kind, _text(name), _text(linkname), mode, size), None


def _number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # base-256 (GNU, for sizes over 8 GiB)
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[:1] == b"\xff" else value
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return 0
    if not all(0x30 <= c <= 0x37 for c in digits):
        raise ValueError("a number field that is not octal")
    return int(digits, 8)


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 20)
        if space < 0 or not data[pos:space].isdigit():
            raise ValueError("a record without a length")
        length = int(data[pos:space])
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1: end] != b"\n":
            raise ValueError("a record of the wrong length")
        key, eq, value = data[space + 1: end - 1].partition(b"=")
        if not eq:
            raise ValueError("a record without '='")
        records[_text(key)] = _text(value)
        pos = end
    return records


def _text(raw: bytes) -> str:
    """Bytes as the file system will see them again (undecodable bytes kept, as ``os.fsdecode`` does)."""
    return raw.decode("utf-8", "surrogateescape")


def _key(route: str) -> tuple[str, ...]:
    return tuple(p for p in route.split("/") if p not in ("", "."))


def _padding(size: int) -> int:
    return -size % BLOCK


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _human(n: int) -> str:
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if n >= 1024**power:
            return f"{n / 1024**power:.1f} {unit}".replace(".0 ", " ")
    return f"{n:,} bytes"
