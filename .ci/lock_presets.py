"""Lock the curated venv presets: every package they install, transitive ones too, pinned with ``==``.

``make lock`` runs this (``--check``: change nothing, exit 1 if a lock or preset is not what it would write).

For each stack below, ``conf/environment/<stack>.in`` names the packages chosen on purpose; uv resolves
them into ``<stack>.lock.txt`` (every package, ``==``, with the sha256 of every file PyPI had for that
version) and the full pinned list is written into the presets' ``packages``, which is what a build
installs. So ``environment=sklearn`` installs the same versions next year as today.

What makes it reproducible: ``--exclude-newer`` (uv sees the index as it was on that day: a later release,
or a file uploaded later to an old release, changes nothing), ``--universal`` with the lowest Python
mltrain supports (one resolution valid for every Python from there up, on every platform), and the
command line below, written into the lock's header. Re-running it gives the same bytes.

Which Pythons: a venv preset is built with the user's own interpreter, so the lock must hold for every
Python mltrain runs on that has wheels of these versions: 3.10 to 3.13 (numpy 2.1.3 and scipy 1.14.1
publish no 3.14 wheels; there a build would compile from source). The docker presets use the base
image's Python 3.11. tests/test_presets_lock.py checks that the pins resolve to themselves, wheels only,
on each of ``SUPPORTED``.

Hashes: the lock keeps them as the record of the exact files; a build installs the pins from the preset
(a preset cannot point pip at a file shipped inside mltrain, and hash-checking mode would refuse any
package a user adds to the preset's list).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "conf" / "environment"
STACKS = {"sklearn": ("sklearn.yaml", "docker_sklearn.yaml")}  # stack -> the presets that install it
EXCLUDE_NEWER = "2024-12-01T00:00:00Z"  # the index as it was when the stack's versions were chosen
LOWEST_PYTHON = "3.10"  # requires-python of mltrain
SUPPORTED = ("3.10", "3.11", "3.12", "3.13")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def uv(*args: str) -> str:
    """``uv pip ...`` from this Python's environment (uv is in the dev extra); never downloads a Python."""
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    result = subprocess.run([sys.executable, "-m", "uv", "pip", *args], cwd=ROOT, env=env, text=True,
                            capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"uv pip {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def compile_lock(stack: str) -> str:
    return uv("compile", f"conf/environment/{stack}.in", "--universal", "--python-version", LOWEST_PYTHON,
              "--exclude-newer", EXCLUDE_NEWER, "--generate-hashes", "--custom-compile-command", "make lock")


def pins(text: str) -> list[str]:
    """``name==version`` of every requirement line (hash continuation lines and comments skipped)."""
    return [f"{m[1]}=={m[2]}" for line in text.splitlines() if (m := PIN.match(line.strip()))]


def with_packages(preset: str, packages: list[str]) -> str:
    """The preset's YAML with its ``packages:`` block replaced (comments and other keys kept)."""
    lines = preset.splitlines()
    start = lines.index("packages:")
    end = start + 1
    while end < len(lines) and lines[end].startswith("  - "):
        end += 1
    return "\n".join([*lines[: start + 1], *(f"  - {p}" for p in packages), *lines[end:]]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything would change")
    check = parser.parse_args().check
    stale = []
    for stack, presets in STACKS.items():
        lock = compile_lock(stack)
        wanted = {FOLDER / f"{stack}.lock.txt": lock}
        for name in presets:
            path = FOLDER / name
            wanted[path] = with_packages(path.read_text(), pins(lock))
        for path, text in wanted.items():
            old = path.read_text() if path.exists() else ""
            if old == text:
                continue
            stale.append(path)
            if check:
                sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                           str(path), "would be"))
            else:
                path.write_text(text)
                print(f"wrote {path.relative_to(ROOT)}")
    if check and stale:
        print(f"{len(stale)} file(s) differ from what `make lock` writes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
