"""Compute targets, keyed by the ``type`` of the ``compute`` config group (one registry).

Modules are imported only when their target is used: a target's SDK (docker,
paramiko, pyspark) must never slow down ``mltrain --help`` or another target.
"""

from __future__ import annotations

import importlib
from typing import Any

from mltrain.errors import ConfigError
from mltrain.store.workspace import Workspace
from mltrain.targets.base import Executor

_TARGETS = {
    "local": "mltrain.targets.local.executor:LocalExecutor",
    "docker": "mltrain.targets.docker.executor:DockerExecutor",
    "ssh": "mltrain.targets.ssh.executor:SshExecutor",
    "spark": "mltrain.targets.spark.executor:SparkExecutor",
}


def executor_class(kind: str) -> type[Executor]:
    try:
        module_name, _, class_name = _TARGETS[kind].partition(":")
    except KeyError:
        raise ConfigError(f"compute type {kind!r} is not known; valid: {', '.join(_TARGETS)}") from None
    cls: type[Executor] = getattr(importlib.import_module(module_name), class_name)
    return cls


def executor_for(config: Any, workspace: Workspace) -> Executor:
    return executor_class(config.type)(config, workspace)


def kinds() -> tuple[str, ...]:
    return tuple(_TARGETS)
