"""Carrying out a plan: the one path every run takes (a submit, a sweep's trial, a rerun).

``execute`` records the run, then goes through the plan's stages in the plan's order, one loop, each
stage's work a function below. A caller may hand in a stage it has satisfied already: a sweep gives its
snapshot (taken once for all its trials), a rerun the stored snapshot of the run it repeats. What each
stage came to -- done, cached, given; its fingerprint; the seconds it took -- is written to the run's
``plan.json`` (secret values masked), the same plan ``mltrain plan`` prints before a run.

The stages after LAUNCH (MONITOR, COLLECT, FINALIZE) belong to whoever follows the run (``Run.wait``,
``mltrain runs attach``, a sweep's worker): a submit returns once the job has started, so here they are
recorded as ``later``.

The run's row records this process (``mltrain.hosts.client``) and preparation runs its commands in a
process group that ends with it, so a client that dies before the launch leaves neither a run stuck in
``Preparing`` nor a pip running. A run canceled while it is prepared is not launched (or, if the cancel
came as it launched, its job is stopped at once).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Any, TypeVar

from mltrain.errors import MltrainError, UsageError
from mltrain.plan.resolve import Resolved, resolve
from mltrain.plan.stages import CACHED, DONE, FAILED, GIVEN, LATER, Plan, SnapshotRef, Stage
from mltrain.results import Run
from mltrain.store.db import CANCELED, RUNNING, IdempotencyHit, RunRecord, Store
from mltrain.store.db import FAILED as RUN_FAILED
from mltrain.store.workspace import RunPaths, Workspace
from mltrain.targets.base import ExitInfo, Handle, Resources, finalize

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec
    from mltrain.environments.base import PreparedEnvironment
    from mltrain.snapshot.take import SnapshotResult

NOTHING_GIVEN: Mapping[Stage, object] = MappingProxyType({})
T = TypeVar("T")


def execute(plan: Plan, *, given: Mapping[Stage, object] = NOTHING_GIVEN, show_output: bool = False,
            parent_id: str | None = None, sweep_id: str | None = None, run_id: str | None = None,
            idempotency_key: str | None = None, store: Store | None = None) -> Run:
    """Record a run and carry out ``plan`` up to its launch; returns without waiting for the job.

    ``given``: results of stages the caller satisfied already -- ``{Stage.SNAPSHOT: SnapshotRef(...)}``.
    ``run_id``: the id to record the run under (a sweep names the run before it exists).
    ``idempotency_key``: if a run was recorded under this key before (in this workspace), that run is
    returned instead (``run.existing``); the same key with other overrides is an error.
    ``store``: a connection to the run's workspace to record it through (left open), instead of a new one
    -- a sweep's worker holds one for all the trials it runs (one of another workspace is not used).
    """
    from mltrain.config.spec import check_source
    from mltrain.hosts.client import PrepGroup, identity

    spec = plan.spec
    if spec is None:
        raise ValueError("a plan read back from JSON has no spec to execute")
    unknown = set(given) - set(_GIVEN)
    if unknown:
        raise ValueError(f"only {sorted(s.value for s in _GIVEN)} can be given, not {sorted(s.value for s in unknown)}")
    if Stage.SNAPSHOT not in given:
        check_source(spec)
    if spec.mlflow_uri is not None:
        from mltrain.tracking.mlflow import require

        require(load=False)
    resolved = resolve(spec, Workspace.locate(spec.workspace_dir).ensure())
    workspace, executor = resolved.workspace, resolved.executor
    resources = executor.resources(spec)  # a request the target cannot honour is refused before a run exists
    client = identity()
    if store is not None and store.path != workspace.db_path:  # another workspace's: this run's own
        store = None
    record: RunRecord | None = None
    work: _Work | None = None
    try:
        with nullcontext(store) if store is not None else Store(workspace.db_path) as store:
            try:  # created Preparing, with what is known already: one write, where there were three
                record = store.create_run(
                    experiment=spec.experiment, script=spec.script, source_dir=str(spec.source_dir),
                    compute=spec.compute.type, environment=spec.environment.type, overrides=spec.overrides,
                    parent_id=parent_id, sweep_id=sweep_id, run_id=run_id, client=client,
                    idempotency_key=idempotency_key, params=_queryable_params(spec), preparing=True,
                    fields=_given_fields(given),
                )
            except IdempotencyHit as hit:
                return _existing(hit.record, spec.overrides, workspace, str(idempotency_key))
            if spec.mlflow_uri is not None:  # followers mirror it (mltrain.tracking.mlflow); the run never waits on it
                from mltrain.tracking.mlflow import mirror_state

                store.update(record.id, mlflow=mirror_state(spec.mlflow_uri, workspace))
            paths = workspace.run_paths(record.id)
            paths.dir.mkdir(parents=True)
            paths.config.write_text(spec.config_yaml)
            paths.overrides.write_text(json.dumps(list(spec.overrides)))
            work = _Work(plan, resolved, store, record, paths, open(paths.log, "ab"), show_output,  # noqa: SIM115
                         resources=resources)

            def record_group(group: dict[str, Any]) -> None:
                store.update(record.id, client={**client, "group": group})

            try:
                with PrepGroup(record_group):
                    _carry_out(work, given)
            except MltrainError as exc:
                if store.transition(record.id, RUN_FAILED, reason=str(exc), **work.pending) \
                        or store.get(record.id).status != CANCELED:
                    raise
                work.handle = None  # canceled while prepared: the cancel stopped the failed step; nothing to report
            except KeyboardInterrupt:
                raise  # canceled below, once this connection and the log are closed
            except BaseException as exc:
                store.transition(record.id, RUN_FAILED, reason=f"internal error: {type(exc).__name__}: {exc}",
                                 **work.pending)
                raise
            finally:
                work.log_file.close()
        return Run(record.id, workspace, _handle=work.handle, _offset=work.offset)
    except KeyboardInterrupt:
        if record is not None:  # wherever it landed, from the run's record to the return: one Ctrl-C, one cancel
            _cancel_interrupted(workspace, record.id, work)
        raise


def _cancel_interrupted(workspace: Workspace, run_id: str, work: _Work | None) -> None:
    """Ctrl-C once the run was recorded: it ends Canceled, its job (if launched) stopped and collected."""
    from mltrain.targets.base import CTRL_C, cancel_run

    with Store(workspace.db_path) as store:
        record = store.get(run_id)
        if record.is_terminal:
            return
        if work is not None and work.pending:  # what the stages found is kept all the same
            store.update(run_id, **work.pending)
        if work is None or work.handle is None:
            store.transition(run_id, CANCELED, reason=f"{CTRL_C} during preparation")
        else:  # launched already: the job must not outlive the Ctrl-C
            cancel_run(store, workspace, record, reason=CTRL_C, handle=work.handle)


def _given_fields(given: Mapping[Stage, object]) -> dict[str, Any]:
    """The run's fields a given stage result already holds, to record with the run itself."""
    ref = given.get(Stage.SNAPSHOT)
    return _snapshot_fields(ref) if isinstance(ref, SnapshotRef) else {}


