"""``mltrain plan <overrides>``: what a submit would do, changing nothing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from mltrain.cli.output import out


def command(parsed: argparse.Namespace) -> int:
    """Print the plan (``--json``: as JSON)."""
    from mltrain.cli.submit import use_config_dir

    use_config_dir(parsed)
    plan = plan_for(parsed.overrides, parsed.config_name)
    out(plan.to_json() if parsed.json else plan.render())
    return 0


def plan_for(overrides: Sequence[str], config_name: str | None) -> Any:
    """Compose, compile (as a submit does), inspect: reads the tree, writes no record, builds nothing."""
    from mltrain.config.compose import compose_validated
    from mltrain.config.spec import RunSpec
    from mltrain.plan.compile import compile
    from mltrain.plan.inspect import inspect

    cfg, job_yaml = compose_validated(overrides, config_name)
    return inspect(compile(RunSpec.from_config(cfg, job_yaml, list(overrides))))
