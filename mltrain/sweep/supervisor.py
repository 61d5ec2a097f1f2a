"""What the launcher asks while it runs jobs, and may be vetoed by: the base runs a Hydra task as Hydra would.

Its own module so that the launcher (which runs jobs) and mltrain's sweep
controller (a supervisor with a record, resume, early termination) both build
on it without importing each other.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

from mltrain.sweep.jobs import PreparedJob
from mltrain.sweep.samplers import COMPLETE, FAILED, Outcome, Suggestion


class Supervisor:
    """What the launcher asks while it runs jobs. This one runs a Hydra task as Hydra would."""

    max_concurrent = 1
    tick_seconds = 0.1

    @property
    def first_index(self) -> int:
        """The number of the first job this supervisor's sampler hands out."""
        return 0

    def start(self, jobs: Sequence[Any]) -> bool:
        """Every up-front job is validated (``jobs``: what the task prepared); False: run none (e.g. detached)."""
        return True

    def body(self, job_return: Any, suggestion: Suggestion) -> Callable[[], Any] | None:
        """What to run in a worker for this job; None when it has run already."""
        from mltrain.hydra_compat import job_value

        value = job_value(job_return)
        return value.run if isinstance(value, PreparedJob) else None

    def finished(self, job_return: Any, suggestion: Suggestion) -> Outcome:
        """A job ended: its outcome, for the sampler."""
        from hydra.core.utils import JobStatus

        from mltrain.hydra_compat import job_value

        value = job_value(job_return)
        if job_return.status == JobStatus.COMPLETED and isinstance(value, numbers.Real):
            return Outcome(COMPLETE, float(value))
        return Outcome(FAILED)

    def may_start(self) -> bool:
        return True

    def tick(self) -> None:
        """Called about every ``tick_seconds`` while jobs run."""

    def interrupt(self) -> None:
        """Ctrl-C: stop what runs; the launcher then waits for the workers."""

    def close(self, error: BaseException | None = None) -> None:
        """The sweep is over (``error``: it broke off)."""
