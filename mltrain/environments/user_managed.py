"""``environment=user_managed``: an interpreter the user already has (on the target's machine); nothing is installed."""

from __future__ import annotations

from typing import Any

from mltrain.environments.base import Environment, LogFn, PreparedEnvironment, digest
from mltrain.environments.probe import InterpreterInfo, probe


class UserManaged(Environment):
    kind = "user_managed"
    _info: InterpreterInfo | None = None

    def _probe(self, target: Any = None) -> InterpreterInfo:
        if self._info is None:
            runner = self.runner(target)
            self._info = probe(self.config.interpreter or runner.default_python(), self.cache_dir, runner=runner)
        return self._info

    def fingerprint(self) -> str:
        info = self._probe()
        return digest({"kind": self.kind, "executable": info.executable, "freeze": info.freeze})

    def is_prepared(self, target: Any) -> bool:
        return True

    def prepare(self, log: LogFn, target: Any) -> PreparedEnvironment:
        info = self._probe(target)
        return PreparedEnvironment(
            interpreter=info.executable,
            fingerprint=self.fingerprint(),
            description=f"user_managed: {info.executable} (Python {info.version})",
            freeze=info.freeze,
        )

    def describe(self) -> str:
        return f"user_managed ({self.config.interpreter or self.runner().default_python()})"
