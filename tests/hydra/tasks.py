"""Task functions Hydra's LauncherTestSuite runs through mltrain's launcher: importable, so a job can run them."""

from __future__ import annotations

from typing import Any


def return_100(cfg: Any) -> int:
    return 100


def foo_plus_a(cfg: Any) -> Any:
    return {"sum": cfg.foo + cfg.get("a", 0), "cfg": cfg}


def fail_on_one(cfg: Any) -> int:
    if cfg.get("a") == 1:
        raise ValueError("a=1 is not allowed")
    return 0
