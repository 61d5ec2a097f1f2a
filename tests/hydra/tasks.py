"""Task functions Hydra's LauncherTestSuite runs through mltrain's launcher: importable, so a job can run them."""

from __future__ import annotations

from typing import Any


def return_100(cfg: Any) -> int:
    return 100
