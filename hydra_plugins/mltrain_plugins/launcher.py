"""mltrain's Hydra launcher (``hydra/launcher=mltrain``): concurrent trials on any compute target.

Thin by design: Hydra only accepts plugin classes defined under ``hydra_plugins``;
the logic lives in :mod:`mltrain.sweep.launcher`, imported when a sweep starts.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from hydra.plugins.launcher import Launcher

from hydra_plugins.mltrain_plugins import store_configs

store_configs()


class TrialStreamLauncher(Launcher):
    """A launcher that takes a sweep's trials from mltrain's sweeper one free slot at a time (``run_sweep``);
    the sweeper hands any other launcher batches, through Hydra's ``launch``. Declared, never probed for."""

    @abstractmethod
    def run_sweep(self, sampler: Any, supervisor: Any) -> Sequence[Any]:
        """Run the trials ``sampler`` hands out as slots free up, told what to do by ``supervisor``."""


class MltrainLauncher(TrialStreamLauncher):
    core: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from mltrain.sweep.launcher import LauncherCore

        self.core = LauncherCore(hydra_context, task_function, config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        return self.core.launch(job_overrides, initial_job_idx)  # type: ignore[no-any-return]

    def run_sweep(self, sampler: Any, supervisor: Any) -> Sequence[Any]:
        """mltrain's sweeper hands trials over one free slot at a time (see mltrain.sweep.launcher)."""
        return self.core.run_sweep(sampler, supervisor)  # type: ignore[no-any-return]
