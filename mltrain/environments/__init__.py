"""Environment kinds, keyed by the ``type`` of the ``environment`` config group: the one registry, one line a kind.

A kind is one module here: its config dataclass (an ``EnvironmentConfig``) and its
``Environment``. Adding one is that module, one line below, and a preset in
``conf/environment/`` (docs/architecture.md, "How to add an environment kind").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mltrain.util.registry import Registry

if TYPE_CHECKING:
    from mltrain.config.groups import EnvironmentConfig
    from mltrain.environments.base import Environment
    from mltrain.targets.base import Executor

ENVIRONMENTS: Registry[EnvironmentConfig, Environment] = Registry(
    "environment", config_base="mltrain.config.groups:EnvironmentConfig",
    impl_base="mltrain.environments.base:Environment")


def register(kind: str, module: str, *, config: str, impl: str) -> None:
    """Add an environment kind: ``module`` holds its config dataclass ``config`` and its ``Environment`` ``impl``."""
    ENVIRONMENTS.add(kind, config=f"{module}:{config}", impl=f"{module}:{impl}")


register("user_managed", "mltrain.environments.user_managed", config="UserManagedEnvironment", impl="UserManaged")
register("venv", "mltrain.environments.venv", config="VenvEnvironment", impl="Venv")
register("docker", "mltrain.environments.docker", config="DockerEnvironment", impl="DockerImage")


def environment_for(config: EnvironmentConfig, *, source_dir: Path, cache_dir: Path | None = None,
                    target: Executor | None = None) -> Environment:
    """``target``: the executor it will run on (its machine is where a remote environment is probed and built)."""
    cls = ENVIRONMENTS.impl(config.type)
    return cls(config, source_dir=source_dir, cache_dir=cache_dir, target=target)


def kinds() -> tuple[str, ...]:
    return ENVIRONMENTS.kinds()


__all__ = ["ENVIRONMENTS", "environment_for", "kinds", "register"]
