"""A container's output as a source for the run's log mirror (``mltrain.hosts.logmirror.LogMirror``).

The engine keeps a container's log only while the container exists, and its
API serves it by time, not by byte offset. So the mirror copies it into the
run log file, and every reader reads the file by offset. What is specific to
a container is the position: the frames come with ``timestamps`` on, and the
position records, for the frames of the last second or so, how many were
written per timestamp. A copier resuming asks the engine for frames since
that second and skips the ones already counted -- so the bytes it writes
again are the same bytes.

* A mirror from the start: the executor starts a detached mirror process
  (``start_mirror``) that follows the stream into the file while the
  container lives, so the log survives the container (``docker rm -f``
  loses at most the frames the engine had not yet sent) even when no client
  watches. It ends when the container stops or vanishes, or after
  ``mltrain.hosts.logmirror.GIVE_UP`` seconds of an unreachable engine.
* A reader whose mirror is not running follows the stream in a thread of
  its own (the source ``follows``); the mirror waits for the lock, so it
  takes over from a client that dies.
* A container that is gone (404) ends the log: what the file holds stays.

The frames come from ``mltrain.targets.docker.engine.Engine.logs``
(``timestamps`` on, ``since`` the last saved second), demultiplexed by ``demux``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from mltrain.hosts.logmirror import LogMirror, LogSource, SourceGone, start_detached
from mltrain.targets.docker.engine import NotFound, demux

NAME = "docker-log"  # docker-log.json (state), docker-log.lock, docker-log-mirror.pid in the run folder
ACTIVE = ("created", "running", "paused", "restarting")  # a container in these states may still write
WINDOW_NS = 2 * 10**9  # frames can reach the log file out of timestamp order by far less than this
MAX_COUNTED = 20_000
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


class ContainerLogSource(LogSource):
    """The log stream of one container; ``engine`` is a ``docker.engine.Engine`` (a connection per thread)."""

    follows = True
    retry_after = RETRY_AFTER

    def __init__(self, container_id: str, engine: Any) -> None:
        self.container_id = container_id
        self.engine = engine
        self.since: int | None = None
        self.counts: dict[int, int] = {}
        self._stream: Any = None

    def open(self, position: Mapping[str, Any] | None, *, follow: bool) -> Iterator[bytes]:
        saved = position or {}
        self.since = saved.get("since")
        self.counts = {int(k): int(v) for k, v in (saved.get("counts") or {}).items()}
        since, to_skip = self.since, dict(self.counts)
        try:
            stream = self.engine.logs(self.container_id, follow=follow, timestamps=True,
                                      since_ns=None if since is None else max(since - 1000, 1))
        except NotFound:
            raise SourceGone(self.container_id) from None
        self._stream = stream if follow else None
        return self._frames(stream, since, to_skip)

    def _frames(self, stream: Any, since: int | None, to_skip: dict[int, int]) -> Iterator[bytes]:
        try:
            for _, frame in demux(stream):
                stamp, _, payload = frame.partition(b" ")
                ts = parse_timestamp(stamp)
                if since is not None and ts < since:
                    continue
                if to_skip.get(ts, 0) > 0:
                    to_skip[ts] -= 1
                    continue
                self.counts[ts] = self.counts.get(ts, 0) + 1
                yield payload
        finally:
            with contextlib.suppress(Exception):
                stream.close()

    def position(self) -> dict[str, Any]:
        if self.counts:
            newest = max(self.counts)
            kept = sorted(t for t in self.counts if t >= newest - WINDOW_NS)[-MAX_COUNTED:]
            self.counts = {t: self.counts[t] for t in kept}
            self.since = kept[0]
        return {"since": self.since, "counts": {str(k): v for k, v in self.counts.items()}}

    def active(self) -> bool:
        attrs = self.engine.inspect_container(self.container_id)
        return attrs is not None and attrs["State"].get("Status") in ACTIVE

    def interrupt(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def close(self) -> None:
        self.engine.close()  # this thread's connection


def container_log(log_path: Path, state_dir: Path, container_id: str, engine: Any) -> LogMirror:
    """The mirror of a container's log into the run's ``log_path``."""
    return LogMirror(log_path, state_dir, NAME, ContainerLogSource(container_id, engine))


def begin(log_path: Path, state_dir: Path) -> None:
    """Record where the container's output starts in the log file (call before the container starts)."""
    LogMirror.begin(log_path, state_dir, NAME)


def start_mirror(log_path: Path, state_dir: Path, container_id: str, engine: dict[str, Any],
                 api_version: str | None) -> int | None:
    """Start the detached mirror of a started container's log; its pid, or None.

    ``engine``: the handle's ``EngineConfig.to_dict()``.
    """
    return start_detached(log_path, state_dir, NAME, f"{__name__}:detached_source",
                          {"container": container_id, "engine": engine, "api_version": api_version})


def detached_source(params: Mapping[str, Any]) -> ContainerLogSource:
    """The source, made in the detached mirror's process (``mltrain.hosts.logmirror.detached_main``)."""
    from mltrain.targets.docker.engine import Engine
    from mltrain.targets.docker.util import EngineConfig

    engine = Engine(EngineConfig.from_dict(params["engine"]), version=params.get("api_version"))
    return ContainerLogSource(str(params["container"]), engine)
