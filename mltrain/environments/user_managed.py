"""``environment=user_managed``: an interpreter the user already has (on the target's machine); nothing is installed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mltrain.config.groups import EnvironmentConfig
from mltrain.environments.base import Environment, LogFn, PreparedEnvironment, Requirements, digest
from mltrain.environments.probe import InterpreterInfo, probe

if TYPE_CHECKING:
    from mltrain.targets.base import Executor


@dataclass
class UserManagedEnvironment(EnvironmentConfig):
    """Use an existing interpreter as is; nothing is installed, ``pip freeze`` is recorded."""

    type: str = "user_managed"
    interpreter: str | None = None  # default: the interpreter running mltrain


class UserManaged(Environment):
    kind = "user_managed"
    config_class = UserManagedEnvironment
    config: UserManagedEnvironment
    _info: InterpreterInfo | None = None

    def _probe(self, target: Executor | None = None) -> InterpreterInfo:
        if self._info is None:
            runner = self.runner(target)
            self._info = probe(self.config.interpreter or runner.default_python(), self.cache_dir, runner=runner)
        return self._info

    def fingerprint(self) -> str:
        info = self._probe()
        return digest({"kind": self.kind, "executable": info.executable, "freeze": info.freeze})

    def is_prepared(self, target: Executor | None) -> bool:
        return True

    def prepare(self, log: LogFn, target: Executor | None) -> PreparedEnvironment:
        info = self._probe(target)
        return PreparedEnvironment(
            interpreter=info.executable,
            fingerprint=self.fingerprint(),
            description=f"user_managed: {info.executable} (Python {info.version})",
            freeze=info.freeze,
        )

    def requirements(self) -> Requirements:
        return Requirements(interpreter=self.config.interpreter)

    def describe(self) -> str:
        return f"user_managed ({self.config.interpreter or self.runner().default_python()})"
