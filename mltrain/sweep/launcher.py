"""mltrain's Hydra launcher: jobs side by side up to a limit, never in batches.

The main thread does everything Hydra must do in the main thread -- compose
each job's config, ``run_job``'s bookkeeping (:mod:`mltrain.sweep.jobs`) --
and a thread pool runs only the prepared bodies. A slot is refilled as soon as
any job ends, so one slow trial never holds the others back, and an adaptive
sampler (TPE) is asked for the next trial only when a slot is free.

Every trial a sampler knows up front is composed and validated before the
first one starts (for TPE: a probe set; see :mod:`mltrain.sweep.samplers`).

A :class:`~mltrain.sweep.supervisor.Supervisor` is told what happens and may
veto: the base class runs any Hydra task the way Hydra's basic launcher would,
which is what Hydra's conformance suite checks. mltrain's
:class:`~mltrain.sweep.controller.SweepController` adds the sweep record,
resume, early termination and cancellation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mltrain.errors import ConfigError, MltrainError
from mltrain.sweep.compose import TrialComposer
from mltrain.sweep.jobs import begin_job, end_job, takes_prepared
from mltrain.sweep.samplers import ListSampler, Sampler, Suggestion
from mltrain.sweep.supervisor import Supervisor

log = logging.getLogger(__name__)


class LauncherCore:
    def __init__(self, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from mltrain.hydra_compat import SweepDirs

        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        self.composer = TrialComposer(hydra_context.config_loader, config)
        self._configs: dict[int, DictConfig] = {}  # each job's full config, for the callbacks at its end
        self._dirs = SweepDirs()  # each prepared job's output folder, joined without OmegaConf where it can be

    @staticmethod
    def refuse_app_settings(compute: str | None, environment: str | None, max_concurrent: int | None,
                            overrides: Sequence[str], shared_paths: bool | None) -> None:
        """``hydra.launcher.compute`` and friends are for a Hydra app's jobs; ``mltrain -m`` has its own."""
        given = [f"hydra.launcher.{name}" for name, value in (
            ("compute", compute), ("environment", environment), ("max_concurrent", max_concurrent),
            ("overrides", overrides), ("shared_paths", shared_paths is not None)) if value]
        if given:
            raise ConfigError(f"{given[0]} is for a Hydra app's own jobs; with mltrain -m set compute=..., "
                              "environment=..., sweep.max_concurrent=... directly")

    # ----------------------------------------------------------- Hydra's API
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        """Hydra's ``Launcher.launch``: these jobs, as many at once as the supervisor allows."""
        from hydra.core.utils import filter_overrides

        from mltrain.sweep.controller import supervisor_for

        sampler = ListSampler([Suggestion(list(o), list(filter_overrides(o))) for o in job_overrides])
        return self.run(sampler, supervisor_for(self.task_function, self.config, sampler), initial_job_idx)

    def run_sweep(self, sampler: Sampler, supervisor: Supervisor) -> list[Any]:
        """mltrain's sweeper: trials as the sampler hands them out, a slot at a time."""
        return self.run(sampler, supervisor, supervisor.first_index)

    # ------------------------------------------------------------ the engine
    def run(self, sampler: Sampler, supervisor: Supervisor, first_index: int = 0) -> list[Any]:
        from hydra.core.utils import configure_log, setup_globals

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        try:
            if takes_prepared(self.task_function) and self.config.hydra.job.chdir:
                raise ConfigError(
                    "hydra.job.chdir=true cannot work with mltrain's launcher: trials run side by side in one "
                    "process, whose working directory is shared; drop the override (each trial already runs "
                    "in its own run folder)"
                )
            Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
            ran, validated, jobs = self._upfront(sampler, first_index)
            returns = [ret for ret, _ in ran.values()]
            if supervisor.start(jobs):
                returns += self._loop(sampler, supervisor, ran, validated, first_index + len(ran))
        except BaseException as exc:
            supervisor.close(exc)
            raise
        supervisor.close()
        return returns

    def _upfront(self, sampler: Sampler, index: int) -> tuple[dict[int, Any], dict[int, Any], list[Any]]:
        """Before anything starts: compose and validate every trial the sampler knows (or its probes).

        Returns the jobs a plain task already ran (it cannot be validated without running), the
        validated trials (by suggestion), and every prepared job.
        """
        ran: dict[int, Any] = {}
        validated: dict[int, Any] = {}
        jobs = []
        for suggestion in sampler.upfront():
            if not takes_prepared(self.task_function):
                if sampler.upfront_are_trials:
                    config = self.composer.compose(suggestion.overrides)
                    ran[id(suggestion)] = (self._begin(config, index + len(ran)), suggestion)
                continue
            trial = self._validate(suggestion, index + len(validated) if sampler.upfront_are_trials else None)
            jobs.append(trial[2])
            if sampler.upfront_are_trials:
                validated[id(suggestion)] = trial
        return ran, validated, jobs

    def _begin(self, config: DictConfig, index: int, job_cfg: DictConfig | None = None, prepared: Any = None,
               fresh_hydra: Callable[[], DictConfig] | None = None, task: Any = None) -> Any:
        ret = begin_job(self.hydra_context, self.task_function, config, index, prepared=prepared, job_cfg=job_cfg,
                        fresh_hydra=fresh_hydra, dirs=self._dirs, task=task)
        self._configs[id(ret)] = config
        return ret

    def _validate(self, suggestion: Suggestion, number: int | None) -> tuple[DictConfig | None, DictConfig, Any]:
        """Compose a trial's job part and let the task validate it, without bookkeeping or running it.

        Returns the whole config when it had to be composed (else it is composed at launch), the
        job's config, and what the task prepared.
        """
        from hydra.core.hydra_config import HydraConfig

        from mltrain.hydra_compat import hydra_config_set

        quick = self.composer.job(suggestion.overrides)
        cfg = None
        try:
            with hydra_config_set(None):  # what HydraConfig held before is back afterwards
                if quick is not None:
                    job, overrides = quick
                else:  # the job's config may refer to ${hydra:...}: resolve it as it will be when it runs
                    cfg = self.composer.compose(suggestion.overrides)
                    if number is not None:
                        with open_dict(cfg):
                            cfg.hydra.job.id = cfg.hydra.job.num = number
                    HydraConfig.instance().set_config(cfg)
                    job = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])
                    overrides = list(cfg.hydra.overrides.task)
                return cfg, job, self.task_function.prepare_trial(job, overrides)
        except MltrainError as exc:
            raise _in_trial(exc, suggestion) from exc

    def _loop(self, sampler: Sampler, supervisor: Supervisor, ran: dict[int, Any], validated: dict[int, Any],
              index: int) -> list[Any]:
        self._index = index
        returns: list[Any] = []
        running: dict[Future[Any], tuple[Any, Suggestion]] = {}
        exhausted = False
        with ThreadPoolExecutor(max_workers=supervisor.max_concurrent, thread_name_prefix="mltrain-trial") as pool:
            try:
                while True:
                    while len(running) < supervisor.max_concurrent and supervisor.may_start() and not exhausted:
                        item = self._take(sampler, supervisor, ran, validated, returns)
                        if item is None:
                            exhausted = True
                            break
                        running[pool.submit(item[2])] = item[:2]
                    if not running:
                        return returns
                    done, _ = wait(running, timeout=supervisor.tick_seconds, return_when=FIRST_COMPLETED)
                    for future in done:
                        self._end(sampler, supervisor, future, *running.pop(future))
                    supervisor.tick()
            except KeyboardInterrupt:
                supervisor.interrupt()
                for future in list(running):  # each worker cancels its own run; wait for them to say so
                    future.exception()
                    self._end(sampler, supervisor, future, *running.pop(future))
                raise

    def _take(self, sampler: Sampler, supervisor: Supervisor, ran: dict[int, Any], validated: dict[int, Any],
              returns: list[Any]) -> tuple[Any, Suggestion, Callable[[], Any]] | None:
        """The next job with a body to run (jobs that need none are told to the sampler on the way)."""
        from hydra.core.utils import JobStatus

        while (suggestion := sampler.ask()) is not None:
            ret, _ = ran.get(id(suggestion)) or (None, None)
            if ret is None:
                config, job, prepared = validated.pop(id(suggestion), None) or self._validate(suggestion, self._index)
                fresh_hydra = task = None
                if config is None:
                    config, fresh_hydra, task = self.composer.for_bookkeeping(
                        suggestion.overrides, self.config.hydra.callbacks, self._dirs)
                ret = self._begin(config, self._index, job, prepared, fresh_hydra=fresh_hydra, task=task)
                self._index += 1
                returns.append(ret)
            body = supervisor.body(ret, suggestion) if ret.status != JobStatus.FAILED else None
            if body is not None:
                return ret, suggestion, body
            sampler.tell(suggestion, supervisor.finished(ret, suggestion))
        return None

    def _end(self, sampler: Sampler, supervisor: Supervisor, future: Future[Any], ret: Any,
             suggestion: Suggestion) -> None:
        error = future.exception()
        config = self._configs.pop(id(ret))
        end_job(self.hydra_context, config, ret, result=None if error else future.result(), error=error)
        sampler.tell(suggestion, supervisor.finished(ret, suggestion))


def _in_trial(exc: MltrainError, suggestion: Suggestion) -> MltrainError:
    """The same error, saying which trial it came from."""
    return type(exc)(f"trial {' '.join(suggestion.swept) or '(no swept values)'}: {exc}")


