"""Compiling a run spec into its plan: which stages run, with which inputs. Pure: no file system, no network.

What needs I/O to know -- the snapshot's manifest id, whether the environment is built, whether the code
is on the target already, the full argv -- is found later, by ``inspect`` (``mltrain plan``) or by
``execute`` as it goes, and recorded on these same stages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mltrain.config.spec import RunSpec
from mltrain.plan.stages import Plan, Stage, StagePlan

IGNORE_FILES = (".gitignore", ".amlignore", ".mltrainignore")
"""The files whose rules decide what a snapshot holds (``mltrain.snapshot.ignore``): ``.gitignore`` at any
depth, the other two at the root of the source directory."""

def compile(spec: RunSpec) -> Plan:
    """The plan for ``spec``: every stage, in order, with the inputs it depends on."""
    script_argv = spec.script_argv()
    framework = spec.framework.type
    stages = (
        StagePlan(Stage.SNAPSHOT, f"the files of {spec.source_dir}", {
            "source_dir": str(spec.source_dir),
            "ignore_files": list(IGNORE_FILES),
            "limits": _plain(spec.snapshot),
            "workspace": spec.workspace_dir,
        }),
        StagePlan(Stage.ENVIRONMENT, f"environment={spec.environment.type}", {
            "kind": spec.environment.type,
            "definition": _plain(spec.environment),  # with the files it names and the interpreter: the fingerprint
        }),
        StagePlan(Stage.STAGE_CODE, f"snapshot to compute={spec.compute.type}", {
            "target": spec.compute.type, "snapshot": Stage.SNAPSHOT.value,
        }),
        StagePlan(Stage.LAUNCH, f"{framework}: {' '.join(script_argv)}", {
            "framework": framework,  # it puts the interpreter (python) or spark-submit and its options in front
            "script_argv": script_argv,
            "env": [name for name, _ in spec.env_vars],
        }),
        StagePlan(Stage.MONITOR, "stream output, record status and metrics"),
        StagePlan(Stage.COLLECT, "outputs and metrics into the run record"),
        StagePlan(Stage.FINALIZE, "record exit status, duration"),
    )
    return Plan(spec.experiment, spec.compute.type, spec.environment.type, stages, spec=spec)


def _plain(value: Any) -> Any:
    """A config dataclass as JSON-able data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value
