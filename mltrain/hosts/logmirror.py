"""A log written elsewhere, copied into the run's ``output.log`` so any process reads it by offset.

Two targets write their job's log away from the run folder: an SSH host
(``<remote_dir>/runs/<id>/output.log``, read by byte offset:
``HostLogSource``) and a Docker engine (a container's log stream, served by
time: ``mltrain.targets.docker.logs.ContainerLogSource``). One ``LogMirror``
copies either into the local file, and every reader reads that file -- no
duplicates, no gaps, even when the client that started the run was killed
and ``runs attach`` picks up later.

* Its own state: ``<name>.json`` in the run folder records how many bytes of
  the local file are accounted for (``size``), the source's position after
  them (``position``: a byte offset on a host, timestamps and counts for a
  container) and whether the log is complete (``done``). The position is
  never derived from the local file's size: mltrain writes its own lines
  there too, and finalize rewrites the file without terminal codes.
* One copier at a time: it holds an ``flock`` on ``<name>.lock`` for as long
  as it copies; the lock dies with its process. Others only read the file.
* Resuming: a new copier truncates the file to the recorded ``size``
  (dropping what a copier that died wrote after its last save) and asks the
  source for what comes after the recorded position -- so the bytes it
  writes again are the same bytes, at the same offsets.
* Finished: once the job has ended, ``finish`` copies the rest and marks the
  log done; from then on nothing copies into the file again, and reading it
  never asks the source.
* Detached: ``start_detached`` starts a small process of its own that follows
  the source until it ends, watched or not -- so a container removed behind
  mltrain's back (``docker rm -f``) leaves its log up to the last second.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mltrain.hosts.base import LOG_LIMIT, Host

log = logging.getLogger(__name__)

GIVE_UP = 600.0  # seconds of an unreachable source after which the detached mirror stops (a reader takes over)
SAVE_EVERY = 0.25  # seconds between state saves while streaming
RETRY_AFTER = 0.5  # seconds the detached mirror waits before following a source that is still active again


class SourceGone(Exception):
    """The source no longer exists (a removed container): the log ends as the file holds it."""


class LogSource(ABC):
    """Where a mirrored log comes from."""

    follows: ClassVar[bool] = False  # it can stream bytes as they are written: a reader keeps a thread on it
    retry_after: ClassVar[float] = 0.0  # seconds between a reader's attempts to catch up

    @abstractmethod
    def open(self, position: Mapping[str, Any] | None, *, follow: bool) -> Iterator[bytes]:
        """The bytes after ``position`` (None: from the start), each advancing ``position()``.

        With ``follow``, until the source ends. Raises ``SourceGone`` here,
        before any byte, when there is nothing to ask any more.
        """

    @abstractmethod
    def position(self) -> dict[str, Any]:
        """Where the bytes after those yielded so far start (stored in the mirror's state)."""

    def active(self) -> bool:
        """Whether the source may still grow (asked by the detached mirror when a stream ends)."""
        return True

    def interrupt(self) -> None:  # noqa: B027 (optional hook)
        """Unblock a following ``open`` from another thread."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Free what the calling thread used (a connection)."""


class HostLogSource(LogSource):
    """A job's log on a Host, read by byte offset."""

    def __init__(self, host: Host, run_id: str, chunk: int = LOG_LIMIT) -> None:
        self.host = host
        self.run_id = run_id
        self.chunk = chunk
        self._offset = 0

    def open(self, position: Mapping[str, Any] | None, *, follow: bool) -> Iterator[bytes]:
        self._offset = int((position or {}).get("offset", 0))
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        while True:
            data = self.host.read_log(self.run_id, self._offset, self.chunk)
            if not data:
                return
            self._offset += len(data)
            yield data
            if len(data) < self.chunk:
                return

    def position(self) -> dict[str, Any]:
        return {"offset": self._offset}

    def active(self) -> bool:
        return self.host.poll(self.run_id).running


@dataclass
class _State:
    size: int | None  # bytes of the local file accounted for; None: never begun, nothing to truncate to
    position: dict[str, Any] | None
    done: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "position": self.position, "done": self.done}


