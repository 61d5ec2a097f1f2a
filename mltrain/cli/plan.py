"""``mltrain plan <overrides>``: what a submit would do, changing nothing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from mltrain.cli.output import out
from mltrain.store.workspace import Workspace


def command(parsed: argparse.Namespace) -> int:
    """Print the plan (``--json``: as JSON)."""
    from mltrain.cli.submit import use_config_dir

    use_config_dir(parsed)
    plan = plan_for(parsed.overrides, parsed.config_name)
    out(plan.to_json() if parsed.json else plan.render())
    return 0


def plan_for(overrides: Sequence[str], config_name: str | None) -> Any:
    """Compose, snapshot in dry-run, compile: reads the tree, writes no record, builds nothing."""
    from mltrain.config.compose import compose_validated
    from mltrain.config.spec import RunSpec, check_source
    from mltrain.environments import environment_for
    from mltrain.plan.compile import compile_plan
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.take import SnapshotLimits, take_snapshot
    from mltrain.targets import executor_for

    cfg, job_yaml = compose_validated(overrides, config_name)
    spec = RunSpec.from_config(cfg, job_yaml, list(overrides))
    check_source(spec)
    workspace = Workspace.locate(spec.workspace_dir)
    limits = SnapshotLimits.of(spec.snapshot)
    # The stat cache makes an unchanged tree cheap to plan; use it only where a workspace already
    # exists, so planning in a fresh project still creates nothing.
    cache_dir = workspace.cache if workspace.exists() else None
    snapshot = take_snapshot(spec.source_dir, BlobStore(workspace.blobs), limits=limits, cache_dir=cache_dir,
                             dry_run=True)
    executor = executor_for(spec.compute, workspace)
    environment = environment_for(spec.environment, source_dir=spec.source_dir, target=executor)
    executor.check_environment(environment)
    return compile_plan(spec, snapshot=snapshot, environment=environment, executor=executor)
