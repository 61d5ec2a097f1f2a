"""The few lines of POSIX sh every target starts a run under, and the masking filter put before the log.

It appends the script's stdout+stderr (in order, one file) to the run log and
writes the exit code atomically when the script ends, so the run outlives the
client that started it and its result can be read by whoever looks next.
``argv`` reaches the script as positional parameters: never re-parsed by a shell.
A TERM to the process group reaches the script; the wrapper itself waits (the
trap) and still records the code.

A run with secrets starts its command through :mod:`mltrain.hosts.masking` instead
(``masked``): one more process, the job's parent, that writes the masked output.
A run without starts nothing extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

WRAPPER = r"""
log=$1; code_file=$2; shift 2
trap ':' TERM INT HUP
"$@" >> "$log" 2>&1 < /dev/null
code=$?
printf '%s\n' "$code" > "$code_file.tmp" && mv -f "$code_file.tmp" "$code_file"
"""


def wrapper_argv(log: str, code_file: str, argv: list[str]) -> list[str]:
    return ["/bin/sh", "-c", WRAPPER, "mltrain-run", log, code_file, *argv]


@cache
def masker_source() -> str:
    """The masking filter as a program for ``python -S -c`` (it imports nothing of mltrain)."""
    from mltrain.hosts import masking

    return Path(masking.__file__).read_text(encoding="utf-8")


def masked(argv: list[str], python: str, secrets: Sequence[str], *,
           forward_signals: bool = False) -> tuple[list[str], dict[str, str]]:
    """``argv`` behind the masking filter run by ``python``, and the variable to add to its environment.

    Without a value worth masking (none of 4 characters or more) ``argv`` comes back unchanged, with
    no variable: the run starts no filter. ``forward_signals``: the filter passes TERM/INT/HUP on to
    the job (where only it receives them, as a container's only child); under the sh wrapper the
    job's process group gets them directly.
    """
    from mltrain.hosts.masking import ENV, MIN_LENGTH, encode_values

    values = sorted({v for v in secrets if len(v) >= MIN_LENGTH})
    if not values:
        return list(argv), {}
    mode = "forward" if forward_signals else "wrap"
    return [python, "-I", "-S", "-c", masker_source(), mode, *argv], {ENV: encode_values(values)}
