"""mltrain's Hydra sweeper: the command line's sweep syntax -> a search space -> a sampler -> the launcher.

With mltrain's launcher the trials stream through it one free slot at a
time; with any other launcher they go in batches of ``sweep.max_concurrent``
(or one), through Hydra's ordinary ``Launcher.launch``, and a failed job
raises at the end as it would under Hydra's basic sweeper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from mltrain.errors import ConfigError
from mltrain.sweep.samplers import Sampler, Suggestion, check_size, make_sampler
from mltrain.sweep.space import parse_space


def sweep(hydra_context: Any, task_function: Any, config: DictConfig, launcher: Any,
          arguments: Sequence[str], *, streams: bool, batch: int | None = None,
          app_settings: dict[str, Any] | None = None) -> list[Any]:
    """``streams``: the launcher declares ``run_sweep`` (a ``TrialStreamLauncher``, as mltrain's does).
    ``batch``: how many jobs the launcher runs side by side when it does not stream (default: sweep.max_concurrent).
    ``app_settings``: ``hydra.sweeper.*`` (sampler, n_trials, ...) for a Hydra app's own sweep; ``mltrain -m``
    has ``sweep.*`` instead and refuses them."""
    from mltrain.config.schema import SweepConfig, validate_sweep
    from mltrain.sweep.controller import SweepController
    from mltrain.sweep.jobs import takes_prepared
    from mltrain.sweep.session import current
    from mltrain.sweep.supervisor import Supervisor

    session = current()
    ours = session is not None and takes_prepared(task_function)
    if ours and app_settings:
        raise ConfigError(f"hydra.sweeper.{next(iter(app_settings))} is for a Hydra app's own sweep; with mltrain -m "
                          f"set sweep.{next(iter(app_settings))}=... instead")
    if ours:
        settings = validate_sweep(config.get("sweep"))
    else:
        from omegaconf import OmegaConf

        # the objective is what the task returns (Hydra's sweepers' convention), not a logged metric
        given = {"primary_metric": "return value", **app_settings} if app_settings else None
        settings = validate_sweep(OmegaConf.create(given)) if given else SweepConfig()
    space = parse_space(arguments, settings.space, hydra_context.config_loader)
    check_size(settings.sampler, space, n_trials=settings.n_trials, max_trials=settings.max_trials)  # before a record
    controller = SweepController(session, config) if ours and session is not None else None
    if controller is not None and streams:
        seed = controller.open()
        sampler = make_sampler(settings.sampler, space, n_trials=settings.n_trials, goal=settings.goal, seed=seed,
                               max_trials=settings.max_trials)
        controller.sampler = sampler
        _save_config(config)
        return [list(launcher.run_sweep(sampler, controller))]
    if controller is not None:
        controller.close()
    sampler = make_sampler(settings.sampler, space, n_trials=settings.n_trials, goal=settings.goal,
                           seed=settings.seed or 0, max_trials=settings.max_trials)
    _save_config(config)
    if streams:
        return [list(launcher.run_sweep(sampler, Supervisor()))]
    return _in_batches(launcher, sampler, settings.max_concurrent or batch or 1)


def _save_config(config: DictConfig) -> None:
    """``multirun.yaml`` in the sweep dir: the sweep's own config, as Hydra's basic sweeper saves it."""
    from pathlib import Path

    from omegaconf import OmegaConf

    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")


def _in_batches(launcher: Any, sampler: Sampler, size: int) -> list[Any]:
    from mltrain.hydra_compat import job_value
    from mltrain.sweep.supervisor import Supervisor

    judge = Supervisor()
    returns: list[Any] = []
    while True:
        batch: list[Suggestion] = []
        while len(batch) < size and (suggestion := sampler.ask()) is not None:
            batch.append(suggestion)
        if not batch:
            break
        results = launcher.launch([s.overrides for s in batch], initial_job_idx=sum(map(len, returns)))
        for suggestion, result in zip(batch, results, strict=True):
            sampler.tell(suggestion, judge.finished(result, suggestion))
        returns.append(list(results))
    from hydra.core.utils import JobStatus

    for result in (r for batch_results in returns for r in batch_results):
        if result.status == JobStatus.FAILED:  # the first failed job's error, as Hydra's basic sweeper raises it
            raise job_value(result)  # (``return_value`` would also print a line of its own)
    return returns
