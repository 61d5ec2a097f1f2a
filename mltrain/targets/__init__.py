"""Compute targets, keyed by the ``type`` of the ``compute`` config group: the one registry, one line a target.

A target is one folder, ``mltrain/targets/<name>/``: ``config.py`` (its config dataclass, a
``ComputeConfig``; nothing heavy imported there) and ``executor.py`` (its ``Executor``, which
declares what it can do). Adding one is that folder, one line below (or ``register`` from a
plugin), and ``conf/compute/<name>.yaml``; the schemas, the CLI's help and the error messages
follow from here (docs/architecture.md, "How to add a target").

Modules are imported only when their target is used: a target's SDK (docker,
paramiko, pyspark) must never slow down ``mltrain --help`` or another target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mltrain.util.registry import Registry

if TYPE_CHECKING:
    from mltrain.config.groups import ComputeConfig
    from mltrain.store.workspace import Workspace
    from mltrain.targets.base import Executor

TARGETS: Registry[ComputeConfig, Executor] = Registry(
    "compute", config_base="mltrain.config.groups:ComputeConfig", impl_base="mltrain.targets.base:Executor")


def register(kind: str, package: str, *, config: str, executor: str) -> None:
    """Add a target: folder ``package`` holds ``config.py`` (class ``config``) and ``executor.py`` (``executor``)."""
    TARGETS.add(kind, config=f"{package}.config:{config}", impl=f"{package}.executor:{executor}")


register("local", "mltrain.targets.local", config="LocalCompute", executor="LocalExecutor")
register("docker", "mltrain.targets.docker", config="DockerCompute", executor="DockerExecutor")
register("ssh", "mltrain.targets.ssh", config="SshCompute", executor="SshExecutor")
register("spark", "mltrain.targets.spark", config="SparkCompute", executor="SparkExecutor")
register("ray", "mltrain.targets.ray", config="RayCompute", executor="RayExecutor")


def executor_class(kind: str) -> type[Executor]:
    return TARGETS.impl(kind)


def executor_for(config: ComputeConfig, workspace: Workspace) -> Executor:
    return executor_class(config.type)(config, workspace)


def kinds() -> tuple[str, ...]:
    return TARGETS.kinds()
