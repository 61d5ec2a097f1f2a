"""How a script is started on the target (the seed's ``run_config.framework``), keyed by ``framework.type``.

A framework turns the spec and the prepared environment into the job's argv;
it knows nothing about where the job runs.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from mltrain.environments.base import PreparedEnvironment


class Framework(ABC):
    kind: ClassVar[str]

    def __init__(self, config: Any) -> None:
        self.config = config

    @abstractmethod
    def command(self, spec: Any, environment: PreparedEnvironment, target: Any) -> list[str]:
        """The complete argv, relative to the staged code directory."""


class PythonFramework(Framework):
    kind = "python"

    def command(self, spec: Any, environment: PreparedEnvironment, target: Any) -> list[str]:
        return [environment.interpreter, *spec.script_argv()]


_FRAMEWORKS = {
    "python": "mltrain.frameworks.base:PythonFramework",
    "pyspark": "mltrain.frameworks.pyspark:PySparkFramework",
}


def framework_for(config: Any) -> Framework:
    module_name, _, class_name = _FRAMEWORKS[config.type].partition(":")
    cls: type[Framework] = getattr(importlib.import_module(module_name), class_name)
    return cls(config)
