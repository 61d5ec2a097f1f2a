"""Start a job inside its working directory seen as an overlay: the shared checkout below, the run's own layer above.

:func:`command` is the argv put before the job's own: util-linux's ``unshare``
gives the process a mount namespace, ``sh`` mounts an overlay on ``FOLDER``
(the run's ``wd/``, its current directory) with the read-only checkout
``lower`` below and ``upper`` (``.``: ``FOLDER`` itself, beneath the mount)
above, enters it and execs the job, so the job keeps the pid the client
started. Compiled programs, not a Python helper: a Python start was ~15 ms of
CPU on every trial of a sweep, this chain is ~5 ms (``benchmarks/bench_sweep.py``).
``lower``, ``upper`` and ``work`` are relative to ``FOLDER``: mount options
cannot carry every character a path may hold, and these relative paths hold
only ids.

* ``root`` style (a process with ``CAP_SYS_ADMIN``) needs only the mount
  namespace.
* ``user`` style, for anyone else: a user namespace too, where the mount is
  made as the namespace's root (Linux 5.11+ lets such a namespace mount an
  overlay), then a nested one mapping the user back to themselves
  (``unshare --map-user``, util-linux 2.38+). The job runs as the same user,
  with no capabilities, but files of other users show as owned by ``nobody``
  and set-uid programs (``sudo``) do not raise privileges there.
* Mounts made here never propagate out (the namespace's tree is a slave of
  the host's), and the mount ends with the job's last process: the client
  removes ``FOLDER`` and ``work`` when it finalizes the run.

A failed mount prints one line to the run log, starting with
:data:`MOUNT_FAILED`, and exits :data:`FAILED` before anything of the job
runs; an ``unshare`` refused by the kernel prints its own ``unshare:`` line.
:func:`probe` checks that all of this works here.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
from typing import Final

STYLES: Final = ("root", "user")
FAILED: Final = 126
HINT: Final = "set compute.workdir=links to run in a tree of links instead"
MOUNT_FAILED: Final = "mltrain: cannot mount the run's working directory"  # the log's first line when it failed
UNSHARE_FAILED: Final = "unshare: "  # util-linux's own line when the kernel refuses the namespaces
TOOLS: Final = ("unshare", "sh", "mount")

# $1 mount, $2 options, $3 folder, then the job. mount's own complaint is kept (its first line) inside ours.
_SCRIPT: Final = f"""m=$1 o=$2 d=$3; shift 3
said=$("$m" -n -t overlay -o "$o" overlay . 2>&1) || {{
  said=${{said%%"
"*}}; printf '%s (%s); %s\\n' {shlex.quote(MOUNT_FAILED)} "$said" {shlex.quote(HINT)} >&2; exit {FAILED}; }}
cd -P -- "$d" || exit {FAILED}
exec "$@\""""


@functools.cache
def tools() -> dict[str, str] | None:
    """Where ``unshare``, ``sh`` and ``mount`` are (absolute: the job's ``PATH`` does not pick them), or None."""
    found = {name: shutil.which(name, path=os.defpath + ":/usr/sbin:/sbin") or "" for name in TOOLS}
    return found if all(found.values()) else None


def command(style: str, lower: str, upper: str, work: str, folder: str, argv: list[str] | tuple[str, ...],
            *, found: dict[str, str] | None = None) -> list[str]:
    """The argv that runs ``argv`` in ``folder`` seen as an overlay (the caller starts it with ``cwd=folder``)."""
    found = found or tools()
    if found is None:
        raise OSError(2, f"{', '.join(TOOLS)} are needed for an overlay working directory")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    namespaces = ["--mount"]
    if style == "user":
        namespaces = ["--user", "--map-root-user", "--mount"]
        options += ",userxattr"  # trusted.* xattrs are root's; the user namespace keeps overlay's own in user.*
        argv = [found["unshare"], f"--map-user={os.geteuid()}", f"--map-group={os.getegid()}", "--", *argv]
    return [found["unshare"], *namespaces, "--propagation", "slave", "--",
            found["sh"], "-c", _SCRIPT, "sh", found["mount"], options, folder, *argv]


def reason(stderr: str, returncode: int) -> str:
    """Why a start through :func:`command` failed, in a few words (its last line, less our own framing)."""
    lines = stderr.strip().splitlines() or [f"exited {returncode}"]
    line = lines[-1]
    if line.startswith(MOUNT_FAILED):
        line = line[len(MOUNT_FAILED):].removesuffix(f"; {HINT}").strip(" ()") or line
    return line


def probe(folder: str, style: str, timeout: float) -> str:
    """'' when ``style`` works here: a file written into a folder of the layer below lands in ``wd/`` itself."""
    for name in ("lower", "lower/sub", "work", "wd"):
        os.mkdir(os.path.join(folder, name))
    with open(os.path.join(folder, "lower", "sub", "seen"), "w") as fh:
        fh.write("lower\n")
    wd = os.path.join(folder, "wd")
    found = tools()
    if found is None:
        return f"{', '.join(TOOLS)} (util-linux) not found"
    job = [found["sh"], "-c", 'read -r seen < sub/seen && echo "$seen" && echo new > sub/new']
    try:
        done = subprocess.run(command(style, "../lower", ".", "../work", wd, job), cwd=wd, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=timeout, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the overlay probe failed ({exc})"
    if done.returncode != 0:
        return reason(done.stderr, done.returncode)
    if done.stdout.strip() != "lower" or not os.path.isfile(os.path.join(wd, "sub", "new")):
        return "the overlay did not show the layer below, or kept the run's files elsewhere"
    if os.listdir(os.path.join(folder, "lower", "sub")) != ["seen"]:
        return "the overlay changed the layer below"
    return ""
