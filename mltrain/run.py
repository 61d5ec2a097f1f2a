"""Submitting a run: the Python API the CLI is a thin layer over. It compiles the run's plan and carries it
out (``mltrain.plan``); the ``Run`` it returns (``mltrain.runs``) is how to follow it.

    run = mltrain.submit(["script=train.py", "compute=local"])
    run.wait(show_output=True)

    # a retried submit (a CI job run again) gets the run the first attempt started
    run = mltrain.submit(["script=train.py"], idempotency_key="nightly-2026-12-05")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mltrain.results import Run
from mltrain.store.db import CANCELED, COMPLETED, FAILED


def submit(overrides: Sequence[str] = (), *, config_name: str | None = None, detach: bool = True,
           show_output: bool = False, parent_id: str | None = None, sweep_id: str | None = None,
           idempotency_key: str | None = None) -> Run:
    """Compose exactly as ``mltrain <overrides>`` does, prepare, launch; returns without waiting.

    ``idempotency_key``: if a run was submitted with this key before (in this workspace), return that run
    instead of starting another -- ``run.existing`` says so. Reusing a key with other overrides is an error.
    """
    from mltrain.config.compose import compose_validated
    from mltrain.config.spec import RunSpec

    cfg, job_yaml = compose_validated(overrides, config_name)
    spec = RunSpec.from_config(cfg, job_yaml, list(overrides))
    return submit_spec(spec, show_output=show_output, parent_id=parent_id, sweep_id=sweep_id,
                       idempotency_key=idempotency_key)


def submit_spec(spec: Any, *, show_output: bool = False, parent_id: str | None = None,
                sweep_id: str | None = None, snapshot_id: str | None = None,
                git: dict[str, Any] | None = None, run_id: str | None = None,
                idempotency_key: str | None = None) -> Run:
    """Run ``spec``: compile its plan and carry it out (``mltrain.plan.execute``) up to the launch.

    ``snapshot_id`` (with ``git``, the git state recorded with it): run that stored snapshot instead of
    taking one -- it is handed to the plan as its SNAPSHOT stage, given.
    ``run_id``: the id to record the run under (a sweep names the run before it exists).
    ``idempotency_key``: see ``submit``.
    """
    from mltrain.plan.compile import compile
    from mltrain.plan.execute import execute
    from mltrain.plan.stages import SnapshotRef, Stage

    given = {Stage.SNAPSHOT: SnapshotRef(snapshot_id, git)} if snapshot_id is not None else {}
    return execute(compile(spec), given=given, show_output=show_output, parent_id=parent_id,
                   sweep_id=sweep_id, run_id=run_id, idempotency_key=idempotency_key)


__all__ = ["CANCELED", "COMPLETED", "FAILED", "Run", "submit", "submit_spec"]
