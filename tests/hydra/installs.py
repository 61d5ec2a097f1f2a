"""mltrain installed the two ways users install it -- from a wheel, and editable (``pip install -e .``, what
``make install`` does) -- each in a venv of its own, built once per test session.

A venv here holds only mltrain: its dependencies come from the test's own venv through a ``.pth`` (a plain
path entry, so none of that venv's own ``.pth`` files -- its editable mltrain -- take effect). Building
either takes seconds and needs no index beyond the build requirements pip already has cached.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODES = ("wheel", "editable")


def build_wheel(dist: Path) -> Path:
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = dist.glob("mltrain-*.whl")
    return wheel


def make_venv(folder: Path, mode: str, wheel: Path | None = None) -> Path:
    """A venv with mltrain installed by ``mode``; returns its python."""
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_mltrain_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    target = ["-e", str(ROOT)] if mode == "editable" else [str(wheel)]
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check", *target], check=True, capture_output=True, timeout=600)
    return python
