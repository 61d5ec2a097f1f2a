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

    @abstractmethod
    def streams(self) -> bool:
        """Does ``run_sweep`` work for the task this launcher was set up with (else: batches, through ``launch``)?"""

    @abstractmethod
    def batch_size(self) -> int:
        """When it does not stream: how many jobs one ``launch`` runs side by side."""


class MltrainLauncher(TrialStreamLauncher):
    """``mltrain -m``'s trials (mltrain's own task), or each job of a user's Hydra app as an mltrain run."""

    core: Any = None

    def __init__(self, compute: str | None = None, environment: str | None = None,
                 max_concurrent: int | None = None, overrides: Sequence[str] = (),
                 shared_paths: bool | None = None) -> None:
        self.settings = (compute, environment, max_concurrent, tuple(overrides), shared_paths)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from mltrain.sweep.jobs import takes_prepared

        if takes_prepared(task_function):
            from mltrain.sweep.launcher import LauncherCore

            LauncherCore.refuse_app_settings(*self.settings)
            self.core = LauncherCore(hydra_context, task_function, config)
        else:
            from mltrain.sweep.app import AppLauncherCore, AppLauncherSettings

            self.core = AppLauncherCore(hydra_context, task_function, config, AppLauncherSettings(*self.settings))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        return self.core.launch(job_overrides, initial_job_idx)  # type: ignore[no-any-return]

    def streams(self) -> bool:
        """mltrain's own trials stream; a Hydra app's jobs go in batches (each batch runs side by side)."""
        from mltrain.sweep.launcher import LauncherCore

        return isinstance(self.core, LauncherCore)

    def batch_size(self) -> int:
        return self.core.concurrency()  # type: ignore[no-any-return]

    def run_sweep(self, sampler: Any, supervisor: Any) -> Sequence[Any]:
        """mltrain's sweeper hands trials over one free slot at a time (see mltrain.sweep.launcher)."""
        return self.core.run_sweep(sampler, supervisor)  # type: ignore[no-any-return]
