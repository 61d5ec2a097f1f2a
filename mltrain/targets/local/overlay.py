"""Start a job inside its working directory seen as an overlay: the shared checkout below, the run's own layer above.

This file is also a program, run by this machine's Python before the job
(``python -I -S -c <this file> LOWER UPPER WORK DIR ARGV...``: standard
library only; isolated, so nothing in the job's folder can stand in for it).
It gives itself a mount namespace, mounts an overlay on ``DIR`` (the run's
``wd/``, its current directory) with the read-only checkout ``LOWER`` below
and ``UPPER`` (``.``: ``DIR`` itself, beneath the mount) above, enters it and
execs ``ARGV``. ``LOWER``, ``UPPER`` and ``WORK`` are relative to ``DIR``:
mount options cannot carry every character a path may hold, and these
relative paths hold only ids.

* Root with ``CAP_SYS_ADMIN`` needs only the mount namespace. Anyone else gets
  a user namespace too, mapping just their own uid and gid to themselves
  (Linux 5.11+ lets such a namespace mount an overlay): the job runs as the
  same user, with no capabilities, but files of other users show as owned by
  ``nobody`` and set-uid programs (``sudo``) do not raise privileges there.
* Mounts made here never propagate out (the namespace's tree is a slave of
  the host's), and the mount ends with the job's last process: the client
  removes ``DIR`` and ``WORK`` when it finalizes the run.

A failure prints one line to the run log and exits 126 before anything of
the job runs; ``--probe FOLDER`` checks that all of this works here.
"""

from __future__ import annotations

import os
import sys

# No `typing` here: this runs before every job, and importing it costs as much as starting Python (~10 ms).

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
FAILED = 126
HINT = "set compute.workdir=links to run in a tree of links instead"
MOUNT_FAILED = "mltrain: cannot mount the run's working directory"  # the log's first line when it failed


def _call(libc: object, name: str, *args: object) -> None:
    import ctypes

    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter(lower: str, upper: str, work: str, folder: str) -> None:
    """Mount the overlay on ``folder`` (this process's current directory) in namespaces of its own; enter it."""
    import ctypes  # here, not above: the client reads this module's constants without paying for ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.geteuid(), os.getegid()
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    try:
        _call(libc, "unshare", CLONE_NEWNS)
    except OSError:
        _call(libc, "unshare", CLONE_NEWUSER | CLONE_NEWNS)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
        options += ",userxattr"  # trusted.* xattrs are root's; the user namespace keeps overlay's own in user.*
    _call(libc, "mount", None, b"/", None, MS_REC | MS_SLAVE, None)
    _call(libc, "mount", b"overlay", b".", b"overlay", 0, options.encode())
    os.chdir(folder)  # the mount's top, not the folder beneath it


def probe(folder: str) -> str:
    """'' when an overlay works here: a file written into a folder of the layer below lands in ``wd/`` itself."""
    for name in ("lower", "lower/sub", "work", "wd"):
        os.mkdir(os.path.join(folder, name))
    with open(os.path.join(folder, "lower", "sub", "seen"), "w") as fh:
        fh.write("lower")
    wd = os.path.join(folder, "wd")
    below = os.open(wd, os.O_RDONLY | os.O_DIRECTORY)
    os.chdir(wd)
    enter("../lower", ".", "../work", wd)
    with open("sub/new", "w") as fh:
        fh.write("new")
    with open("sub/seen") as fh:
        seen = fh.read()
    os.stat("sub/new", dir_fd=below)  # FileNotFoundError (an OSError) if it went anywhere else
    if seen != "lower" or os.listdir(os.path.join(folder, "lower", "sub")) != ["seen"]:
        return "the overlay changed the layer below"
    return ""


def main(args: list[str]) -> int:
    if args[:1] == ["--probe"]:
        try:
            why = probe(args[1])
        except OSError as exc:
            why = str(exc.strerror or exc)
        print(why or "ok", file=sys.stderr)
        return 1 if why else 0
    try:
        lower, upper, work, folder, *argv = args
        enter(lower, upper, work, folder)
    except OSError as exc:
        print(f"{MOUNT_FAILED} ({exc.strerror or exc}); {HINT}",
              file=sys.stderr, flush=True)
        return FAILED
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"mltrain: cannot start {argv[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        return 127 if isinstance(exc, FileNotFoundError) else FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
