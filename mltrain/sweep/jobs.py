"""Hydra's per-job bookkeeping, in the main thread; only a prepared job's body may run elsewhere.

Hydra's ``run_job`` sets process-wide state (the ``HydraConfig`` singleton,
the working directory, the root logger), so it must never run in a worker
thread. mltrain's launcher calls it here, in the main thread, for every job:
it makes the output directory, writes ``.hydra/`` when asked, applies
``hydra.job.env_set``, fires the callbacks, and calls the task. A task that
offers ``prepare_trial(cfg, overrides)`` (mltrain's own) has validated each
trial before any started and returned a :class:`PreparedJob` whose ``run()``
-- submit and monitor an external process, touching nothing of Hydra -- is
what the launcher runs in its thread pool. Any other task runs right here, in
the main thread, as it would under Hydra's basic launcher.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from omegaconf import DictConfig, open_dict, read_write


@runtime_checkable
class PreparedJob(Protocol):
    """A validated job whose body has not run yet."""

    def run(self) -> Any:
        """The body: safe in a worker thread (no Hydra, no cwd, no logging set-up)."""


class PreparingTask(ABC):
    """A task function that validates a trial before any runs (mltrain's ``TrialTask``): declared, never probed."""

    @abstractmethod
    def prepare_trial(self, cfg: DictConfig, overrides: list[str]) -> PreparedJob:
        """Validate the trial's config in the main thread; the job returned runs later, in a worker."""


def takes_prepared(task_function: Any) -> bool:
    return isinstance(task_function, PreparingTask)


def begin_job(hydra_context: Any, task_function: Any, config: DictConfig, idx: int, prepared: Any = None,
              job_cfg: DictConfig | None = None, fresh_hydra: Callable[[], DictConfig] | None = None,
              dirs: Any = None, task: Any = None) -> Any:
    """Do Hydra's bookkeeping for job ``idx``; returns Hydra's ``JobReturn``.

    A plain task runs here, inside Hydra's own ``run_job``. A trial the task has already
    prepared (``prepared``, validated from ``job_cfg``: ``config`` without ``hydra``) gets
    ``run_job``'s bookkeeping without its two deep copies of the whole config
    (:func:`mltrain.hydra_compat.job_bookkeeping`) and a ``JobReturn`` holding the prepared
    job; :func:`end_job` fills in its result once the body has run. ``fresh_hydra``: ``config`` is a scratch
    config later jobs reuse (see :func:`mltrain.hydra_compat.job_bookkeeping`). ``dirs``: the sweep's
    :class:`mltrain.hydra_compat.SweepDirs`, which joins a prepared job's output folder. ``task``: the job's
    own fields where its bookkeeping leaves ``config`` alone (``TrialComposer.for_bookkeeping``).
    """
    from hydra.core.utils import run_job

    from mltrain.hydra_compat import job_bookkeeping

    if task is not None:
        assert prepared is not None and job_cfg is not None
        return job_bookkeeping(hydra_context, config, job_cfg, prepared, prepared.run, fresh_hydra=fresh_hydra,
                               dirs=dirs, task=task, num=idx)
    job = config.hydra.job
    with read_write(job), open_dict(job):  # read-only once HydraConfig has seen it (flags on this node alone:
        job.id = idx                       # setting one walks the node's subtree, and ``hydra`` is large)
        job.num = idx
    if prepared is None:
        return run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    assert job_cfg is not None
    return job_bookkeeping(hydra_context, config, job_cfg, prepared, prepared.run, fresh_hydra=fresh_hydra,
                           dirs=dirs)


def end_job(hydra_context: Any, config: DictConfig, job_return: Any, result: Any = None,
            error: BaseException | None = None) -> Any:
    """Record a prepared job's outcome in its ``JobReturn`` and fire the held-back ``on_job_end``."""
    from hydra.core.utils import JobStatus

    from mltrain.hydra_compat import job_ended

    if error is not None:
        job_return.status = JobStatus.FAILED
        job_return.return_value = error
    else:
        job_return.status = JobStatus.COMPLETED
        job_return.return_value = result
    job_ended(hydra_context, config, job_return)
    return job_return
