"""Frameworks, keyed by the ``type`` of the ``framework`` config group: the one registry, one line a framework.

A framework is one module here: its config dataclass (a ``FrameworkConfig``) and its
``Framework``. Adding one is that module, one line below, ``conf/framework/<name>.yaml``, and
``frameworks`` on the targets that can start it (docs/architecture.md, "How to add a framework").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mltrain.util.registry import Registry

if TYPE_CHECKING:
    from mltrain.config.groups import FrameworkConfig
    from mltrain.frameworks.base import Framework

FRAMEWORKS: Registry[FrameworkConfig, Framework] = Registry(
    "framework", config_base="mltrain.config.groups:FrameworkConfig", impl_base="mltrain.frameworks.base:Framework")


def register(kind: str, module: str, *, config: str, impl: str) -> None:
    """Add a framework: ``module`` holds its config dataclass ``config`` and its ``Framework`` ``impl``."""
    FRAMEWORKS.add(kind, config=f"{module}:{config}", impl=f"{module}:{impl}")


register("python", "mltrain.frameworks.python", config="PythonFrameworkConfig", impl="PythonFramework")
register("pyspark", "mltrain.frameworks.pyspark", config="PySparkFrameworkConfig", impl="PySparkFramework")
register("distributed", "mltrain.frameworks.distributed", config="DistributedFrameworkConfig",
         impl="DistributedFramework")


def kinds() -> tuple[str, ...]:
    return FRAMEWORKS.kinds()
