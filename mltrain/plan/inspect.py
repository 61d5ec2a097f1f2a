"""Looking at a plan without carrying it out: what ``mltrain plan`` prints.

For each stage, in the plan's order: its fingerprint and whether its result is there already (the
snapshot's blobs stored, the environment built, the code on the target), found with the cheap checks the
executors and environments offer. Reads the source tree; builds nothing, stores nothing, records no run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mltrain.plan.resolve import Resolved, resolve
from mltrain.plan.stages import CACHED, TO_DO, Plan, Stage


@dataclass
class _Look:
    """What the stages looked at so far have found (a later stage may need it)."""

    resolved: Resolved
    plan: Plan
    snapshot_id: str | None = None


def inspect(plan: Plan) -> Plan:
    """``plan`` with each stage's fingerprint, cache state and details found (``mltrain plan``)."""
    from mltrain.config.spec import check_source
    from mltrain.store.workspace import Workspace

    spec = plan.spec
    if spec is None:
        raise ValueError("a plan read back from JSON has no spec to inspect")
    check_source(spec)
    resolved = resolve(spec, Workspace.locate(spec.workspace_dir))
    look = _Look(resolved, resolved.describe(plan))
    for step in plan.stages:
        probe = _PROBES.get(step.stage)
        if probe is not None:
            look.plan = look.plan.record(step.stage, **probe(look))
    return look.plan


def _snapshot(look: _Look) -> dict[str, Any]:
    from mltrain.plan.snapshot import preview
    from mltrain.snapshot.limits import human

    assert look.plan.spec is not None
    snapshot = preview(look.plan.spec, look.resolved.workspace)
    look.snapshot_id = snapshot.manifest.id
    cached = snapshot.bytes_new == 0
    return {
        "fingerprint": snapshot.manifest.id, "cached": cached, "state": CACHED if cached else TO_DO,
        "summary": f"{snapshot.files} files, {human(snapshot.bytes)}, {human(snapshot.bytes_new)} new",
        "details": {"files": snapshot.files, "bytes": snapshot.bytes, "bytes_new": snapshot.bytes_new,
                    "warnings": list(snapshot.warnings)},
    }


def _environment(look: _Look) -> dict[str, Any]:
    environment, executor = look.resolved.environment, look.resolved.executor
    own = executor.own_environment(environment)
    if own is not None:  # the target makes it on its nodes
        return {"fingerprint": own.fingerprint, "cached": True, "state": CACHED, "summary": own.description}
    cached = environment.is_prepared(executor)
    return {"fingerprint": environment.fingerprint(), "cached": cached, "state": CACHED if cached else TO_DO,
            "summary": environment.describe()}


def _stage_code(look: _Look) -> dict[str, Any]:
    executor = look.resolved.executor
    assert look.snapshot_id is not None, "STAGE_CODE needs the SNAPSHOT stage before it"
    cached = executor.code_is_staged(look.snapshot_id)
    return {"fingerprint": look.snapshot_id, "cached": cached, "state": CACHED if cached else TO_DO,
            "summary": f"snapshot to {executor.describe()}"}


PLACEHOLDER = "<python>"
"""The interpreter in a planned argv: the environment is not made ready to find out its path."""


def _launch(look: _Look) -> dict[str, Any]:
    from mltrain.environments.base import PreparedEnvironment
    from mltrain.frameworks.base import framework_for

    spec = look.plan.spec
    assert spec is not None
    placeholder = PreparedEnvironment(interpreter=PLACEHOLDER, fingerprint="", description="")
    executor = look.resolved.executor
    resources = executor.resources(spec)
    framework = framework_for(spec.framework)
    argv = framework.shown(framework.command(spec, placeholder, executor))
    summary = " ".join(argv)
    if spec.resources.describe() != "none requested" or resources.mapping:
        summary += f"  [resources: {resources.describe()}]"
    return {"state": TO_DO, "summary": summary,
            "details": {"argv": argv, "env": sorted({name for name, _ in spec.env_vars} | set(resources.env)),
                        "resources": resources.to_dict()}}


_PROBES: dict[Stage, Callable[[_Look], dict[str, Any]]] = {
    Stage.SNAPSHOT: _snapshot,
    Stage.ENVIRONMENT: _environment,
    Stage.STAGE_CODE: _stage_code,
    Stage.LAUNCH: _launch,
    # MONITOR, COLLECT, FINALIZE happen while and after the job runs: nothing to look at beforehand.
}
