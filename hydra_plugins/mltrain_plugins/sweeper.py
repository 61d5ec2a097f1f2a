"""mltrain's Hydra sweeper (``hydra/sweeper=mltrain``): grid, random and TPE over Hydra's sweep syntax.

Thin by design (see launcher.py beside it); the logic lives in :mod:`mltrain.sweep.driver`.
"""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper

from hydra_plugins.mltrain_plugins import store_configs

store_configs()


class MltrainSweeper(Sweeper):
    context: tuple[Any, Any, Any] | None = None  # Hydra's context, the task function, the sweep's config
    launcher: Any = None

    def __init__(self, sampler: str | None = None, n_trials: int | None = None, max_trials: int | None = None,
                 goal: str | None = None, seed: int | None = None, max_concurrent: int | None = None) -> None:
        given = {"sampler": sampler, "n_trials": n_trials, "max_trials": max_trials, "goal": goal, "seed": seed,
                 "max_concurrent": max_concurrent}
        self.settings = {key: value for key, value in given.items() if value is not None}

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.context = (hydra_context, task_function, config)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from hydra_plugins.mltrain_plugins.launcher import TrialStreamLauncher
        from mltrain.sweep.driver import sweep

        assert self.context is not None
        ours = isinstance(self.launcher, TrialStreamLauncher)  # declared, not probed for
        return sweep(*self.context, self.launcher, arguments, streams=ours and self.launcher.streams(),
                     batch=self.launcher.batch_size() if ours and not self.launcher.streams() else None,
                     app_settings=self.settings)
