"""Reading a job's log after it ended: the error line (every target's reason) and the terminal codes removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mltrain.tracking import joblog
from mltrain.tracking.joblog import clean_log, error_line, read_tail, strip_ansi, strip_ansi_text

CHAINED = """\
epoch 1 loss 0.3
Traceback (most recent call last):
  File "/w/train.py", line 3, in load
    return table[key]
           ~~~~~^^^^^
KeyError: 'lr'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/w/train.py", line 9, in <module>
    check(load("lr"))
ValueError: bad value 3
"""

CAUSED = CHAINED.replace("During handling of the above exception, another exception occurred:",
                         "The above exception was the direct cause of the following exception:")

GROUP = """\
  + Exception Group Traceback (most recent call last):
  |   File "/w/g.py", line 5, in <module>
  |     raise ExceptionGroup("two failed", [ValueError("bad value 3"), KeyError("x")])
  | ExceptionGroup: two failed (2 sub-exceptions)
  +-+---------------- 1 ----------------
    | ValueError: bad value 3
    +---------------- 2 ----------------
    | Traceback (most recent call last):
    |   File "/w/g.py", line 3, in f
    | KeyError: 'x'
    +------------------------------------
"""


@pytest.mark.parametrize(("log", "expected"), [
    (CHAINED, "ValueError: bad value 3"),
    (CAUSED, "ValueError: bad value 3"),
    (GROUP, "ExceptionGroup: two failed (2 sub-exceptions)"),
    (GROUP + "\nThe above exception was the direct cause of the following exception:\n\n"
     "Traceback (most recent call last):\n  File \"/w/g.py\", line 9, in <module>\nRuntimeError: wrapped\n",
     "RuntimeError: wrapped"),
    ('  File "/w/s.py", line 1\n    def (\n        ^\nSyntaxError: invalid syntax\n', "SyntaxError: invalid syntax"),
    ("Traceback (most recent call last):\n  File \"t.py\", line 2, in <module>\n    time.sleep(9)\nKeyboardInterrupt\n",
     "KeyboardInterrupt"),
    ("Traceback (most recent call last):\n  File \"t.py\", line 2\nmod.Error: first line\nsecond line\n",
     "mod.Error: first line"),
    # coloured (rich, IPython) and with Windows line ends
    ("\x1b[31mTraceback (most recent call last):\x1b[0m\r\n  File \"t.py\", line 1\r\n"
     "\x1b[1;31mValueError\x1b[0m: \x1b[33mbad value 3\x1b[0m\r\n", "ValueError: bad value 3"),
    # what a shutdown prints after the traceback is fine, within reason
    (CHAINED + "wandb: Synced 5 W&B file(s)\n" * 10, "ValueError: bad value 3"),
    # a handled traceback long before the end is not why the job ended
    (CHAINED + "still training\n" * (joblog.MAX_LINES_AFTER + 1), None),
    ("Error: could not open data.csv\n", "Error: could not open data.csv"),
    ('Exception in thread "main" java.lang.IllegalStateException: no master\n\tat a.b(C.java:1)\n',
     "java.lang.IllegalStateException: no master"),
    ("Error: early\n" + "more output\n" * 10, None),
    ("all fine\n", None),
    ("", None),
])
def test_error_line(log: str, expected: str | None) -> None:
    assert error_line(log) == expected


def test_error_line_is_clipped() -> None:
    line = error_line("Traceback (most recent call last):\nValueError: " + "x" * 1000 + "\n")
    assert line is not None and len(line) == 300 and line.endswith("...")


def test_read_tail_is_bounded(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"a" * 100_000 + b"\nValueError: end\n")
    tail = read_tail(log, limit=1000)
    assert len(tail) == 1000 and tail.endswith("ValueError: end\n")
    assert read_tail(tmp_path / "missing") == ""


@pytest.mark.parametrize(("raw", "clean"), [
    (b"\x1b[31mred\x1b[0m plain", b"red plain"),
    (b"\x1b[1;38;5;196mbold\x1b[m", b"bold"),
    (b"up\x1b[2A\x1b[Kdown\x1b[?25l", b"updown"),  # cursor moves, erase, private modes
    (b"\x1b]0;window title\x07text", b"text"),  # OSC ended by BEL
    (b"\x1b]8;;https://x.y/z\x1b\\link\x1b]8;;\x1b\\", b"link"),  # hyperlink, OSC ended by ST
    (b"\x1bPq#0;2;0;0;0\x1b\\after", b"after"),  # DCS (sixel) string
    (b"\x1b(Bcharset\x1b7saved\x1b8", b"charsetsaved"),  # nF and two-byte escapes
    (b"10%\r\x1b[K50%\r100%\n", b"10%\r50%\r100%\n"),  # progress bars keep their carriage returns
    (b"\x1b]0;no end\nnext line\n", b"0;no end\nnext line\n"),  # an unterminated string stops at the line
    (b"lone \x1b", b"lone "),
    ("caf\u00e9 \x1b[32m\u2713\x1b[0m".encode(), "caf\u00e9 \u2713".encode()),  # UTF-8 untouched
])
def test_strip_ansi(raw: bytes, clean: bytes) -> None:
    assert strip_ansi(raw) == clean
    assert strip_ansi_text(raw.decode("utf-8")) == clean.decode("utf-8")


def test_clean_log_rewrites_only_a_log_with_escapes(tmp_path: Path) -> None:
    plain = tmp_path / "plain.log"
    plain.write_bytes(b"no codes here\n" * 10)
    inode = plain.stat().st_ino
    assert clean_log(plain) is False
    assert plain.stat().st_ino == inode  # not rewritten
    assert clean_log(tmp_path / "missing.log") is False
    coloured = tmp_path / "coloured.log"
    coloured.write_bytes(b"ok\n\x1b[31mred\x1b[0m\n")
    os.chmod(coloured, 0o640)
    assert clean_log(coloured) is True
    assert coloured.read_bytes() == b"ok\nred\n"
    assert coloured.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coloured.log", "plain.log"]  # no temp file left


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_clean_log_in_small_chunks_equals_the_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    chunk: int) -> None:
    """Sequences cut by a chunk boundary are removed whole, wherever the cut falls."""
    monkeypatch.setattr(joblog, "CHUNK", chunk)
    raw = (b"prefix without codes\n" + b"step \x1b[1;32m%d\x1b[0m \x1b]0;t\x07done\r\n" * 5 % (1, 2, 3, 4, 5)
           + b"\x1b[38;5;208mtail\x1b[0m")
    log = tmp_path / "output.log"
    log.write_bytes(raw)
    assert clean_log(log) is True
    assert log.read_bytes() == strip_ansi(raw)
    assert b"\x1b" not in log.read_bytes()
