"""``framework=python``: ``<interpreter> script args --param value``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mltrain.config.groups import FrameworkConfig
from mltrain.frameworks.base import Framework

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec
    from mltrain.environments.base import PreparedEnvironment
    from mltrain.targets.base import Executor


@dataclass
class PythonFrameworkConfig(FrameworkConfig):
    """``<interpreter> script args --param value``."""

    type: str = "python"


class PythonFramework(Framework):
    kind = "python"
    config_class = PythonFrameworkConfig

    def default_command(self, spec: RunSpec, environment: PreparedEnvironment, target: Executor) -> list[str]:
        return [environment.interpreter, *spec.script_argv()]
