"""Submitting a run and following it: the Python API the CLI is a thin layer over.

    run = mltrain.submit(["script=train.py", "compute=local"])
    run.wait(show_output=True)

    # a retried submit (a CI job run again) gets the run the first attempt started
    run = mltrain.submit(["script=train.py"], idempotency_key="nightly-2026-12-05")
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mltrain.errors import MltrainError, UsageError
from mltrain.runs import Run
from mltrain.store.db import CANCELED, COMPLETED, FAILED, PREPARING, RUNNING, IdempotencyHit, RunRecord, Store
from mltrain.store.workspace import Workspace
from mltrain.targets.base import ExitInfo, Handle, finalize


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
    """Run ``spec``: snapshot (or reuse ``snapshot_id``), prepare, stage, launch. Records every step.

    ``run_id``: the id to record the run under (a sweep names the run before it exists).
    ``idempotency_key``: see ``submit``.

    The row records this process (``mltrain.hosts.client``) and preparation runs its commands in a process
    group that ends with it, so a client that dies before the launch leaves neither a run stuck in
    ``Preparing`` nor a pip running. A run canceled while it is prepared is not launched (or, if the
    cancel came as it launched, its job is stopped at once).
    """
    from mltrain.config.spec import check_source
    from mltrain.environments import environment_for
    from mltrain.environments.gc import mark_used
    from mltrain.frameworks.base import framework_for
    from mltrain.hosts.client import PrepGroup, identity
    from mltrain.hosts.masking import mask_text
    from mltrain.plan.compile import compile_plan
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.take import SnapshotLimits, take_snapshot
    from mltrain.targets import executor_for
    from mltrain.targets.base import LaunchRequest

    if snapshot_id is None:
        check_source(spec)
    workspace = Workspace.locate(spec.workspace_dir).ensure()
    executor = executor_for(spec.compute, workspace)
    environment = environment_for(spec.environment, source_dir=spec.source_dir, target=executor)
    executor.check_environment(environment)
    client = identity()
    with Store(workspace.db_path) as store:
        try:
            record = store.create_run(
                experiment=spec.experiment, script=spec.script, source_dir=str(spec.source_dir),
                compute=spec.compute.type, environment=spec.environment.type, overrides=spec.overrides,
                parent_id=parent_id, sweep_id=sweep_id, run_id=run_id, client=client,
                idempotency_key=idempotency_key,
            )
        except IdempotencyHit as hit:
            return _existing(hit.record, spec, workspace, str(idempotency_key))
        paths = workspace.run_paths(record.id)
        paths.dir.mkdir(parents=True)
        paths.config.write_text(spec.config_yaml)
        paths.overrides.write_text(json.dumps(list(spec.overrides)))
        log_file = open(paths.log, "ab")  # noqa: SIM115 (closed in finally)

        def note(line: str) -> None:
            data = f"[mltrain] {line}\n".encode(errors="replace")
            log_file.write(data)
            log_file.flush()
            if show_output:
                sys.stderr.write(data.decode())

        def record_group(group: dict[str, Any]) -> None:
            store.update(record.id, client={**client, "group": group})

        handle: Handle | None = None
        offset = 0
        try:
            with PrepGroup(record_group):
                store.transition(record.id, PREPARING)
                blobs = BlobStore(workspace.blobs)
                if snapshot_id is None:
                    limits = SnapshotLimits.of(spec.snapshot)
                    snapshot = take_snapshot(spec.source_dir, blobs, limits=limits, cache_dir=workspace.cache)
                    for warning in snapshot.warnings:
                        note(f"snapshot: {warning}")
                    _record_git(store, record.id, spec.source_dir, paths.git_patch)
                else:
                    snapshot = _stored_snapshot(blobs, snapshot_id)
                    if git is not None:
                        store.update(record.id, git=git)
                store.update(record.id, snapshot_id=snapshot.manifest.id)
                prepared = environment.prepare(note, executor)
                store.update(record.id, env_fingerprint=prepared.fingerprint)
                mark_used(prepared.fingerprint)  # `mltrain gc --envs` spares what any project used lately
                if prepared.freeze is not None:
                    paths.environment_freeze.write_text(prepared.freeze + "\n")
                plan = compile_plan(spec, snapshot=snapshot, environment=environment, executor=executor,
                                    prepared=prepared)
                secrets = spec.secrets()
                escaped = [json.dumps(v)[1:-1] for v in secrets]  # as the JSON spells them
                paths.plan.write_text(mask_text(plan.to_json(), [*secrets, *escaped]))  # its argv may hold one
                code_dir = executor.stage_code(snapshot.manifest.id)
                request = LaunchRequest(
                    run_id=record.id,
                    argv=framework_for(spec.framework).command(spec, prepared, executor),
                    cwd=code_dir,
                    env=_run_env(spec, record, paths),
                    paths=paths,
                    experiment=spec.experiment,
                    image=prepared.image,
                    interpreter=prepared.interpreter,
                    secrets=secrets,
                )
                offset = log_file.tell()
                handle = executor.launch(request)
                if not store.transition(record.id, RUNNING, handle=handle.to_dict()):
                    _stop_unwanted(store, workspace, record.id, handle, executor.cancel_grace)
        except MltrainError as exc:
            if store.transition(record.id, FAILED, reason=str(exc)) or store.get(record.id).status != CANCELED:
                raise
            handle = None  # canceled while prepared: the cancel stopped the step that failed; nothing to report
        except KeyboardInterrupt:
            if handle is not None:  # launched already: the job must not outlive the Ctrl-C
                handle.cancel(executor.cancel_grace)
            store.transition(record.id, CANCELED, reason="canceled by user during preparation")
            raise
        except BaseException as exc:
            store.transition(record.id, FAILED, reason=f"internal error: {type(exc).__name__}: {exc}")
            raise
        finally:
            log_file.close()
    return Run(record.id, workspace, _handle=handle, _offset=offset)


def _existing(record: RunRecord, spec: Any, workspace: Workspace, key: str) -> Run:
    """The run an earlier submit started under ``key``, if it was asked for with the same overrides."""
    if list(record.overrides) != list(spec.overrides):
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


def _run_env(spec: Any, record: RunRecord, paths: Any) -> dict[str, str]:
    env = dict(spec.env_vars)
    env.update({
        "MLTRAIN_RUN_ID": record.id,
        "MLTRAIN_EXPERIMENT": record.experiment,
        "MLTRAIN_OUTPUT_DIR": str(paths.outputs),
        "MLTRAIN_METRICS_FILE": str(paths.metrics),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _record_git(store: Store, run_id: str, source_dir: Path, patch_file: Path) -> None:
    from mltrain.snapshot.git import capture

    info = capture(source_dir)
    data = info.to_dict()
    data.pop("patch", None)  # kept beside the record as bytes: it may hold non-UTF-8 files
    if info.patch:
        patch_file.write_bytes(info.patch_bytes())
    data["has_patch"] = bool(info.patch)
    store.update(run_id, git=data)


def _stored_snapshot(blobs: Any, snapshot_id: str) -> Any:
    from mltrain.snapshot.take import SnapshotResult

    manifest = blobs.load_manifest(snapshot_id)
    return SnapshotResult(manifest=manifest, files=len(manifest.entries), bytes=manifest.total_bytes,
                          bytes_new=0, warnings=())


__all__ = ["CANCELED", "COMPLETED", "FAILED", "Run", "submit", "submit_spec"]