def _snapshot_fields(ref: SnapshotRef) -> dict[str, Any]:
    return {"snapshot_id": ref.id, **({"git": dict(ref.git)} if ref.git is not None else {})}


def _queryable_params(spec: RunSpec) -> dict[str, Any]:
    """The params kept on the run's row for queries: as the script got them, but a value holding a secret
    (``params.token=${oc.env:TOKEN}``) as ``***`` -- the history keeps references, never the values."""
    secrets = [value for value in spec.secrets() if len(value) >= 4]
    return {key: "***" if isinstance(value, str) and any(s in value for s in secrets) else value
            for key, value in spec.params}


@dataclass
class _Work:
    """One run being carried out: what its stages share, and what each leaves for the next."""

    plan: Plan
    resolved: Resolved
    store: Store
    record: RunRecord
    paths: RunPaths
    log_file: IO[bytes]
    show_output: bool
    resources: Resources | None = None
    snapshot_id: str | None = None
    prepared: PreparedEnvironment | None = None
    code_dir: str | None = None
    handle: Handle | None = None
    offset: int = 0
    pending: dict[str, Any] = field(default_factory=dict)
    """Fields a stage found, written with the run's next status change (a write of their own each, before)."""

    @property
    def spec(self) -> RunSpec:
        assert self.plan.spec is not None  # execute refuses a plan without one
        return self.plan.spec

    def note(self, line: str) -> None:
        """A line of mltrain's own in the run's output log (and on stderr when the output is shown)."""
        data = f"[mltrain] {line}\n".encode(errors="replace")
        self.log_file.write(data)
        self.log_file.flush()
        if self.show_output:
            sys.stderr.write(data.decode())