class LogMirror:
    """The log of one job, mirrored into ``log_path`` (see the module docstring).

    ``name`` names the state and lock files in ``state_dir`` (the run folder).
    """

    def __init__(self, log_path: Path, state_dir: Path, name: str, source: LogSource) -> None:
        self.log_path = Path(log_path)
        self.state_path = Path(state_dir) / f"{name}.json"
        self.lock_path = Path(state_dir) / f"{name}.lock"
        self.source = source
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._done = False
        self._followed_to_end = False  # this process's follower read the stream until the source ended it
        self._next_try = 0.0

    @staticmethod
    def begin(log_path: Path, state_dir: Path, name: str, position: dict[str, Any] | None = None) -> None:
        """Record where the job's log starts in the local file (call before the job starts)."""
        size = log_path.stat().st_size if log_path.exists() else 0
        _write_json(Path(state_dir) / f"{name}.json", _State(size, position).to_dict())

    # ----------------------------------------------------------------- reading
    def read(self, offset: int) -> tuple[bytes, int]:
        """The local file from ``offset`` on (after catching up, unless another copier is at it)."""
        if not self._done:
            self.catch_up()
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return b"", offset
        return data, offset + len(data)

    def catch_up(self) -> None:
        """Copy what the source has beyond the file, unless another copier holds the lock.

        A source that streams is then followed by a thread of this process
        (holding the lock), so the next reads find the bytes already there.
        A failing source (a dropped link) leaves the file as it is.
        """
        if self._thread is not None and self._thread.is_alive():
            return
        now = time.monotonic()
        if now < self._next_try:
            return
        self._next_try = now + self.source.retry_after
        lock = self._try_lock(block=False)
        if lock is None:
            return
        try:
            state = self._load()
            if not state.done:
                self._copy(state, follow=False)
            if state.done:  # complete, or the source is gone: nothing more will come
                self._done = True
                os.close(lock)
                return
        except Exception as exc:
            os.close(lock)
            log.debug("catching up the log %s failed: %s", self.log_path, exc)
            return
        if not self.source.follows:
            os.close(lock)
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, args=(lock,), name="mltrain-log-mirror", daemon=True)
        self._thread.start()

    def _follow(self, lock: int) -> None:
        try:
            self._copy(self._load(), follow=True)
            self._followed_to_end = not self._stop.is_set()
        except Exception as exc:
            if not self._stop.is_set():
                log.debug("following the log %s stopped: %s", self.log_path, exc)
        finally:
            os.close(lock)
            self.source.close()  # this thread's connection

    # -------------------------------------------------------------- finishing
    @property
    def done(self) -> bool:
        return self._done or self._load().done

    def finish(self, wait: float = 10.0) -> bool:
        """The job has ended: copy the rest, mark the log complete. False if another copier hung.

        An error of the source (a dropped link) is raised, and the log stays
        open: a later ``finish`` copies the rest.
        """
        if self._done:
            return True
        if self._thread is not None:
            self._thread.join(wait)
            if self._thread.is_alive():
                self._stop.set()
                with contextlib.suppress(Exception):
                    self.source.interrupt()
                self._thread.join(1.0)
        deadline = time.monotonic() + wait
        lock = self._try_lock(block=False)
        while lock is None and time.monotonic() < deadline:
            time.sleep(0.05)
            lock = self._try_lock(block=False)
        if lock is None:
            log.warning("the log %s is being copied by a process that does not finish; it may be incomplete",
                        self.log_path)
            return False
        try:
            state = self._load()
            if not state.done:
                if not self._followed_to_end:
                    self._copy(state, follow=False)
                state.done = True
                _write_json(self.state_path, state.to_dict())
        finally:
            os.close(lock)
        self._done = True
        return True

    # ---------------------------------------------------------------- copying
    def _copy(self, state: _State, *, follow: bool) -> None:
        """Append what the file lacks; with ``follow``, until the source ends it.

        A source that is gone ends the log as it is (``state.done``): the file
        keeps even bytes written after the last save, which can no longer be
        asked for again. A write that fails saves nothing: the next copier
        starts again from the last save.
        """
        try:
            stream = self.source.open(state.position, follow=follow)
        except SourceGone:
            if self.log_path.exists():
                state.size = self.log_path.stat().st_size
            state.done = True
            _write_json(self.state_path, state.to_dict())
            return
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        if state.size is not None and size < state.size:
            # shorter than what was copied: rewritten since (finalize strips terminal codes once the run ended);
            # copying on would put the source's bytes at the wrong place, so the log ends as it is
            with contextlib.suppress(Exception):
                stream.close()  # type: ignore[attr-defined]
            state.size, state.done = size, True
            _write_json(self.state_path, state.to_dict())
            return
        if state.size is not None and size > state.size:
            os.truncate(self.log_path, state.size)
        saved = time.monotonic()
        with open(self.log_path, "ab") as out:
            unsaved = False  # bytes written since the last save
            failed = False  # a write failed: nothing is saved, the next copier starts from the last save
            try:
                for data in stream:
                    failed = unsaved = True
                    out.write(data)
                    if follow:
                        out.flush()
                    failed = False
                    if time.monotonic() - saved > SAVE_EVERY:
                        self._save(state, out)
                        saved, unsaved = time.monotonic(), False
            finally:
                with contextlib.suppress(Exception):
                    stream.close()  # type: ignore[attr-defined]
                if unsaved and not failed:
                    self._save(state, out)

    def _save(self, state: _State, out: Any) -> None:
        out.flush()
        state.size = out.tell()
        state.position = self.source.position()
        _write_json(self.state_path, state.to_dict())

    # --------------------------------------------------------------- detached
    def run_detached(self) -> None:
        """The detached mirror's work: copy the log until the source has ended or is gone.

        Waits for the lock while a client copies (and takes over if that client
        dies); a broken stream is resumed; a source unreachable for ``GIVE_UP``
        seconds ends it (readers catch up later, from the file).
        """
        lock = self._try_lock(block=True)
        assert lock is not None
        failing_since: float | None = None
        try:
            while True:
                state = self._load()
                if state.done:
                    return
                try:
                    self._copy(state, follow=True)
                    if state.done:
                        return
                    active = self.source.active()
                except Exception as exc:
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > GIVE_UP:
                        return
                    log.debug("mirroring the log %s: %s", self.log_path, exc)
                    time.sleep(min(10.0, 0.5 + (now - failing_since) / 4))
                    continue
                failing_since = None
                if not active:
                    state = self._load()
                    state.done = True
                    _write_json(self.state_path, state.to_dict())
                    return
                time.sleep(RETRY_AFTER)  # the stream ended but the source goes on: follow it again
        finally:
            os.close(lock)
            self.source.close()

    def _load(self) -> _State:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return _State(None, None)
        return _State(data.get("size"), data.get("position"), bool(data.get("done", False)))

    def _try_lock(self, *, block: bool) -> int | None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        return fd


