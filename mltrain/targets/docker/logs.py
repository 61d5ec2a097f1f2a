"""A container's output, copied into the run's log file so it can be read by offset from any process.

The engine keeps a container's log only while the container exists, and its
API serves it by time, not by byte offset. So the run log file is the truth:
whichever process watches the run copies new log frames into it, and every
reader reads the file by offset -- no duplicates, no gaps, even when the
client that started the run was killed and ``runs attach`` picks up later.

* A mirror from the start: ``start_mirror`` (called at launch) starts a small
  detached process that follows the stream into the file while the container
  lives, so the log survives the container (``docker rm -f`` loses at most the
  frames the engine had not yet sent) even when no client watches -- a
  ``--detach`` run, or a client that was killed. It ends when the container
  stops or vanishes, or after ``GIVE_UP`` seconds of an unreachable engine.
* One copier at a time: it holds an ``flock`` on ``docker-log.lock`` for as
  long as it copies (the mirror, or a reader's thread following the stream
  when the mirror is not running); the lock dies with its process. Others
  only read the file; the mirror waits for the lock, so it takes over from a
  client that dies.
* Resuming: ``docker-log.json`` records the file size and, for the frames of
  the last second or so, how many were written per timestamp. A new copier
  truncates the file to the recorded size (dropping anything written after
  the last save), asks the engine for frames since that second, and skips
  the ones already counted -- so the bytes it writes again are the same bytes.
* Finished: once the container has stopped, ``finish`` copies the rest (no
  call at all when this process's follower already read the stream to its
  end, which the engine sends only once the container has stopped) and marks
  the log done; from then on reading it never asks the engine again. A
  container that is gone (404) also ends the log: what the file holds stays.

The frames come from ``mltrain.targets.docker.engine.Engine.logs`` (``timestamps`` on,
``since`` the last saved second), demultiplexed by ``docker_api.demux``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from mltrain.targets.docker.engine import NotFound, demux

log = logging.getLogger(__name__)

STATE_FILE = "docker-log.json"
LOCK_FILE = "docker-log.lock"
MIRROR_PID_FILE = "docker-log-mirror.pid"
ACTIVE = ("created", "running", "paused", "restarting")  # a container in these states may still write
GIVE_UP = 600.0  # seconds of an unreachable engine after which the mirror stops (a reader takes over later)
WINDOW_NS = 2 * 10**9  # frames can reach the log file out of timestamp order by far less than this
MAX_COUNTED = 20_000
SAVE_EVERY = 0.25  # seconds between state saves while streaming
RETRY_AFTER = 0.5  # seconds before a reader tries again to become the copier
_TS = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def parse_timestamp(raw: bytes) -> int:
    """Nanoseconds since the epoch of a docker log timestamp (RFC 3339, nanoseconds)."""
    match = _TS.match(raw)
    if match is None:
        raise ValueError(f"not a docker log timestamp: {raw[:40]!r}")
    whole, fraction, zone = match.groups()
    offset = "+00:00" if zone == b"Z" else zone.decode()
    seconds = int(datetime.fromisoformat(whole.decode() + offset).timestamp())
    return seconds * 10**9 + int((fraction or b"0").decode().ljust(9, "0"))


class _Progress:
    """What the log file holds: its size, and per-timestamp counts of the newest frames written."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.size: int = int(data.get("size", 0))
        self.since: int | None = data.get("since")
        self.counts: dict[int, int] = {int(k): v for k, v in data.get("counts", {}).items()}
        self.done: bool = bool(data.get("done", False))

    def to_dict(self) -> dict[str, Any]:
        if self.counts:
            newest = max(self.counts)
            kept = sorted(t for t in self.counts if t >= newest - WINDOW_NS)[-MAX_COUNTED:]
            self.counts = {t: self.counts[t] for t in kept}
            self.since = kept[0]
        return {"size": self.size, "since": self.since, "done": self.done,
                "counts": {str(k): v for k, v in self.counts.items()}}