@dataclass(frozen=True)
class _Outcome:
    state: str
    fingerprint: str | None = None
    cached: bool = False
    summary: str | None = None


def _carry_out(work: _Work, given: Mapping[Stage, object]) -> None:
    """The plan's stages, in its order; what each came to goes onto the plan, and the plan into plan.json."""
    work.plan = work.resolved.describe(work.plan)
    try:
        for step in work.plan.stages:
            details: dict[str, Any] = {}
            started = time.perf_counter()
            try:
                if step.stage in given:
                    outcome = _GIVEN[step.stage](work, given[step.stage], details)
                else:
                    outcome = _DO[step.stage](work, details)
            except BaseException:
                work.plan = work.plan.record(step.stage, state=FAILED, seconds=_since(started), details=details)
                raise
            found: dict[str, Any] = {"state": outcome.state, "cached": outcome.cached, "details": details,
                                     "seconds": None if outcome.state == LATER else _since(started)}
            if outcome.fingerprint is not None:
                found["fingerprint"] = outcome.fingerprint
            if outcome.summary is not None:
                found["summary"] = outcome.summary
            work.plan = work.plan.record(step.stage, **found)
    finally:
        work.paths.plan.write_text(work.plan.to_json())  # masked: an argv or an input may hold a secret


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 4)


# ------------------------------------------------------------------ the stages
def _snapshot(work: _Work, details: dict[str, Any]) -> _Outcome:
    from mltrain.plan.snapshot import take

    ref, result = take(work.spec, work.resolved.workspace, note=work.note, patch_file=work.paths.git_patch)
    work.store.update(work.record.id, **_snapshot_fields(ref))
    work.snapshot_id = ref.id
    details.update(_snapshot_details(result))
    cached = result.bytes_new == 0
    return _Outcome(CACHED if cached else DONE, ref.id, cached, _snapshot_summary(result))


def _given_snapshot(work: _Work, ref: object, details: dict[str, Any]) -> _Outcome:
    from mltrain.plan.snapshot import copy_patch, stored

    if not isinstance(ref, SnapshotRef):
        raise TypeError(f"given[Stage.SNAPSHOT] must be a SnapshotRef, not {type(ref).__name__}")
    result = stored(work.resolved.workspace, ref)
    if work.record.snapshot_id != ref.id:  # not recorded with the run already
        work.store.update(work.record.id, **_snapshot_fields(ref))
    copy_patch(ref, work.paths.git_patch)
    work.snapshot_id = ref.id
    details.update(_snapshot_details(result))
    return _Outcome(GIVEN, ref.id, True, _snapshot_summary(result))


def _snapshot_details(result: SnapshotResult) -> dict[str, Any]:
    return {"files": result.files, "bytes": result.bytes, "bytes_new": result.bytes_new,
            "warnings": list(result.warnings)}


def _snapshot_summary(result: SnapshotResult) -> str:
    from mltrain.snapshot.limits import human

    return f"{result.files} files, {human(result.bytes)}, {human(result.bytes_new)} new"


def _environment(work: _Work, details: dict[str, Any]) -> _Outcome:
    from mltrain.environments.gc import mark_used

    environment, executor = work.resolved.environment, work.resolved.executor
    own = executor.own_environment(environment)  # made by the target on its nodes (Ray's runtime_env)
    cached = own is not None or environment.is_prepared(executor)
    prepared = own or environment.prepare(work.note, executor)
    work.prepared = prepared
    work.pending["env_fingerprint"] = prepared.fingerprint
    mark_used(prepared.fingerprint)  # `mltrain gc --envs` spares what any project used lately
    if prepared.freeze is not None:
        work.paths.environment_freeze.write_text(prepared.freeze + "\n")
    details["interpreter"] = prepared.interpreter
    if prepared.image is not None:
        details["image"] = prepared.image
    return _Outcome(CACHED if cached else DONE, prepared.fingerprint, cached, prepared.description)


def _stage_code(work: _Work, details: dict[str, Any]) -> _Outcome:
    executor = work.resolved.executor
    snapshot_id = _needs(work.snapshot_id, Stage.STAGE_CODE, Stage.SNAPSHOT)
    cached = executor.code_is_staged(snapshot_id)
    work.code_dir = executor.stage_code(snapshot_id)
    return _Outcome(CACHED if cached else DONE, snapshot_id, cached, f"snapshot to {executor.describe()}")


