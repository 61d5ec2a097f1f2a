"""The curated venv presets are fully locked: every package pinned with ``==``, and the pins a complete,
consistent set that resolves to itself on every Python the lock is for (.ci/lock_presets.py).

The resolution checks ask the package index through uv (in the dev extra); nothing is installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".ci"))
import lock_presets  # noqa: E402

PRESETS = ROOT / "conf" / "environment"
PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+$")


def _curated() -> dict[str, list[str]]:
    """Every shipped preset that installs packages, with its list."""
    found = {}
    for path in sorted(PRESETS.glob("*.yaml")):
        packages = (yaml.safe_load(path.read_text()) or {}).get("packages") or []
        if packages:
            found[path.stem] = [str(p) for p in packages]
    return found


def _resolve(packages: list[str], python: str, tmp_path: Path) -> list[str]:
    """What uv resolves ``packages`` to for ``python`` on Linux x86_64, from wheels only (no compiler needed)."""
    requirements = tmp_path / f"in-{python}.txt"
    requirements.write_text("\n".join(packages) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "uv", "pip", "compile", str(requirements), "--python-version", python,
         "--python-platform", "x86_64-manylinux_2_28", "--only-binary", ":all:", "--no-header", "--no-annotate"],
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"},
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"the pins do not resolve on Python {python}:\n{result.stderr}"
    return lock_presets.pins(result.stdout)


def test_the_sklearn_presets_are_curated_and_locked() -> None:
    curated = _curated()
    assert {"sklearn", "docker_sklearn"} <= set(curated)
    for name, packages in curated.items():
        unpinned = [p for p in packages if not PINNED.match(p)]
        assert not unpinned, f"preset {name}: not pinned with ==: {unpinned}"
    lock = lock_presets.pins((PRESETS / "sklearn.lock.txt").read_text())
    assert curated["sklearn"] == curated["docker_sklearn"] == lock
    lines = (PRESETS / "sklearn.lock.txt").read_text().splitlines()
    for number, line in enumerate(lines):
        if lock_presets.PIN.match(line):  # each pin carries the sha256 of its files
            assert line.endswith("\\") and "--hash=sha256:" in lines[number + 1], line
    chosen = [ln for ln in (PRESETS / "sklearn.in").read_text().splitlines() if ln and not ln.startswith("#")]
    assert set(chosen) < set(lock)  # the lock adds the dependencies of what was chosen


@pytest.mark.integration
@pytest.mark.parametrize("python", lock_presets.SUPPORTED)
def test_pins_resolve_to_themselves(python: str, tmp_path: Path) -> None:
    """Complete (nothing added), consistent (nothing in conflict) and installable from wheels, on each Python."""
    for name, packages in _curated().items():
        assert sorted(_resolve(packages, python, tmp_path), key=str.lower) == sorted(packages, key=str.lower), name


@pytest.mark.integration
def test_make_lock_is_reproducible() -> None:
    """Resolving again (the index as it was on the lock's date) writes the very same lock and presets."""
    result = subprocess.run([sys.executable, str(ROOT / ".ci" / "lock_presets.py"), "--check"],
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