class ContainerLog:
    """The log of one container, mirrored into ``log_path`` (see the module docstring)."""

    def __init__(self, log_path: Path, state_dir: Path, container_id: str, engine: Any) -> None:
        self.log_path = Path(log_path)
        self.state_path = Path(state_dir) / STATE_FILE
        self.lock_path = Path(state_dir) / LOCK_FILE
        self.container_id = container_id
        self._engine = engine  # a docker_api.Engine: each thread gets its own connection
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self._stop = threading.Event()
        self._done = False
        self._followed_to_end = False  # the follower read the stream until the engine ended it
        self._next_try = 0.0

    @classmethod
    def begin(cls, log_path: Path, state_dir: Path) -> None:
        """Record where the container's output starts in the log file (call before the container starts)."""
        size = log_path.stat().st_size if log_path.exists() else 0
        _write_json(Path(state_dir) / STATE_FILE, _Progress({"size": size}).to_dict())

    # ----------------------------------------------------------------- reading
    def read(self, offset: int) -> tuple[bytes, int]:
        if not self._done:
            self._ensure_copier()
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return b"", offset
        return data, offset + len(data)

    def _ensure_copier(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        now = time.monotonic()
        if now < self._next_try:
            return
        self._next_try = now + RETRY_AFTER
        lock = self._try_lock(block=False)
        if lock is None:
            return
        try:
            progress = self._load()
            if not progress.done:
                self._copy(progress, follow=False)  # what is there now, before returning to the reader
            if progress.done:  # complete, or the container is gone: nothing more will come
                self._done = True
                os.close(lock)
                return
        except Exception as exc:
            os.close(lock)
            log.debug("catching up the log of %s failed: %s", self.container_id[:12], exc)
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, args=(lock,), name="mltrain-docker-log", daemon=True)
        self._thread.start()

    def _follow(self, lock: int) -> None:
        try:
            self._copy(self._load(), follow=True)
            self._followed_to_end = not self._stop.is_set()
        except Exception as exc:
            if not self._stop.is_set():
                log.debug("following the log of %s stopped: %s", self.container_id[:12], exc)
        finally:
            os.close(lock)
            self._engine.close()  # this thread's connection

    # -------------------------------------------------------------- finishing
    def finish(self, wait: float = 10.0) -> bool:
        """The container has stopped: copy the rest, mark the log complete. False if another copier hung."""
        if self._done:
            return True
        if self._thread is not None:
            self._thread.join(wait)
            if self._thread.is_alive():
                self._stop.set()
                with contextlib.suppress(Exception):
                    self._stream.close()
                self._thread.join(1.0)
        deadline = time.monotonic() + wait
        lock = self._try_lock(block=False)
        while lock is None and time.monotonic() < deadline:
            time.sleep(0.05)
            lock = self._try_lock(block=False)
        if lock is None:
            log.warning("the log of container %s is being copied by a process that does not finish; "
                        "it may be incomplete", self.container_id[:12])
            return False
        try:
            progress = self._load()
            if not progress.done:
                if not self._followed_to_end:
                    self._copy(progress, follow=False)
                progress.done = True
                _write_json(self.state_path, progress.to_dict())
        finally:
            os.close(lock)
        self._done = True
        return True

    # ---------------------------------------------------------------- copying
    def _copy(self, progress: _Progress, *, follow: bool) -> None:
        """Append the frames the file lacks; with ``follow``, until the container stops.

        A container that is gone ends the log as it is (``progress.done``): the
        file keeps even bytes written after the last save, which can no longer
        be asked for again.
        """
        since = progress.since
        to_skip = dict(progress.counts)
        try:
            stream = self._engine.logs(self.container_id, follow=follow, timestamps=True,
                                       since_ns=None if since is None else max(since - 1000, 1))
        except NotFound:
            progress.size = self.log_path.stat().st_size if self.log_path.exists() else progress.size
            progress.done = True
            _write_json(self.state_path, progress.to_dict())
            return
        if self.log_path.exists() and self.log_path.stat().st_size > progress.size:
            os.truncate(self.log_path, progress.size)
        self._stream = stream if follow else None
        saved = time.monotonic()
        with open(self.log_path, "ab") as out:
            try:
                for _, frame in demux(stream):
                    stamp, _, payload = frame.partition(b" ")
                    ts = parse_timestamp(stamp)
                    if since is not None and ts < since:
                        continue
                    if to_skip.get(ts, 0) > 0:
                        to_skip[ts] -= 1
                        continue
                    out.write(payload)
                    progress.counts[ts] = progress.counts.get(ts, 0) + 1
                    if follow:
                        out.flush()
                        if time.monotonic() - saved > SAVE_EVERY:
                            progress.size = out.tell()
                            _write_json(self.state_path, progress.to_dict())
                            saved = time.monotonic()
            finally:
                with contextlib.suppress(Exception):
                    stream.close()
                out.flush()
                progress.size = out.tell()
                _write_json(self.state_path, progress.to_dict())

    # ---------------------------------------------------------------- mirror
    def mirror(self) -> None:
        """The detached mirror's work: copy the log until the container has stopped or is gone.

        Waits for the lock while a client copies (and takes over if that client
        dies); a broken stream is resumed; an engine unreachable for
        ``GIVE_UP`` seconds ends it (readers catch up later, from the file).
        """
        lock = self._try_lock(block=True)
        assert lock is not None
        failing_since: float | None = None
        try:
            while True:
                progress = self._load()
                if progress.done:
                    return
                try:
                    self._copy(progress, follow=True)
                    if progress.done:
                        return
                    attrs = self._engine.inspect_container(self.container_id)
                except Exception as exc:
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > GIVE_UP:
                        return
                    log.debug("mirroring the log of %s: %s", self.container_id[:12], exc)
                    time.sleep(min(10.0, 0.5 + (now - failing_since) / 4))
                    continue
                failing_since = None
                if attrs is None or attrs["State"].get("Status") not in ACTIVE:
                    progress = self._load()
                    progress.done = True
                    _write_json(self.state_path, progress.to_dict())
                    return
                time.sleep(RETRY_AFTER)  # the stream ended but the container goes on: follow it again
        finally:
            os.close(lock)
            self._engine.close()

    def _load(self) -> _Progress:
        try:
            return _Progress(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return _Progress({"size": 0})

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
_BOOT = "import os, sys\nos.setsid()\nfrom mltrain.targets.docker.logs import _mirror_main\n_mirror_main(sys.argv[1])\n"


def start_mirror(log_path: Path, state_dir: Path, container_id: str, engine: dict[str, Any],
                 api_version: str | None) -> int | None:
    """Start the detached mirror of a started container's log (``ContainerLog.mirror``); its pid, or None.

    Its own session (see ``_BOOT``), no inherited stdio (a caller capturing the client's output must not wait for
    it), reaped by a thread here if it ends first. ``engine``: the handle's
    ``EngineConfig.to_dict()``.
    """
    if not sys.executable:
        return None
    args = json.dumps({"log": str(log_path), "dir": str(state_dir), "container": container_id,
                       "engine": engine, "api_version": api_version})
    try:
        proc = subprocess.Popen([sys.executable, "-c", _BOOT, args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=state_dir)
    except OSError as exc:
        log.warning("could not start the log mirror of container %s (%s); the log is copied while "
                    "someone watches the run", container_id[:12], exc)
        return None
    threading.Thread(target=proc.wait, name="mltrain-docker-log-reaper", daemon=True).start()
    with contextlib.suppress(OSError):  # for people and tests looking; nothing depends on it
        (Path(state_dir) / MIRROR_PID_FILE).write_text(f"{proc.pid}\n")
    return proc.pid


def _mirror_main(arg: str) -> None:
    from mltrain.targets.docker.engine import Engine
    from mltrain.targets.docker.util import EngineConfig

    params = json.loads(arg)
    engine = Engine(EngineConfig.from_dict(params["engine"]), version=params.get("api_version"))
    ContainerLog(Path(params["log"]), Path(params["dir"]), str(params["container"]), engine).mirror()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
