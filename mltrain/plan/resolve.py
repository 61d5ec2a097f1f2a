"""A plan's target and environment as the objects that do the work, for ``inspect`` and ``execute`` alike."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec
    from mltrain.environments.base import Environment
    from mltrain.plan.stages import Plan
    from mltrain.store.workspace import Workspace
    from mltrain.targets.base import Executor


@dataclass(frozen=True)
class Resolved:
    workspace: Workspace
    executor: Executor
    environment: Environment

    def describe(self, plan: Plan) -> Plan:
        """``plan`` naming its target and environment as they describe themselves (``ssh (me@box)``); an
        environment the target makes on its own nodes (Ray's runtime_env) is named as the target makes it, not
        by this machine's interpreter."""
        own = self.executor.own_environment(self.environment)
        environment = self.environment.describe() if own is None else f"{self.environment.kind} ({own.description})"
        return dataclasses.replace(plan, target=self.executor.describe(), environment=environment)


def resolve(spec: RunSpec, workspace: Workspace) -> Resolved:
    """The executor and environment ``spec`` names; an environment the target cannot use is refused here,
    before anything runs or is recorded."""
    from mltrain.environments import environment_for
    from mltrain.frameworks.base import framework_for
    from mltrain.targets import executor_for

    executor = executor_for(spec.compute, workspace)
    environment = environment_for(spec.environment, source_dir=spec.source_dir, target=executor)
    executor.check_environment(environment)
    framework_for(spec.framework).check(executor)
    return Resolved(workspace, executor, environment)
