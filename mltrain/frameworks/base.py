"""How a script is started on the target (the seed's ``run_config.framework``), keyed by ``framework.type``.

A framework turns the spec and the prepared environment into the job's argv;
it knows nothing about where the job runs. A target that starts some framework
its own way says so (``Executor.framework_argv``: Spark's spark-submit); which
targets can run a framework at all is theirs to say (``Executor.supports``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from mltrain.config.groups import FrameworkConfig
    from mltrain.config.spec import RunSpec
    from mltrain.environments.base import PreparedEnvironment
    from mltrain.targets.base import Executor


class Framework(ABC):
    """One framework; a subclass declares its ``kind`` (its key in ``mltrain.frameworks``) and ``config_class``."""

    kind: ClassVar[str]
    config_class: ClassVar[type[FrameworkConfig]]

    def __init__(self, config: FrameworkConfig) -> None:
        self.config = config

    def command(self, spec: RunSpec, environment: PreparedEnvironment, target: Executor) -> list[str]:
        """The complete argv, relative to the staged code directory: the target's own way, else this framework's."""
        own = target.framework_argv(self.kind, spec, environment)
        return own if own is not None else self.default_command(spec, environment, target)

    @abstractmethod
    def default_command(self, spec: RunSpec, environment: PreparedEnvironment, target: Executor) -> list[str]:
        """The argv on a target with no way of its own."""

    def check(self, target: Executor) -> None:  # noqa: B027 (optional hook)
        """Refuse, before a run is recorded, what ``target`` cannot do for this framework (a ConfigError)."""

    def shown(self, argv: list[str]) -> list[str]:
        """``argv`` as plans and run records show it: a program passed as text is named, not spelt out."""
        return list(argv)


def framework_for(config: FrameworkConfig) -> Framework:
    from mltrain.frameworks import FRAMEWORKS

    return FRAMEWORKS.impl(config.type)(config)
