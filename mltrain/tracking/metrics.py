"""Log metrics from a training script, with or without mltrain installed.

This replaces Azure ML's ``run.log(name, value)``. The module is stdlib-only
and imports nothing from mltrain because it is copied next to the user's
script on targets where mltrain is not installed (``import mltrain_metrics``);
keep it that way, and keep its syntax valid on Python 3.7.

Two channels carry a metric from the script to the run record:

1. **A metrics file.** When ``$MLTRAIN_METRICS_FILE`` is set (the executor sets
   it to an absolute path), :func:`log_metric` appends one JSON object per
   line: ``{"name": "loss", "value": 0.25, "step": 3, "time": 1700000000.0}``.
   Each line goes out in a single ``write`` on a file opened with
   ``O_APPEND``, so several processes may log to the same file without
   interleaving. ``NaN`` and ``Infinity`` are written as Python's ``json``
   writes them. :func:`read_metrics_file` reads it incrementally.

2. **The stdout line protocol**, so that any language can log by printing::

       ::metric loss=0.25 acc=0.91 step=3

   The line starts with ``::metric`` at column 0, followed by whitespace and
   one or more ``name=value`` tokens separated by whitespace. A name is any
   non-empty run of characters without whitespace or ``=``; ``step`` is
   reserved and, if present, gives the (integer) step of every metric on the
   line. Values parse as Python ``float`` does (``nan``, ``inf``, ``-inf``,
   ``1e-3`` are fine). A line with any malformed token is ignored as a whole,
   so ordinary output that happens to look similar is never misread.
   Carriage returns split a line like a terminal does (a metric printed right
   after a progress bar's ``\\r`` still counts). :func:`parse_line` parses one
   line and :func:`scan_log` scans a captured log incrementally.

Without ``$MLTRAIN_METRICS_FILE``, :func:`log_metric` prints the protocol line.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

log = logging.getLogger(__name__)

METRICS_FILE_ENV = "MLTRAIN_METRICS_FILE"
PROTOCOL_PREFIX = "::metric"
#: Token name that carries the step on a protocol line; not usable as a metric name.
RESERVED_NAME = "step"

_CHUNK = 1 << 20
MAX_LINE = 64 * 1024
MAX_POINTS = 1_000_000
"""Metric points read from one file in one call; past this a job's output is flooding, not logging."""
"""A longer line (in the log or the metrics file) is skipped, never parsed."""
_T = TypeVar("_T")


@dataclass(frozen=True)
class Metric:
    """One logged value. ``time`` is ``None`` for metrics read from stdout (not timestamped)."""

    name: str
    value: float
    step: int | None
    time: float | None


def log_metric(name: str, value: float, step: int | None = None) -> None:
    """Record ``value`` for metric ``name`` (optionally at ``step``) for the current run.

    Raises ``ValueError`` for a name that could not be read back (empty,
    containing whitespace or ``=``, or the reserved ``step``), a value that is
    not a real number (``bool`` included: ``True`` is almost always a bug),
    or a step that is not an ``int``.
    """
    _check_name(name)
    number = _check_value(name, value)
    if step is not None and (isinstance(step, bool) or not isinstance(step, numbers.Integral)):
        raise ValueError(f"metric {name!r}: step must be an int or None, got {step!r}")
    step_int = None if step is None else int(step)

    path = os.environ.get(METRICS_FILE_ENV)
    if not path:
        suffix = "" if step_int is None else f" step={step_int}"
        print(f"{PROTOCOL_PREFIX} {name}={number!r}{suffix}", flush=True)
        return
    record = {"name": name, "value": number, "step": step_int, "time": time.time()}
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    _append(path, data)


def parse_line(line: str) -> list[Metric]:
    """Metrics on one stdout protocol line; ``[]`` for anything else. Never raises."""
    if not isinstance(line, str):
        return []
    found: list[Metric] = []
    for segment in line.rstrip("\r\n").split("\r"):
        found.extend(_parse_segment(segment))
    return found


def read_metrics_file(path: Path, offset: int = 0, *, final: bool = False) -> tuple[list[Metric], int]:
    """Metrics from the JSON-lines file ``path`` starting at byte ``offset``.

    Returns the metrics and the offset to resume from. A last line without its
    newline is left for the next call (its writer may be mid-write) unless
    ``final`` is true (the writer has exited). A missing file yields nothing
    (the script has not logged yet). Malformed lines are skipped with one
    warning per call.
    """
    bad: list[bytes] = []  # the first malformed line, then only a count
    bad_count = 0

    def parse(raw: bytes) -> Metric | None:
        nonlocal bad_count
        metric = _parse_json_line(raw)
        if metric is None and raw.strip():
            bad_count += 1
            if not bad:
                bad.append(raw[:200])
        return metric

    metrics, new_offset = _scan(Path(path), offset, final, parse)
    if bad_count:
        log.warning("skipped %d malformed line(s) in metrics file %s, first: %r", bad_count, path, bad[0])
    return metrics, new_offset


