"""File trees reached through open directory fds, one component at a time, never through a link.

Whatever a job leaves behind is hostile: any name in it may be a symlink placed
to send a later write (or read) somewhere else. A path string is resolved again
by the kernel at every use, so checking it first and using it after proves
nothing (the folder checked may be a link by the time of the write). Everything
here starts from an open directory fd and opens each component with
``O_NOFOLLOW``; files are created ``O_EXCL`` under random names, then renamed
into place, so no existing name is ever written through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a fifo swapped in never blocks
MAX_HOPS = 40  # links followed while resolving one target, as the kernel's ELOOP limit
MAX_NAME = 255  # bytes in one path component (NAME_MAX)
MAX_PATH = 4096  # bytes in a path or a link's text (PATH_MAX)
TEMP_PREFIX = ".mltrain-"
TEMP_SUFFIX = ".tmp"

DIR, FILE, LINK, OTHER = "folder", "file", "link", "other"


def kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISLNK(mode):
        return LINK
    return OTHER


def special_name(mode: int) -> str:
    """What a non-file, non-folder, non-link is, in words."""
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "special file"


def open_root(path: str | os.PathLike[str]) -> int:
    """An fd on the folder ``path``: its last component must not be a link (its parents are the caller's)."""
    return os.open(path, DIR_FLAGS)


def open_parts(root_fd: int, parts: Sequence[str]) -> int:
    """An fd on the folder ``root/parts...``; OSError (ELOOP, ENOTDIR, ENOENT) if any component is not a folder."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """The entry ``name`` itself (a link is not followed), or None if there is none."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def bad_name(name: str) -> str | None:
    """Why a path component cannot be used as a name here (None when it can)."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return "not a clean relative path"
    if len(os.fsencode(name)) > MAX_NAME:
        return f"a name longer than {MAX_NAME} bytes"
    return None


def temp_name() -> str:
    """A random name in a folder; created exclusively, so a name planted in advance is never used."""
    return f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"


def create_temp(dir_fd: int, mode: int = 0o600) -> tuple[int, str]:
    """A new empty file under a random name in ``dir_fd`` (``O_EXCL``: never an existing entry or link)."""
    for _ in range(16):
        name = temp_name()
        try:
            return os.open(name, NEW_FILE_FLAGS, mode, dir_fd=dir_fd), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name")


def symlink_into(target: str, dir_fd: int, name: str) -> None:
    """Make (or atomically replace) the link ``name`` -> ``target``: made under a random name, then renamed."""
    for _ in range(16):
        tmp = temp_name()
        try:
            os.symlink(target, tmp, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name")
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def link_leaves(parts: Sequence[str], target: str) -> bool:
    """Lexically, does the link at ``parts`` with text ``target`` lead outside the tree (or nowhere usable)?"""
    if not target or target.startswith("/") or "\0" in target or len(os.fsencode(target)) > MAX_PATH:
        return True
    depth = len(parts) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def link_resolves_inside(root_fd: int, parts: Sequence[str], target: str) -> bool:
    """Would following the link at ``parts`` (text ``target``) stay inside the tree, links in the tree included?

    The text alone cannot tell: ``l -> sub/up/..`` reads as ``sub`` but, with
    ``sub/up -> ..``, leads to the tree's parent. So the target is walked
    component by component against the tree as it is now; every link met on
    the way is followed in its turn (at most ``MAX_HOPS``), and ``..`` above the
    root, an absolute link, or a loop means outside. Past a missing component
    the rest is judged by its text (the kernel would not resolve it anyway).
    """
    if link_leaves(parts, target):
        return False
    stack = list(parts[:-1])
    pending = target.split("/")
    pending.reverse()
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return False
            stack.pop()
            continue
        stack.append(part)
        text = read_link(root_fd, stack)
        if text is None:
            continue
        hops += 1
        if hops > MAX_HOPS or not text or text.startswith("/"):
            return False
        stack.pop()
        more = text.split("/")
        more.reverse()
        pending.extend(more)
    return True


def read_link(root_fd: int, parts: Sequence[str]) -> str | None:
    """The text of the link at ``parts``, or None if that is not a link (or not reachable by folders alone)."""
    try:
        fd = open_parts(root_fd, parts[:-1])
    except OSError:
        return None
    try:
        st = lstat_at(fd, parts[-1])
        return os.readlink(parts[-1], dir_fd=fd) if st is not None and stat.S_ISLNK(st.st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def remove_at(root_fd: int, parts: Sequence[str]) -> bool:
    """Unlink the non-folder at ``parts``, never following it; False if it was gone already.

    A folder the job made read-only is opened up first; OSError if it still cannot go.
    """
    try:
        fd = open_parts(root_fd, parts[:-1])
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        try:
            os.unlink(parts[-1], dir_fd=fd)
        except PermissionError:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | stat.S_IRWXU)
            os.unlink(parts[-1], dir_fd=fd)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Entry:
    """One entry of a walked tree, as found (a link is the link itself)."""

    parts: tuple[str, ...]
    kind: str
    st: os.stat_result

    @property
    def rel(self) -> str:
        return "/".join(self.parts)


def walk(root_fd: int, *, strict: bool = True) -> Iterator[tuple[int, Entry]]:
    """Every entry under ``root_fd``, folders before what they hold, never entering a link.

    Yields the fd of the folder holding each entry (valid until the next step),
    so the caller acts on ``entry.parts[-1]`` relative to it. ``strict``: a
    folder that vanished or became something else meanwhile raises (a copy
    must be whole); otherwise it is passed over.
    """
    pending: list[tuple[str, ...]] = [()]
    while pending:
        parts = pending.pop()
        try:
            fd = open_parts(root_fd, parts)
        except OSError:
            if strict:
                raise
            continue
        try:
            folders: list[tuple[str, ...]] = []
            for name in sorted(os.listdir(fd)):
                st = lstat_at(fd, name)
                if st is None:
                    if strict:
                        raise FileNotFoundError(errno.ENOENT, "vanished while copied", "/".join((*parts, name)))
                    continue
                entry = Entry((*parts, name), kind_of(st.st_mode), st)
                yield fd, entry
                if entry.kind == DIR:
                    folders.append(entry.parts)
            pending.extend(reversed(folders))
        finally:
            os.close(fd)


def show(text: str, limit: int = 200) -> str:
    """``text`` fit for one log line: control characters and undecodable bytes escaped, long text cut."""
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
