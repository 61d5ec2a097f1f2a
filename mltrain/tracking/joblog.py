"""What mltrain reads back from a job's log once it has ended: why it failed, and the log without terminal codes.

Both read hostile input (whatever the job printed), so both are bounded: the error line is looked for in the
log's last ``TAIL_BYTES`` only, and cleaning streams the file in ``CHUNK``-sized pieces.

* ``error_line``: the one line that says why a run failed -- the last line of the last uncaught Python
  traceback (``ValueError: bad value 3``; for a chained exception the one raised last, for an exception group
  the group's own line), a ``SyntaxError`` (which Python prints without a ``Traceback`` header), else a JVM's
  ``Exception in thread "main" ...`` or a program's closing ``Error: ...`` line. Every target's reason comes
  from here (``executors.base.finalize``).
* ``clean_log``: terminal escape sequences (colours, cursor moves, titles, hyperlinks) removed from the stored
  log, so ``runs logs`` piped to a file, a reason, or a search shows text. A log without ESC -- most logs --
  is read once and never rewritten. Carriage returns (progress bars) are kept: they are text, and a terminal
  that replays the log draws the bar as it was.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

TAIL_BYTES = 64 * 1024  # where the error line is looked for
CHUNK = 1 << 20  # cleaning reads and writes this much at a time
_CARRY = 4096  # an escape sequence cut by a chunk boundary is finished in the next chunk, if shorter than this
MAX_LINES_AFTER = 50  # a traceback followed by more output than this was handled, not what ended the job
_CLOSING_LINES = 5  # an ``Error: ...`` line counts only among the last few lines

# ECMA-48: CSI (ESC [ params intermediates final), OSC (ESC ] ... BEL or ST), DCS/SOS/PM/APC strings
# (ESC P|X|^|_ ... ST), and the two-byte (and nF: ESC intermediates final) escapes; a lone ESC last.
# A string never runs past a newline: an unterminated title must not swallow the lines after it.
# 8-bit C1 controls are left alone: in UTF-8 text those bytes are parts of characters.
ANSI = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b\n]*(?:\x07|\x1b\\)|[PX^_][^\x1b\n]*\x1b\\|[ -/]*[0-~])?"
)
_ANSI_TEXT = re.compile(ANSI.pattern.decode("latin-1"))

_SPARK_LOG_LINE = re.compile(r"^(\d\d/\d\d/\d\d \d\d:\d\d:\d\d |\{\"ts\": |\tat |\s*\.\.\. \d+ more)")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(: |$)")
_TRACEBACK = "Traceback (most recent call last):"
_GROUP_TRACEBACK = "  + Exception Group Traceback (most recent call last):"
_GROUP_LINE = "  | "
_SYNTAX_ERROR = re.compile(r"^(SyntaxError|IndentationError|TabError)(: |$)")
_FILE_LINE = re.compile(r'^  File ".*", line \d+')


def strip_ansi(data: bytes) -> bytes:
    return ANSI.sub(b"", data)


def strip_ansi_text(text: str) -> str:
    return _ANSI_TEXT.sub("", text) if "\x1b" in text else text


# ------------------------------------------------------------- the reason
def read_tail(path: Path, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes of ``path`` as text ("" if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - limit))
            return fh.read(limit).decode(errors="replace")
    except FileNotFoundError:
        return ""


def error_line(tail: str) -> str | None:
    """The line that says why the job failed (see the module docstring), or None when the log does not say."""
    lines = [ln.rstrip("\r") for ln in strip_ansi_text(tail).splitlines() if not _SPARK_LOG_LINE.match(ln)]
    found = _last_traceback(lines)
    if found is not None:
        return found
    for line in reversed([ln for ln in lines if ln.strip()][-_CLOSING_LINES:]):
        if line.startswith('Exception in thread "main" '):
            return _clip(line[len('Exception in thread "main" '):])
        if line.startswith("Error: "):
            return _clip(line)
    return None


def _last_traceback(lines: list[str]) -> str | None:
    """The exception line of the last top-level traceback, unless too much output followed it."""
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if line == _TRACEBACK:
            return _exception_after(lines, index + 1, prefix="")
        if line == _GROUP_TRACEBACK:
            return _exception_after(lines, index + 1, prefix=_GROUP_LINE)
        if _SYNTAX_ERROR.match(line) and any(_FILE_LINE.match(ln) for ln in lines[max(0, index - 4):index]):
            return _trusted(lines, index, index + 1)
    return None


def _exception_after(lines: list[str], start: int, prefix: str) -> str | None:
    for index in range(start, len(lines)):
        line = lines[index]
        if prefix:
            if not line.startswith(prefix):
                return None  # the group's block ended without its exception line
            line = line[len(prefix):]
        if line and not line[0].isspace() and _EXCEPTION_LINE.match(line):
            end = index + 1
            if prefix:  # the sub-exceptions' block belongs to the traceback
                while end < len(lines) and lines[end][:1] in (" ", "+"):
                    end += 1
            return _trusted(lines, index, end, text=line)
    return None


def _trusted(lines: list[str], index: int, end: int, text: str | None = None) -> str | None:
    after = [ln for ln in lines[end:] if ln.strip()]
    return None if len(after) > MAX_LINES_AFTER else _clip(text if text is not None else lines[index])


def _clip(line: str, limit: int = 300) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


# -------------------------------------------------------------- cleaning
def clean_log(path: Path) -> bool:
    """Remove escape sequences from the log file at ``path`` in place (atomically); True if it had any.

    Only a log with an ESC byte is rewritten, from a temporary file beside it that replaces it whole: a
    reader sees the old log or the new one. Call it once nothing appends to the log any more.
    """
    first = _first_escape(path)
    if first is None:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.clean")
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            _copy(src, dst, first)
            carry = b""
            while True:
                chunk = src.read(CHUNK)
                data = carry + chunk
                if not chunk:
                    dst.write(strip_ansi(data))
                    break
                cut = data.rfind(b"\x1b", max(0, len(data) - _CARRY))
                if cut < 0:
                    cut = len(data)
                dst.write(strip_ansi(data[:cut]))
                carry = data[cut:]
        os.chmod(tmp, os.stat(path).st_mode & 0o777)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True


def _first_escape(path: Path) -> int | None:
    try:
        with open(path, "rb") as fh:
            offset = 0
            while chunk := fh.read(CHUNK):
                at = chunk.find(b"\x1b")
                if at >= 0:
                    return offset + at
                offset += len(chunk)
    except FileNotFoundError:
        return None
    return None


def _copy(src: BinaryIO, dst: BinaryIO, size: int) -> None:
    """The first ``size`` bytes of ``src`` (at its start) to ``dst``, a chunk at a time."""
    left = size
    while left:
        data = src.read(min(CHUNK, left))
        if not data:
            break
        dst.write(data)
        left -= len(data)