def scan_log(path: Path, offset: int = 0, *, final: bool = False) -> tuple[list[Metric], int]:
    """Metrics from protocol lines in the captured log ``path`` from byte ``offset``.

    Same contract as :func:`read_metrics_file`; lines that are not metric
    lines are ordinary output and silently passed over.
    """

    def parse(raw: bytes) -> list[Metric] | None:
        if PROTOCOL_PREFIX.encode() not in raw:
            return None
        return parse_line(raw.decode("utf-8", "replace")) or None

    nested, new_offset = _scan(Path(path), offset, final, parse)
    return [m for group in nested for m in group], new_offset


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")
    if "=" in name or any(ch.isspace() for ch in name):
        raise ValueError(f"metric name {name!r} must not contain whitespace or '='")
    if name == RESERVED_NAME:
        raise ValueError(f"metric name {RESERVED_NAME!r} is reserved; pass step=... instead")


def _check_value(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"metric {name!r}: value must be a real number (int or float), got {type(value).__name__} {value!r}"
        )
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError) as exc:
        raise ValueError(f"metric {name!r}: value {value!r} is not representable as a float") from exc


def _append(path: str, data: bytes) -> None:
    """Append ``data`` with one ``write`` so concurrent appenders never interleave."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def _parse_segment(segment: str) -> list[Metric]:
    if not segment.startswith(PROTOCOL_PREFIX):
        return []
    rest = segment[len(PROTOCOL_PREFIX) :]
    if not rest or not rest[0].isspace():
        return []
    pairs = []
    step = None
    for token in rest.split():
        name, sep, text = token.partition("=")
        if not sep or not name or not text:
            return []
        if name == RESERVED_NAME:
            if step is not None:
                return []
            try:
                step = int(text)
            except ValueError:
                return []
            continue
        try:
            value = float(text)
        except ValueError:
            return []
        pairs.append((name, value))
    return [Metric(name, value, step, None) for name, value in pairs]


def _parse_json_line(raw: bytes) -> Metric | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    name, value, step, stamp = obj.get("name"), obj.get("value"), obj.get("step"), obj.get("time")
    if not isinstance(name, str) or not name:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        return None
    if stamp is not None and (
        isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp)
    ):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return Metric(name, number, step, None if stamp is None else float(stamp))


def _scan(path: Path, offset: int, final: bool, parse: Callable[[bytes], _T | None]) -> tuple[list[_T], int]:
    """Apply ``parse`` to each complete line from ``offset``; keep the non-``None`` results.

    The file is the job's (hostile input): it is opened without following a link and without
    blocking, and read only if it is a regular file -- a fifo or a link left in its place by the
    job must not hang the client or make it read another file.
    """
    results: list[_T] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return results, offset
    except OSError as exc:  # ELOOP: a link in its place
        log.warning("not reading %s: %s (it is not a regular file)", path, exc.strerror)
        return results, offset
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            log.warning("not reading %s: it is not a regular file", path)
            return results, offset
        size = info.st_size
        if offset > size:
            log.warning(
                "%s shrank below offset %d (now %d bytes); reading it again from the start",
                path,
                offset,
                size,
            )
            offset = 0
        handle.seek(offset)
        dropped = 0
        for line, end in _complete_lines(handle, offset, final):
            item = parse(line)
            if item is not None:
                if len(results) < MAX_POINTS:
                    results.append(item)
                else:
                    dropped += 1
            offset = end
        if dropped:
            log.warning("kept the first %d metric points of %s; %d more were dropped", MAX_POINTS, path, dropped)
    return results, offset


def _complete_lines(handle: BinaryIO, offset: int, final: bool) -> Iterator[tuple[bytes, int]]:
    """Yield ``(line, offset after it)`` for each newline-terminated line, reading in chunks.

    A line longer than ``MAX_LINE`` is no metric: it is skipped whole without being held in memory
    (yielded as an empty line, so the caller's offset moves past it).
    """
    pending = b""
    skipping = False
    while True:
        chunk = handle.read(_CHUNK)
        if not chunk:
            break
        pending += chunk
        start = 0
        while True:
            newline = pending.find(b"\n", start)
            if newline < 0:
                break
            offset += newline + 1 - start
            yield (b"" if skipping else pending[start:newline]), offset
            skipping = False
            start = newline + 1
        pending = pending[start:]
        if len(pending) > MAX_LINE:
            offset += len(pending)
            pending = b""
            skipping = True
            yield b"", offset
    if final and pending:
        yield (b"" if skipping else pending), offset + len(pending)
