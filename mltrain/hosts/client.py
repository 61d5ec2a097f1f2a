"""The submitting client, as a run it prepares records it: so a run is never left in ``Preparing`` for ever.

Between ``Queued`` and ``Running`` only the client that submitted a run can move it on: it takes the
snapshot, builds the environment (pip, ensurepip, uv, an image build), uploads the code, launches. If it
dies there (killed, its terminal closed, the machine rebooted), nobody else would. So the row carries the
client's identity (``identity``: pid, the kernel's start time of that pid, and which machine and pid
namespace they belong to) and whoever reads the run next (``executors.base.reconcile``) checks it: a client
that is gone means the run failed before it started (``client_state``).

**Its children.** What the client started while preparing must not outlive it: a pip still writing into a
venv folder that the next build clears, a build hook running for minutes. The children are found by process
group, not by name or parentage (an orphan's parent is init):

* ``PrepGroup``, entered for the whole of the preparation, starts on first need a *keeper*: a ``/bin/sh``
  in a new process group of its own, reading a pipe whose only writer is the client. Every command the
  local runner (``mltrain.hosts.runner.LocalRunner``) starts while the group is current joins that group
  (``Popen(process_group=...)``), and so do their own children (pip's build hooks), unless they leave it.
* When the client closes the pipe -- at the end of preparation, on Ctrl-C, or by dying, since the kernel
  closes a dead process's files -- the keeper reads end-of-file and SIGKILLs its whole group, itself
  included. No polling, no thread in the client.
* The keeper's pid and start time go on the row, so a reader that finds the client dead and the keeper
  still there (another process holds the pipe open: a fork of the client, say) kills the group itself
  (``stop_group``); the start time guards against a recycled pid. (A *stopped* member needs neither: the
  kernel sends SIGHUP to a process group that loses its last parent outside it while one is stopped.)

Why not ``PR_SET_PDEATHSIG``: it needs ``preexec_fn``, which is not safe while other threads run (sweep
trials prepare in a thread pool); it fires when the *thread* that forked the child exits, not the process;
and it reaches only direct children, not pip's build hooks. Why not the client's own process group: a
client started by a script or a sweep shares its parent's group, which must not be killed. ``Popen``'s
``process_group`` (Python 3.11+) calls ``setpgid`` between fork and exec in C: safe from any thread. The
group is per thread of preparation (a ``ContextVar``), so concurrent trials each have their own. Before
3.11 children are not grouped (the run is still marked failed; what it left runs to its end).

A grouped child is in a background process group of the client's terminal: it cannot read the terminal (a
prompt for a password -- ssh or git fetching a ``git+ssh://`` requirement -- stops it until Ctrl-C ends the
preparation). Preparation never prompts anyway (its stdin is /dev/null): give credentials through an agent,
a keyring or ``.netrc``.

Remote children are not covered here: an SSH host's helper runs its commands over the connection that dies
with the client; an image build runs in the Docker engine, which ends it when the client's connection drops.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from mltrain.hosts.agent import boot_id, start_time

log = logging.getLogger(__name__)

GROUPS_SUPPORTED = sys.version_info >= (3, 11)
CLIENT_GRACE = 2.0
"""Seconds after a run was created before a reader may judge its client dead. The judgement is exact (pid and
start time on the same machine and pid namespace) and cannot race the client's own writes (the status change is
guarded), so this is only a margin: a run written a moment ago is never failed on a reading of /proc."""

KEEPER = "read _ ; kill -s KILL 0"  # end-of-file on stdin: SIGKILL to this process group, the keeper included

_current: ContextVar[PrepGroup | None] = ContextVar("mltrain_prep_group", default=None)


def machine_key() -> str | None:
    """This boot of this machine, and this pid namespace: where a recorded pid means the same process."""
    boot = boot_id()
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot}/{namespace}" if boot else None


def identity() -> dict[str, Any]:
    """This process, as recorded on the runs it submits (a fresh dict: callers add to it)."""
    return dict(_identity(os.getpid(), os.environ.get("MLTRAIN_BOOT_ID_FILE")))


@functools.lru_cache(maxsize=4)
def _identity(pid: int, boot_id_file: str | None) -> dict[str, Any]:
    """Read once per process (a fork is another pid): three reads of /proc and the boot id were ~0.1 ms of each
    trial a sweep submits. ``boot_id_file`` keys it too: what tests point the boot id at instead of the kernel's."""
    return {"pid": pid, "start_time": start_time(pid), "machine": machine_key()}


def _same_process(pid: Any, started: Any) -> bool:
    return isinstance(pid, int) and started is not None and start_time(pid) == started


def client_state(client: dict[str, Any] | None) -> str:
    """``alive``, ``dead``, or ``unknown`` (no record, another machine or pid namespace, no /proc)."""
    if not client or not client.get("start_time") or not client.get("machine") or client["machine"] != machine_key():
        return "unknown"
    return "alive" if _same_process(client.get("pid"), client["start_time"]) else "dead"


def stop_group(client: dict[str, Any] | None) -> bool:
    """SIGKILL the preparation group recorded in ``client`` if its keeper is still the process recorded."""
    group = (client or {}).get("group") or {}
    if not client or client.get("machine") != machine_key() or not _same_process(group.get("pid"),
                                                                                  group.get("start_time")):
        return False
    try:
        os.killpg(int(group["pid"]), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def child_popen_kwargs() -> dict[str, Any]:
    """``Popen`` arguments for a command started now: join the current preparation group, if any."""
    group = _current.get()
    pgid = group.pgid() if group is not None else None
    return {"process_group": pgid} if pgid is not None else {}


class PrepGroup:
    """The process group of one run's preparation (see the module docstring). Use it as a ``with`` block.

    ``on_start`` receives ``{"pid", "start_time"}`` of the keeper once it runs, to put on the run's row.
    """

    def __init__(self, on_start: Callable[[dict[str, Any]], None]) -> None:
        self._on_start = on_start
        self._keeper: subprocess.Popen[bytes] | None = None
        self._writer: int | None = None
        self._failed = False
        self._lock = threading.Lock()
        self._token: Token[PrepGroup | None] | None = None

    def __enter__(self) -> PrepGroup:
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        self.close()

    def pgid(self) -> int | None:
        """The group to start children in (the keeper starts on first call); None where groups cannot work."""
        if not GROUPS_SUPPORTED:
            return None
        with self._lock:
            if self._keeper is None and not self._failed:
                self._start()
            if self._keeper is None or self._keeper.poll() is not None:
                return None  # it could not start, or someone killed it: children run ungrouped
            return self._keeper.pid

    def _start(self) -> None:
        reader, writer = os.pipe()  # both close-on-exec: no other child inherits the writer
        try:
            keeper = subprocess.Popen(
                ["/bin/sh", "-c", KEEPER], stdin=reader, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                close_fds=True, process_group=0,
            )
        except OSError as exc:
            log.warning("preparation children will not be grouped: %s", exc)
            os.close(writer)
            self._failed = True
            return
        finally:
            os.close(reader)
        self._keeper, self._writer = keeper, writer
        try:
            self._on_start({"pid": keeper.pid, "start_time": start_time(keeper.pid)})
        except Exception as exc:  # the group still ends with the client; only a reader's fallback is lost
            log.warning("could not record the preparation group: %s", exc)

    def close(self) -> None:
        """End the group: the keeper kills whatever is left in it, then itself."""
        with self._lock:
            if self._writer is not None:
                os.close(self._writer)
                self._writer = None
            if self._keeper is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._keeper.wait(5.0)
