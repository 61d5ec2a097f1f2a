"""Packages made on the spot for environment builds: a wheel built by hand, and a package whose build waits."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from conftest import wait_for

CHECKOUT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def checkout_build_lock() -> Iterator[None]:
    """Held while a test builds or installs mltrain from the checkout itself: setuptools writes ``build/`` and
    ``*.egg-info`` there, which two builds at once (pytest-xdist workers) would share and break."""
    name = hashlib.sha256(str(CHECKOUT).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"mltrain-test-build-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def make_wheel(folder: Path, name: str = "mltrain_probe_pkg", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, built by hand so the test needs no index."""
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": "VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


BACKEND = '''
import base64, hashlib, os, time, zipfile

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with open({marker!r} + ".tmp", "w") as fh:
        fh.write(f"{{os.getpid()}} {{os.getpgid(0)}}")
    os.replace({marker!r} + ".tmp", {marker!r})
    for _ in range(1200):  # until the test releases the build (two minutes at most)
        if os.path.exists({release!r}):
            break
        time.sleep(0.1)
    name, dist = "mltrain_slow_pkg-1.0-py3-none-any.whl", "mltrain_slow_pkg-1.0.dist-info"
    files = {{
        "mltrain_slow_pkg.py": b"VALUE = 7\\n",
        dist + "/METADATA": b"Metadata-Version: 2.1\\nName: mltrain-slow-pkg\\nVersion: 1.0\\n",
        dist + "/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }}
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{{path}},sha256={{digest}},{{len(data)}}\\n"
    files[dist + "/RECORD"] = (record + dist + "/RECORD,,\\n").encode()
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return name
'''

PYPROJECT = """
[build-system]
requires = []
build-backend = "slowbackend"
backend-path = ["."]

[project]
name = "mltrain-slow-pkg"
version = "1.0"
"""


class SlowBuild:
    """A package whose build waits for ``release()``; ``hook()`` is the waiting build hook's (pid, pgid)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.marker = folder.parent / "hook-started"
        self.release_file = folder.parent / "release"
        folder.mkdir(parents=True)
        (folder / "pyproject.toml").write_text(PYPROJECT)
        (folder / "slowbackend.py").write_text(BACKEND.format(marker=str(self.marker),
                                                              release=str(self.release_file)))

    def args(self, script: str = "train.py") -> list[str]:
        return [f"script={script}", "environment=venv", "environment.installer=pip",
                f"environment.packages=['{self.folder}']", "environment.pip_args=[--no-index]"]

    def hook(self, timeout: float = 120.0) -> tuple[int, int]:
        wait_for(self.marker.exists, timeout)
        pid, pgid = self.marker.read_text().split()
        return int(pid), int(pgid)

    def release(self) -> None:
        self.release_file.write_text("go")
