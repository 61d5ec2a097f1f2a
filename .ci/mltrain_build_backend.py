"""setuptools' PEP 517 backend, plus one ``.pth`` in editable wheels so Hydra finds mltrain's plugins.

Hydra discovers plugins by walking the ``hydra_plugins`` namespace with ``pkgutil``. setuptools' editable
install serves packages through an import hook whose namespace path is a placeholder ``pkgutil`` cannot
list, so in ``pip install -e .`` (and ``make install``) Hydra saw no mltrain launcher. The ``.pth`` added
here puts ``.ci/editable`` on ``sys.path``: a folder holding only a link to the repository's
``hydra_plugins``, so nothing else of the checkout (``conf``, ``tests``) becomes importable. Wheels and
sdists are built by setuptools unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (every other hook is setuptools' own)

PTH_NAME = "mltrain_hydra_plugins.pth"
EDITABLE_DIR = Path(__file__).resolve().parent / "editable"


def build_editable(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                   metadata_directory: str | None = None) -> str:
    name: str = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    add_file(Path(wheel_directory) / name, PTH_NAME, f"{EDITABLE_DIR}\n".encode())
    return name


def add_file(wheel: Path, arcname: str, data: bytes) -> None:
    """Rewrite ``wheel`` with ``arcname`` added at its root and listed in its RECORD (hash and size)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            content = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                content += f"{arcname},sha256={digest},{len(data)}\n".encode()
            dst.writestr(info, content)
        dst.writestr(arcname, data)
    os.replace(tmp, wheel)