def _launch(work: _Work, details: dict[str, Any]) -> _Outcome:
    from mltrain.frameworks.base import framework_for
    from mltrain.targets.base import LaunchRequest

    spec, executor, store, record = work.spec, work.resolved.executor, work.store, work.record
    prepared = _needs(work.prepared, Stage.LAUNCH, Stage.ENVIRONMENT)
    code_dir = _needs(work.code_dir, Stage.LAUNCH, Stage.STAGE_CODE)
    resources = work.resources or executor.resources(spec)
    framework = framework_for(spec.framework)
    argv = framework.command(spec, prepared, executor)
    shown = framework.shown(argv)
    env = {**_run_env(spec, record, work.paths), **resources.env}
    details.update({"argv": shown, "env": sorted({name for name, _ in spec.env_vars} | set(resources.env)),
                    "resources": resources.describe()})
    request = LaunchRequest(
        run_id=record.id, argv=argv, cwd=code_dir, env=env, paths=work.paths,
        experiment=spec.experiment, image=prepared.image, interpreter=prepared.interpreter,
        secrets=spec.secrets(), resources=resources,
    )
    work.offset = work.log_file.tell()
    work.handle = handle = executor.launch(request)
    fields, work.pending = {**work.pending, **_hardware(work, resources)}, {}
    if not store.transition(record.id, RUNNING, handle=handle.to_dict(), **fields):
        store.update(record.id, **fields)  # canceled meanwhile: what the stages found is kept all the same
        _stop_unwanted(store, work.resolved.workspace, record.id, handle, executor.cancel_grace)
    return _Outcome(DONE, summary=" ".join(shown))


def _hardware(work: _Work, resources: Resources) -> dict[str, Any]:
    """What the job's host gave it (``runs.hardware``), recorded with the run's move to Running; a probe that
    fails leaves the run going, unrecorded."""
    try:
        hardware = work.resolved.executor.hardware(resources)
    except Exception as exc:
        import logging

        logging.getLogger(__name__).warning("could not record the hardware of run %s: %s", work.record.id, exc)
        return {}
    return {"hardware": hardware} if hardware is not None else {}


def _later(work: _Work, details: dict[str, Any]) -> _Outcome:
    return _Outcome(LATER)


_DO: dict[Stage, Callable[[_Work, dict[str, Any]], _Outcome]] = {
    Stage.SNAPSHOT: _snapshot,
    Stage.ENVIRONMENT: _environment,
    Stage.STAGE_CODE: _stage_code,
    Stage.LAUNCH: _launch,
    Stage.MONITOR: _later,
    Stage.COLLECT: _later,
    Stage.FINALIZE: _later,
}

_GIVEN: dict[Stage, Callable[[_Work, object, dict[str, Any]], _Outcome]] = {
    Stage.SNAPSHOT: _given_snapshot,
}


def _needs(value: T | None, stage: Stage, before: Stage) -> T:
    if value is None:
        raise ValueError(f"the plan has {stage.value} without {before.value} before it")
    return value


# ------------------------------------------------------------------ helpers
def _existing(record: RunRecord, overrides: tuple[str, ...], workspace: Workspace, key: str) -> Run:
    """The run an earlier submit started under ``key``, if it was asked for with the same overrides."""
    if list(record.overrides) != list(overrides):
        theirs = " ".join(record.overrides) or "no overrides"
        raise UsageError(f"idempotency key {key!r} was used by run {record.id} with other overrides ({theirs}); "
                         "use a new key, or the same overrides to get that run")
    return Run(record.id, workspace, existing=True)


def _stop_unwanted(store: Store, workspace: Workspace, run_id: str, handle: Handle, grace: float) -> None:
    """The run ended (canceled) while it was being prepared, and its job has just started: stop it again."""
    handle.cancel(grace)
    info = handle.wait(5.0) or ExitInfo(None)
    record = store.get(run_id)
    finalize(store, workspace, record, handle, info, canceled=record.reason or "canceled")


def _run_env(spec: RunSpec, record: RunRecord, paths: RunPaths) -> dict[str, str]:
    env = dict(spec.env_vars)
    env.update({
        "MLTRAIN_RUN_ID": record.id,
        "MLTRAIN_EXPERIMENT": record.experiment,
        "MLTRAIN_OUTPUT_DIR": str(paths.outputs),
        "MLTRAIN_METRICS_FILE": str(paths.metrics),
        "PYTHONUNBUFFERED": "1",
    })
    return env
