"""The execution plan: the stages a run goes through, each with a fingerprint and its cache state.

This is what makes mltrain a build tool: a stage whose fingerprint is already
satisfied (snapshot blobs stored, environment built, code staged) is skipped.
``mltrain plan`` prints it and does nothing else.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from mltrain.config.spec import RunSpec
from mltrain.environments.base import Environment, PreparedEnvironment
from mltrain.frameworks.base import framework_for
from mltrain.snapshot.limits import human
from mltrain.targets.base import Executor

STAGES = ("SNAPSHOT", "ENVIRONMENT", "STAGE_CODE", "LAUNCH", "MONITOR", "COLLECT", "FINALIZE")


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    fingerprint: str | None = None
    cached: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    experiment: str
    target: str
    environment: str
    stages: tuple[Stage, ...]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def render(self) -> str:
        lines = [f"experiment {self.experiment} on {self.target} with {self.environment}"]
        for number, stage in enumerate(self.stages, 1):
            state = "cached" if stage.cached else ("to do" if stage.fingerprint else "")
            fingerprint = f" [{stage.fingerprint[:12]}]" if stage.fingerprint else ""
            lines.append(f"{number}. {stage.name:<12}{fingerprint:<15} {state:<7} {stage.summary}")
        return "\n".join(lines)


def compile_plan(spec: RunSpec, *, snapshot: Any, environment: Environment, executor: Executor,
                 prepared: PreparedEnvironment | None = None) -> Plan:
    """``snapshot`` is a ``SnapshotResult`` (dry-run for ``mltrain plan``, real for a submit);
    ``prepared`` is the ready environment when there is one (a plan shows ``<python>`` instead)."""
    manifest_id = snapshot.manifest.id
    env_fp = environment.fingerprint()
    placeholder = PreparedEnvironment(interpreter="<python>", fingerprint=env_fp, description="")
    argv = framework_for(spec.framework).command(spec, prepared or placeholder, executor)
    stages = (
        Stage("SNAPSHOT", f"{snapshot.files} files, {human(snapshot.bytes)}, {human(snapshot.bytes_new)} new",
              manifest_id, snapshot.bytes_new == 0,
              {"files": snapshot.files, "bytes": snapshot.bytes, "bytes_new": snapshot.bytes_new,
               "warnings": list(snapshot.warnings)}),
        Stage("ENVIRONMENT", environment.describe(), env_fp, environment.is_prepared(executor)),
        Stage("STAGE_CODE", f"snapshot to {executor.describe()}", manifest_id,
              executor.code_is_staged(manifest_id)),
        Stage("LAUNCH", " ".join(argv), None, False, {"argv": argv, "env": [k for k, _ in spec.env_vars]}),
        Stage("MONITOR", "stream output, record status and metrics"),
        Stage("COLLECT", "outputs and metrics into the run record"),
        Stage("FINALIZE", "record exit status, duration"),
    )
    return Plan(spec.experiment, executor.describe(), environment.describe(), stages)
