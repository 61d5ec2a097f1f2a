"""Stat a large tree's files on more than one core: helper processes ``lstat`` whole folders for the walk.

An unchanged re-snapshot is one ``lstat`` per file, and Python threads do not
help there (each 2-3 µs call hands the interpreter lock over twice; measured
slower than one thread). ``git status`` stats on threads, so at 100,000 files
one Python thread fell behind it. So the walk, where the stat cache says the
tree is large, hands some of its plain folders (regular files only, every
name kept) to helper processes and stats the others itself meanwhile.

The walk keeps the listing, the ignore rules and the order: a helper gets a
folder's open directory descriptor (passed over a Unix socket, so it stats
exactly the folder the walk listed, never a path that may have been swapped
for a link since) and its file names, and answers with the columns (size,
mtime, inode, mode, or the errno) once the walk is done. A folder goes to the
least loaded of the walk and its helpers; a helper that is busy (its socket
full), gone, or answers wrongly costs nothing but the speed: its folders are
stat'ed again here, by path.

This file is also the helper's program, run as ``python -I -S -c <this file>``
with its end of the socket as stdin: standard library only at the top.
"""

from __future__ import annotations

import array
import os
import socket
import sys

TYPE_CHECKING = False  # typing is not imported: the helper starts without it
if TYPE_CHECKING:
    from mltrain.snapshot.walk import WalkResult

MAX_MESSAGE = 1 << 16
"""A folder whose names take more than this (some 3,000 files) is stat'ed by the walk itself."""
MIN_FILES = 30_000
"""Below this many files (as the previous snapshot counted) a helper's start (~10-25 ms) is not worth it."""
MAX_HELPERS = 3
HELPER_SHARE = 2.0
"""A helper takes up to this many files for each one the walk stats itself (the walk also lists every folder)."""
COLUMNS = ("q", "q", "Q", "q")
"""Array types of the answer's columns: size, mtime_ns, inode, and the mode (or minus the errno)."""


def serve(sock: socket.socket) -> None:
    """The helper: stat each folder's names as they come, answer every column once the walk hangs up."""
    sizes, mtimes, inodes, modes = (array.array(kind) for kind in COLUMNS)
    stat = os.stat
    while True:
        message, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
        if not fds:
            break  # the walk is done (an empty read), or sent nonsense
        fd = fds[0]
        try:
            for name in message.split(b"\0") if message else ():
                try:
                    st = stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as exc:
                    sizes.append(0)
                    mtimes.append(0)
                    inodes.append(0)
                    modes.append(-(exc.errno or 1))
                    continue
                sizes.append(st.st_size)
                mtimes.append(st.st_mtime_ns)
                inodes.append(st.st_ino)
                modes.append(st.st_mode)
        finally:
            os.close(fd)
    header = array.array("q", [len(modes)])
    answer = memoryview(b"".join(column.tobytes() for column in (header, sizes, mtimes, inodes, modes)))
    for at in range(0, len(answer), MAX_MESSAGE):  # a packet socket takes a message of some 200 KB at most
        sock.sendall(answer[at:at + MAX_MESSAGE])
    sock.shutdown(socket.SHUT_WR)


if __name__ == "__main__":
    serve(socket.socket(fileno=sys.stdin.fileno()))
    sys.exit(0)


def helpers_for(expected_files: int) -> int:
    """How many helpers a walk of about ``expected_files`` files gets (0: the walk stats everything itself)."""
    from mltrain.util import cores

    interpreter = os.path.basename(sys.executable or "").lower()
    if expected_files < MIN_FILES or not sys.platform.startswith("linux") or "py" not in interpreter:
        return 0  # (embedded, sys.executable may be the host program: uwsgi, say)
    return min(cores.usable_cores() - 1, MAX_HELPERS)