# its own session first thing (a terminal's Ctrl-C is the client's to handle); not Popen's start_new_session,
# which costs a full fork (4 ms here) instead of a vfork (0.3 ms)
_BOOT = "import os, sys\nos.setsid()\nfrom mltrain.hosts.logmirror import detached_main\ndetached_main(sys.argv[1])\n"


def start_detached(log_path: Path, state_dir: Path, name: str, factory: str, params: Mapping[str, Any]) -> int | None:
    """Start a process that mirrors the log until its source ends (``LogMirror.run_detached``); its pid, or None.

    ``factory`` (``module:function``) makes the source in that process from
    ``params`` (JSON). Its own session (see ``_BOOT``), no inherited stdio (a
    caller capturing the client's output must not wait for it), reaped by a
    thread here if it ends first. Its pid goes to ``<name>-mirror.pid``.
    """
    if not sys.executable:
        return None
    args = json.dumps({"log": str(log_path), "dir": str(state_dir), "name": name, "factory": factory,
                       "params": dict(params)})
    try:
        proc = subprocess.Popen([sys.executable, "-c", _BOOT, args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=state_dir)
    except OSError as exc:
        log.warning("could not start the mirror of the log %s (%s); it is copied while someone watches the run",
                    log_path, exc)
        return None
    threading.Thread(target=proc.wait, name="mltrain-log-mirror-reaper", daemon=True).start()
    with contextlib.suppress(OSError):  # for people and tests looking; nothing depends on it
        (Path(state_dir) / f"{name}-mirror.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def detached_main(arg: str) -> None:
    params = json.loads(arg)
    module, _, function = str(params["factory"]).partition(":")
    source = getattr(importlib.import_module(module), function)(params["params"])
    LogMirror(Path(params["log"]), Path(params["dir"]), str(params["name"]), source).run_detached()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from mltrain.hosts.agent import write_atomic

    write_atomic(os.fspath(path), json.dumps(data).encode())
