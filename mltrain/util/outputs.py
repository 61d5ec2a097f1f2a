"""One policy for a run's outputs, whatever the target: files and folders, and links that stay inside.

Outputs reach the run folder three ways: extracted from an archive (SSH, a
remote Docker engine: :mod:`mltrain.util.archive`), or written there directly
by the job (the local target; a local Docker engine's bind mount). The last two
pass through no extraction, so :func:`enforce` walks the finished folder in
place -- by directory fds, never following a link -- and removes fifos,
sockets and devices, and links whose target (followed through the tree's own
links) leaves the outputs; setuid/setgid bits are cleared. :func:`copy_tree`
is ``runs outputs --download``: the same rules, all or nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from mltrain.util import safefs

MAX_NOTES = 20  # lines written to the run's log; past that, a count


class Refused(Exception):
    """``copy_tree`` will not copy: ``str()`` says what is wrong, ``hint`` how to fix it; nothing was copied."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def enforce(outputs: Path) -> list[str]:
    """Make ``outputs`` obey the policy in place; one line per thing removed (for the run's log).

    The folder's parent (the run folder) is trusted; ``outputs`` itself, if a
    link or anything but a folder, is removed (a file is left: it is harmless).
    """
    notes: list[str] = []
    try:
        st = os.lstat(outputs)
    except FileNotFoundError:
        return notes
    if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        what = "a link" if stat.S_ISLNK(st.st_mode) else f"a {safefs.special_name(st.st_mode)}"
        os.unlink(outputs)
        return [f"removed the outputs folder: it was {what}, not a folder"]
    if not stat.S_ISDIR(st.st_mode):
        return notes
    root = safefs.open_root(outputs)
    try:
        links: list[tuple[str, ...]] = []
        for folder, entry in safefs.walk(root, strict=False):
            if entry.kind == safefs.LINK:
                links.append(entry.parts)
            elif entry.kind == safefs.FILE:
                if entry.st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    _clear_setid(folder, entry.parts[-1])
            elif entry.kind == safefs.OTHER:
                shown = f"{safefs.show(entry.rel)}: a {safefs.special_name(entry.st.st_mode)}"
                notes += _remove(root, entry.parts, f"removed {shown} (only files, folders and links inside "
                                 "the outputs are kept)")
        # judged all first, then removed: dropping one must not make another that went through it look harmless
        leaving = [(parts, text) for parts in links if (text := safefs.read_link(root, parts)) is not None
                   and not safefs.link_resolves_inside(root, parts, text)]
        for parts, text in leaving:
            shown = f"the link {safefs.show('/'.join(parts))} -> {safefs.show(text)}"
            notes += _remove(root, parts, f"dropped {shown}: it leads outside the outputs")
    finally:
        os.close(root)
    return notes


def _remove(root: int, parts: tuple[str, ...], note: str) -> list[str]:
    """``[note]`` once removed; nothing if another process removed it first; a warning if it cannot go."""
    try:
        return [note] if safefs.remove_at(root, parts) else []
    except OSError as exc:
        return [f"could not remove {safefs.show('/'.join(parts))} ({exc.strerror or exc}), against the "
                "outputs policy"]


def _clear_setid(folder: int, name: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(name, safefs.READ_FLAGS, dir_fd=folder)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
        finally:
            os.close(fd)


def note_in_log(log_path: Path, notes: list[str], *, what: str = "outputs") -> None:
    """Append ``notes`` to the run's log as ``[mltrain] outputs: ...`` lines (at most ``MAX_NOTES``)."""
    if not notes:
        return
    lines = notes[:MAX_NOTES]
    if len(notes) > MAX_NOTES:
        lines.append(f"... and {len(notes) - MAX_NOTES} more")
    data = "".join(f"[mltrain] {what}: {safefs.show(line, 1000)}\n" for line in lines).encode(errors="replace")
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def listing(outputs: Path) -> list[tuple[str, int | None, str | None]]:
    """(path, size, None) for each file and (path, None, target) for each link, never following one."""
    try:
        root = safefs.open_root(outputs)
    except OSError:  # missing, a link, not a folder
        return []
    found: list[tuple[str, int | None, str | None]] = []
    try:
        for folder, entry in safefs.walk(root, strict=False):
            if entry.kind == safefs.FILE:
                found.append((entry.rel, entry.st.st_size, None))
            elif entry.kind == safefs.LINK:
                with contextlib.suppress(OSError):
                    found.append((entry.rel, None, os.readlink(entry.parts[-1], dir_fd=folder)))
    finally:
        os.close(root)
    return sorted(found)


def copy_tree(source: Path, dest: Path) -> int:
    """Copy the outputs folder ``source`` to ``dest``, all or nothing; the number of files copied.

    Built in a hidden folder beside ``dest``, then renamed into place, so
    ``dest`` is either the whole copy or not there. ``dest`` must not exist, or
    be an empty folder (it is replaced). A link leading outside the outputs, a
    fifo, socket or device in ``source`` raises :class:`Refused` and nothing is
    copied; other errors are ``OSError``.
    """
    if os.path.lexists(dest) and not (dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir())):
        raise Refused(f"{dest} already exists and is not an empty folder", "choose a new folder, or remove that one")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".mltrain-tmp", dir=dest.parent))
    try:
        files = _copy_into(source, tmp)
        os.chmod(tmp, (stat.S_IMODE(os.stat(source).st_mode) & 0o755) | 0o700)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def _copy_into(source: Path, tmp: Path) -> int:
    hint = f"remove it from {source}, then copy again"
    files = 0
    src_root = safefs.open_root(source)
    dst_root = safefs.open_root(tmp)
    try:
        for folder, entry in safefs.walk(src_root):
            name = entry.parts[-1]
            if entry.kind == safefs.OTHER:
                raise Refused(f"{safefs.show(entry.rel)} is a {safefs.special_name(entry.st.st_mode)}", hint)
            if entry.kind == safefs.LINK:
                target = os.readlink(name, dir_fd=folder)
                if not safefs.link_resolves_inside(src_root, entry.parts, target):
                    raise Refused(f"{safefs.show(entry.rel)} is a link leading outside the outputs "
                                  f"(-> {safefs.show(target)})", hint)
            into = safefs.open_parts(dst_root, entry.parts[:-1])
            try:
                if entry.kind == safefs.DIR:
                    os.mkdir(name, 0o700, dir_fd=into)
                    os.chmod(name, (stat.S_IMODE(entry.st.st_mode) & 0o755) | 0o700, dir_fd=into)
                elif entry.kind == safefs.LINK:
                    os.symlink(target, name, dir_fd=into)
                else:
                    _copy_file(folder, entry, into, hint)
                    files += 1
            finally:
                os.close(into)
    finally:
        os.close(src_root)
        os.close(dst_root)
    return files


def _copy_file(src_folder: int, entry: safefs.Entry, dst_folder: int, hint: str) -> None:
    name = entry.parts[-1]
    src = os.open(name, safefs.READ_FLAGS, dir_fd=src_folder)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{safefs.show(entry.rel)} stopped being a file while copied", hint)
        os.set_blocking(src, True)
        dst = os.open(name, safefs.NEW_FILE_FLAGS, 0o600, dir_fd=dst_folder)
        try:
            while chunk := os.read(src, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
            os.fchmod(dst, (stat.S_IMODE(st.st_mode) & 0o755) | 0o600)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)

