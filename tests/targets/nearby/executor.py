"""``compute=nearby``: this machine, run as ``compute=local`` runs it, with its own capability answers."""

from __future__ import annotations

import dataclasses

from mltrain.targets.base import Handle, LaunchRequest
from mltrain.targets.local.executor import LocalExecutor
from nearby.config import NearbyCompute


class NearbyExecutor(LocalExecutor):
    kind = "nearby"
    config_class = NearbyCompute
    config: NearbyCompute
    frameworks = ("python",)  # not pyspark, unlike compute=local

    @classmethod
    def default_concurrency(cls) -> int:
        return 3

    def describe(self) -> str:
        return f"nearby ({self.config.greeting})"

    def launch(self, request: LaunchRequest) -> Handle:
        env = {**request.env, "NEARBY_GREETING": self.config.greeting}
        return super().launch(dataclasses.replace(request, env=env))
