"""The fake GPU machine the resource tests share: ``tests/fake_nvidia_smi.sh`` as ``nvidia-smi`` on PATH."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

FAKE = Path(__file__).with_name("fake_nvidia_smi.sh")


def fake_gpu_path(folder: Path, gpus: int = 2) -> dict[str, str]:
    """Environment variables that make ``folder/nvidia-smi`` (the fake, listing ``gpus`` devices) the one found."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FAKE, folder / "nvidia-smi")
    (folder / "nvidia-smi").chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_GPUS": str(gpus)}
