"""The plan's vocabulary: the stages a run goes through, and the ``Plan`` that lists them with what each did.

A plan is made by :func:`mltrain.plan.compile.compile` (pure: which stages, with which inputs), then either
looked at by :func:`mltrain.plan.inspect.inspect` (``mltrain plan``: fingerprints and what is already
satisfied, building nothing) or carried out by :func:`mltrain.plan.execute.execute` (a submit, a sweep's
trial, a rerun). Both write their findings onto the same stages of the same plan, so what ``mltrain plan``
prints is what a run stores as its ``plan.json``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec


class Stage(str, Enum):
    """What a run goes through, in this order (DESIGN.md §2)."""

    SNAPSHOT = "SNAPSHOT"
    ENVIRONMENT = "ENVIRONMENT"
    STAGE_CODE = "STAGE_CODE"
    LAUNCH = "LAUNCH"
    MONITOR = "MONITOR"
    COLLECT = "COLLECT"
    FINALIZE = "FINALIZE"


# What a stage's record says about it.
PENDING = "pending"  # compiled; not looked at or carried out yet
TO_DO = "to do"  # inspect: would be carried out
CACHED = "cached"  # already satisfied: nothing (new) was made
DONE = "done"  # execute: carried out
GIVEN = "given"  # execute: its result was handed in (a sweep's snapshot, the stored snapshot of a rerun)
LATER = "later"  # execute: left to whoever follows the run (``Run.wait``, ``mltrain runs attach``)
FAILED = "failed"  # execute: it raised; the stages after it did not run


@dataclass(frozen=True)
class SnapshotRef:
    """A snapshot taken already: what a caller hands in as ``given[Stage.SNAPSHOT]``.

    ``git`` is the git state recorded when it was taken; ``patch`` a file holding the uncommitted changes
    then (copied into each run's folder as ``git.patch``). The field names are those a sweep has stored
    in its settings since before plans drove execution: ``SnapshotRef(**stored)`` reads them.
    """

    id: str
    git: Mapping[str, Any] | None = None
    patch: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "git": dict(self.git) if self.git is not None else None, "patch": self.patch}


@dataclass(frozen=True)
class StagePlan:
    """One stage of a plan: what compile decided (``summary``, ``inputs``), then what was found or done."""

    stage: Stage
    summary: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None  # content hash of what the stage's result depends on, once known
    cached: bool = False
    state: str = PENDING
    seconds: float | None = None  # how long execute spent on it
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.stage.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "state": self.state, "summary": self.summary, "fingerprint": self.fingerprint,
            "cached": self.cached, "seconds": self.seconds, "inputs": dict(self.inputs),
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StagePlan:
        return cls(Stage(data["name"]), data["summary"], dict(data.get("inputs") or {}), data.get("fingerprint"),
                   bool(data.get("cached")), data.get("state", PENDING), data.get("seconds"),
                   dict(data.get("details") or {}))


@dataclass(frozen=True)
class Plan:
    """The stages of one run, in order. Frozen: a finding makes a new plan (:meth:`record`).

    ``spec`` is the run spec it was compiled from (what ``execute`` carries out); it is not part of the
    JSON form, which holds what the stages say about it.
    """

    experiment: str
    target: str
    environment: str
    stages: tuple[StagePlan, ...]
    spec: RunSpec | None = field(default=None, compare=False, repr=False)

    def stage(self, stage: Stage | str) -> StagePlan:
        wanted = Stage(stage)
        return next(s for s in self.stages if s.stage is wanted)

    def record(self, stage: Stage, **found: Any) -> Plan:
        """This plan with ``found`` (fingerprint, cached, state, seconds, summary, details) set on ``stage``."""
        stages = tuple(dataclasses.replace(s, **found) if s.stage is stage else s for s in self.stages)
        return dataclasses.replace(self, stages=stages)

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "target": self.target, "environment": self.environment,
                "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """A stored or printed plan read back (without its spec: something to compare, not to execute)."""
        return cls(data["experiment"], data["target"], data["environment"],
                   tuple(StagePlan.from_dict(s) for s in data["stages"]))

    def to_json(self) -> str:
        """The plan as JSON, with the run's secret values masked: its argv and inputs may hold one."""
        return _masked(json.dumps(self.to_dict(), indent=2, default=str), self._secrets())

    def render(self) -> str:
        """The plan for a person: one line a stage (secret values masked, as in ``to_json``)."""
        lines = [f"experiment {self.experiment} on {self.target} with {self.environment}"]
        for number, stage in enumerate(self.stages, 1):
            state = "" if stage.state == PENDING else stage.state
            fingerprint = f" [{stage.fingerprint[:12]}]" if stage.fingerprint else ""
            took = f" {stage.seconds:.2f}s" if stage.seconds is not None and stage.state != LATER else ""
            lines.append(f"{number}. {stage.name:<12}{fingerprint:<15} {state:<7}{took} {stage.summary}")
        return _masked("\n".join(lines), self._secrets())

    def _secrets(self) -> tuple[str, ...]:
        return self.spec.secrets() if self.spec is not None else ()


def _masked(text: str, secrets: Sequence[str]) -> str:
    if not secrets:
        return text
    from mltrain.hosts.masking import mask_text

    escaped = [json.dumps(v)[1:-1] for v in secrets]  # as JSON spells them
    return mask_text(text, [*secrets, *escaped])