class _Helper:
    def __init__(self, source: str) -> None:
        import subprocess

        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen([sys.executable, "-I", "-S", "-c", source], stdin=theirs.fileno(),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()
        self.sock.setblocking(False)
        self.sent: list[tuple[int, str, list[str]]] = []  # (first row, folder, names), in the order sent
        self.files = 0

    def send(self, fd: int, names: list[str], row: int, rel_dir: str) -> bool:
        message = b"\0".join(map(os.fsencode, names))
        if len(message) > MAX_MESSAGE:
            return False
        try:
            socket.send_fds(self.sock, [message], [fd])
        except OSError:  # full (busy), gone, or too many descriptors in flight: the walk stats it
            return False
        self.sent.append((row, rel_dir, names))
        self.files += len(names)
        return True

    def answer(self, timeout: float) -> list[array.array[int]] | None:
        """The helper's columns, or None where it died or answered something else."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.setblocking(True)
            self.sock.settimeout(timeout)
            data = bytearray()
            width = array.array("q").itemsize
            expected = width * (1 + len(COLUMNS) * self.files)
            while len(data) <= expected and (chunk := self.sock.recv(1 << 20)):
                data += chunk
        except OSError:
            return None
        if len(data) < width:
            return None
        count = array.array("q", data[:width])[0]
        if count != self.files or len(data) != expected:
            return None
        columns = []
        for i, kind in enumerate(COLUMNS):
            column = array.array(kind)
            column.frombytes(data[width * (1 + i * count): width * (1 + (i + 1) * count)])
            columns.append(column)
        return columns

    def close(self) -> None:
        self.sock.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class StatPool:
    """The walk's helpers: :meth:`offer` a folder while walking, :meth:`collect` the answers after."""

    ANSWER_TIMEOUT = 60.0

    def __init__(self, helpers: int) -> None:
        with open(__file__, encoding="utf-8") as fh:
            source = fh.read()
        self._helpers: list[_Helper] = []
        try:
            for _ in range(helpers):
                self._helpers.append(_Helper(source))
        except OSError:
            pass  # fewer helpers (none, maybe): the walk does the rest
        self._taken = 0

    def __enter__(self) -> StatPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for helper in self._helpers:
            helper.close()

    def offer(self, fd: int, names: list[str], row: int, rel_dir: str) -> bool:
        """Hand this folder's files (to be rows ``row`` on) to the least loaded helper, if it is less
        loaded than the walk itself (``row`` files so far, less those helpers took); False: stat them here."""
        if not self._helpers or not names:
            return False
        helper = min(self._helpers, key=lambda h: h.files)
        if helper.files > (row - self._taken) * HELPER_SHARE or not helper.send(fd, names, row, rel_dir):
            return False
        self._taken += len(names)
        return True

    def collect(self, root: str, result: WalkResult) -> list[tuple[int, str, int]]:
        """Fill the rows the helpers stat'ed into ``result``'s columns; the rows that failed, as
        (row, relative path, errno): the caller warns or raises as the walk does for its own."""
        from mltrain.snapshot.manifest import EXEC_MODE, FILE_MODE

        sizes, mtimes, inodes, modes = result.sizes, result.mtimes, result.inodes, result.modes
        failed: list[tuple[int, str, int]] = []
        for helper in self._helpers:
            answer = helper.answer(self.ANSWER_TIMEOUT)
            if answer is None:  # its folders again, here, by path
                answer = [array.array(kind) for kind in COLUMNS]
                for _, rel_dir, names in helper.sent:
                    for name in names:
                        for column, value in zip(answer, _stat_again(root, rel_dir + name), strict=True):
                            column.append(value)
            # Whole folders at a time, by slices: a step per row here cost as much as the stats it saved.
            got_sizes, got_mtimes, got_inodes, got_modes = (column.tolist() for column in answer)
            at = 0
            for row, rel_dir, names in helper.sent:
                end, count = row + len(names), len(names)
                sizes[row:end] = got_sizes[at:at + count]
                mtimes[row:end] = got_mtimes[at:at + count]
                inodes[row:end] = got_inodes[at:at + count]
                folder_modes = got_modes[at:at + count]
                modes[row:end] = [EXEC_MODE if mode & 0o100 else FILE_MODE for mode in folder_modes]
                if min(folder_modes) < 0:
                    failed += [(row + i, rel_dir + names[i], -mode) for i, mode in enumerate(folder_modes) if mode < 0]
                at += count
        return failed


def _stat_again(root: str, rel: str) -> tuple[int, int, int, int]:
    """A helper's row stat'ed here instead, by path (the folder's descriptor went with the helper)."""
    try:
        st = os.lstat(f"{root}/{rel}")
    except OSError as exc:
        return 0, 0, 0, -(exc.errno or 1)
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode
