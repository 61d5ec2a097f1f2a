"""The few lines of POSIX sh every target starts a run under.

It appends the script's stdout+stderr (in order, one file) to the run log and
writes the exit code atomically when the script ends, so the run outlives the
client that started it and its result can be read by whoever looks next.
``argv`` reaches the script as positional parameters: never re-parsed by a shell.
A TERM to the process group reaches the script; the wrapper itself waits (the
trap) and still records the code.
"""

from __future__ import annotations

WRAPPER = r"""
log=$1; code_file=$2; shift 2
trap ':' TERM INT HUP
"$@" >> "$log" 2>&1 < /dev/null
code=$?
printf '%s\n' "$code" > "$code_file.tmp" && mv -f "$code_file.tmp" "$code_file"
"""


def wrapper_argv(log: str, code_file: str, argv: list[str]) -> list[str]:
    return ["/bin/sh", "-c", WRAPPER, "mltrain-run", log, code_file, *argv]
