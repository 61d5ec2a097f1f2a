"""Environment kinds, keyed by the ``type`` of the ``environment`` config group (one registry)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from mltrain.environments.base import Environment, PreparedEnvironment

_KINDS = {
    "user_managed": "mltrain.environments.user_managed:UserManaged",
    "venv": "mltrain.environments.venv:Venv",
    "docker": "mltrain.environments.docker:DockerImage",
}


def environment_for(config: Any, *, source_dir: Path, cache_dir: Path | None = None,
                    target: Any = None) -> Environment:
    """``target``: the executor it will run on (its machine is where a remote environment is probed and built)."""
    module_name, _, class_name = _KINDS[config.type].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    env: Environment = cls(config, source_dir=source_dir, cache_dir=cache_dir, target=target)
    return env


def kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


__all__ = ["Environment", "PreparedEnvironment", "environment_for", "kinds"]
