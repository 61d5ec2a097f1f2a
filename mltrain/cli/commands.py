"""What each ``mltrain runs ...`` / ``plan`` / ``gc`` subcommand does; printing happens here, not in the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mltrain.errors import ConfigError, MltrainError, StoreError, UsageError
from mltrain.store.db import TERMINAL, RunRecord, Store
from mltrain.store.workspace import Workspace
from mltrain.targets.base import cancel_run, follow, handle_for, reconcile


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _workspace(parsed: argparse.Namespace) -> Workspace:
    return Workspace.locate(getattr(parsed, "workspace", None))


def _open(parsed: argparse.Namespace) -> tuple[Workspace, Store]:
    workspace = _workspace(parsed)
    if not workspace.db_path.exists():
        raise StoreError(f"no run history at {workspace.root}; submit a run first, or set MLTRAIN_HOME")
    return workspace, Store(workspace.db_path, create=False)


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def _duration(record: RunRecord) -> str:
    seconds = record.duration
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


# --------------------------------------------------------------------- runs
def runs_list(parsed: argparse.Namespace) -> int:
    workspace, store = _open(parsed)
    with store:
        records = store.find(experiment=parsed.experiment, status=parsed.status, limit=parsed.limit or None)
        records = [_reconciled_or_as_is(store, workspace, r) for r in records]
        total = store.count()
    if parsed.json:
        _out(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    if not records:
        _out("no runs")
        return 0
    rows = [("ID", "EXPERIMENT", "STATUS", "CREATED", "DURATION", "TARGET", "SCRIPT")]
    rows += [(r.id, r.experiment, r.status, _when(r.created), _duration(r), r.compute, r.script) for r in records]
    _out(_table(rows))
    if parsed.limit and len(records) == parsed.limit and total > parsed.limit:
        _out(f"(newest {parsed.limit} of {total}; --limit 0 shows all)")
    return 0


def _reconciled_or_as_is(store: Store, workspace: Workspace, record: RunRecord) -> RunRecord:
    """One unreachable target must not hide the whole history: show that run as last recorded."""
    if record.is_terminal:
        return record
    try:
        return reconcile(store, workspace, record)
    except MltrainError as exc:
        sys.stderr.write(f"mltrain: warning: run {record.id}: status not refreshed: {exc}\n")
        return record


def _show_dict(store: Store, workspace: Workspace, record: RunRecord) -> dict[str, Any]:
    data = record.to_dict()
    data["metrics"] = store.last_metrics(record.id)
    data["transitions"] = [{"status": s, "time": t} for s, t in store.transitions(record.id)]
    data["folder"] = str(workspace.run_paths(record.id).dir)
    return data


def runs_show(parsed: argparse.Namespace) -> int:
    workspace, store = _open(parsed)
    with store:
        record = reconcile(store, workspace, store.get(parsed.run_id))
        data = _show_dict(store, workspace, record)
    if parsed.json:
        _out(json.dumps(data, indent=2))
        return 0
    lines = [
        f"run         {record.id}",
        f"experiment  {record.experiment}",
        f"status      {record.status}" + (f" ({record.reason})" if record.reason else ""),
        f"exit code   {record.exit_code if record.exit_code is not None else '-'}",
        f"script      {record.script}  (source {record.source_dir})",
        f"target      {record.compute}   environment {record.environment}"
        + (f" [{record.env_fingerprint[:12]}]" if record.env_fingerprint else ""),
        f"snapshot    {record.snapshot_id or '-'}",
        f"created     {_when(record.created)}   duration {_duration(record)}",
        f"overrides   {' '.join(record.overrides) or '-'}",
    ]
    if record.parent_id:
        lines.append(f"rerun of    {record.parent_id}")
    git = record.git or {}
    if git.get("is_repo"):
        flags = [" dirty" if git.get("dirty") else "", " (not on any remote)" if git.get("pushed") is False else ""]
        lines.append(f"git         {git.get('commit') or '-'} on {git.get('branch') or '(detached)'}{''.join(flags)}")
    elif git:
        lines.append("git         not a git repository")
    if data["metrics"]:
        lines.append("metrics     " + "  ".join(f"{k}={v:g}" for k, v in data["metrics"].items()))
    lines.append("history     " + "  ".join(f"{t['status']} {_when(t['time'])[11:]}" for t in data["transitions"]))
    for label, value in (record.handle or {}).get("display", {}).items():  # target-specific (e.g. Spark app id)
        lines.append(f"{label:<12}{value}")
    lines.append(f"folder      {data['folder']}")
    _out("\n".join(lines))
    return 0


def runs_logs(parsed: argparse.Namespace) -> int:
    workspace, store = _open(parsed)
    with store:
        record = store.get(parsed.run_id)
        handle = handle_for(record, workspace)
        if parsed.follow and not record.is_terminal:
            try:
                follow(store, workspace, record, out=_write, handle=handle)
            except KeyboardInterrupt:
                return 0
            return 0
        paths = workspace.run_paths(record.id)
        if handle is not None and not record.is_terminal:  # an ended run's log is complete in its folder
            data = handle.read_log(0)[0]
        else:
            data = paths.log.read_bytes() if paths.log.exists() else b""
        _write(data)
        reconcile(store, workspace, record)
    return 0


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def runs_attach(parsed: argparse.Namespace) -> int:
    from mltrain.cli.main import _report_end

    workspace, store = _open(parsed)
    with store:
        record = store.get(parsed.run_id)
        record = follow(store, workspace, record, out=_write)
    return _report_end(record)


def runs_cancel(parsed: argparse.Namespace) -> int:
    workspace, store = _open(parsed)
    with store:
        record = store.get(parsed.run_id)
        if record.is_terminal:
            _out(f"run {record.id} already {record.status}")
            return 0
        record = cancel_run(store, workspace, record)
    _out(f"run {record.id} {record.status}" + (f" ({record.reason})" if record.reason else ""))
    return 0


def runs_metrics(parsed: argparse.Namespace) -> int:
    workspace, store = _open(parsed)
    with store:
        record = reconcile(store, workspace, store.get(parsed.run_id))
        rows = store.metrics(record.id)
    if parsed.json:
        _out(json.dumps([{"name": n, "step": s, "value": v, "time": t} for n, s, v, t in rows], indent=2))
        return 0
    if not rows:
        _out(f"run {record.id} logged no metrics")
        return 0
    table = [("NAME", "STEP", "VALUE")] + [(n, "-" if s is None else str(s), f"{v:g}") for n, s, v, _ in rows]
    _out(_table(table))
    return 0


def runs_outputs(parsed: argparse.Namespace) -> int:
    """List a run's outputs, or copy them (``--download DEST``) all or nothing, never following a link."""
    from mltrain.util.outputs import Refused, copy_tree, listing

    workspace, store = _open(parsed)
    with store:
        record = reconcile(store, workspace, store.get(parsed.run_id))
    outputs = workspace.run_paths(record.id).outputs
    if parsed.download:
        dest = Path(parsed.download)
        try:
            files = copy_tree(outputs, dest) if outputs.is_dir() and not outputs.is_symlink() else 0
        except Refused as exc:
            raise StoreError(f"not copying the outputs of run {record.id} to {dest}: {exc}; nothing was copied "
                             f"({exc.hint})") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StoreError(f"cannot copy the outputs of run {record.id} to {dest}: {reason} "
                             "(choose a folder you can write to)") from None
        _out(f"{files} files of run {record.id} copied to {dest}")
        return 0
    found = listing(outputs)
    if not found:
        _out(f"run {record.id} has no outputs")
        return 0
    rows = [(str(size) if size is not None else "link", path if target is None else f"{path} -> {target}")
            for path, size, target in found]
    _out(_table([("SIZE", "PATH"), *rows]))
    return 0


def runs_rerun(parsed: argparse.Namespace) -> int:
    from mltrain.cli.main import _info, _report_end
    from mltrain.plan.rerun import rerun

    workspace, store = _open(parsed)
    with store:
        parent = store.get(parsed.run_id)
    run = rerun(workspace, parent, parsed.overrides, show_output=not parsed.detach)
    if parsed.detach:
        _out(run.id)
        return 0
    _info(f"run {run.id} started, a rerun of {parent.id}")
    return _report_end(run.wait(show_output=True))


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


DIFF_IGNORED = ("workspace.", "source_dir", "snapshot.", "sweep.")
"""Config keys ``runs diff`` does not compare: they say where a run was made from, not what it ran.
``workspace.*`` is where the history is kept; ``source_dir`` where the code was read from and
``snapshot.*`` the limits on reading it (``files:`` compares the code itself); ``sweep.*`` the settings of
the sweep a trial belonged to (a trial's fingerprint leaves them out too)."""


def _ignored(key: str) -> bool:
    return any(key == prefix or key.startswith(prefix) for prefix in DIFF_IGNORED)


def runs_diff(parsed: argparse.Namespace) -> int:
    import yaml

    from mltrain.snapshot.blobstore import BlobStore

    workspace, store = _open(parsed)
    with store:
        first, second = store.get(parsed.first), store.get(parsed.second)
    configs = []
    for record in (first, second):
        path = workspace.run_paths(record.id).config
        configs.append(_flat(yaml.safe_load(path.read_text()) if path.exists() else {}))
    lines = [f"--- {first.id}", f"+++ {second.id}", "config:"]
    differ = sorted(k for k in set(configs[0]) | set(configs[1]) if configs[0].get(k) != configs[1].get(k))
    changed = [k for k in differ if not _ignored(k)]
    lines += [f"  {k}: {configs[0].get(k, '<absent>')!r} -> {configs[1].get(k, '<absent>')!r}" for k in changed]
    if not changed:
        lines.append("  (same)")
    if len(changed) < len(differ):
        lines.append("  (not compared, as they say where a run was made from, not what it ran: "
                     f"{', '.join(k for k in differ if _ignored(k))})")
    lines.append("files:")
    if first.snapshot_id and second.snapshot_id:
        blobs = BlobStore(workspace.blobs)
        a = {e.path: e.digest for e in blobs.load_manifest(first.snapshot_id).entries}
        b = {e.path: e.digest for e in blobs.load_manifest(second.snapshot_id).entries}
        diffs = [f"  - {p}" for p in sorted(set(a) - set(b))] + [f"  + {p}" for p in sorted(set(b) - set(a))]
        diffs += [f"  M {p}" for p in sorted(set(a) & set(b)) if a[p] != b[p]]
        lines += sorted(diffs, key=lambda line: line[4:]) or ["  (same snapshot)" if a == b else "  (same)"]
    else:
        lines.append("  (a run without a snapshot)")
    _out("\n".join(lines))
    return 0


# --------------------------------------------------------------------- plan
def plan_for(overrides: Sequence[str], config_name: str | None) -> Any:
    """Compose, compile (as a submit does), inspect: reads the tree, writes no record, builds nothing."""
    from mltrain.config.compose import compose_validated
    from mltrain.config.spec import RunSpec
    from mltrain.plan.compile import compile
    from mltrain.plan.inspect import inspect

    cfg, job_yaml = compose_validated(overrides, config_name)
    return inspect(compile(RunSpec.from_config(cfg, job_yaml, list(overrides))))


# ----------------------------------------------------------------------- gc
def gc_command(parsed: argparse.Namespace) -> int:
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.materialize import remove_tree

    engine = _gc_engine(parsed.engine) if parsed.envs is not None else None  # a bad --engine stops gc first
    workspace, store = _open(parsed)
    with store:
        records = store.find()
        cutoff = time.time() - parsed.older_than * 86400 if parsed.older_than is not None else None
        doomed = [
            r for r in records
            if r.status in TERMINAL
            and ((cutoff is not None and r.created < cutoff) or (parsed.failed and r.status in ("Failed", "Canceled")))
        ]
        doomed_ids = {r.id for r in doomed}
        # Active runs keep their snapshot too, even one still being written (no snapshot_id yet:
        # its blobs are young, and blob gc spares anything newer than the grace period).
        keep = {r.snapshot_id for r in records if r.snapshot_id and r.id not in doomed_ids}
        if not parsed.dry_run and doomed:
            store.delete_runs(doomed_ids)
            for record in doomed:
                remove_tree(workspace.run_paths(record.id).dir)
    blobs = BlobStore(workspace.blobs)
    removed, freed = blobs.gc(keep, dry_run=parsed.dry_run, grace_seconds=parsed.grace)
    checkouts = 0
    if workspace.checkouts.is_dir():
        for folder in workspace.checkouts.iterdir():
            in_progress = folder.name.startswith(".tmp-")  # a checkout being built right now
            if folder.name not in keep and not in_progress and not parsed.dry_run:
                remove_tree(folder)
                checkouts += 1
    verb = "would free" if parsed.dry_run else "freed"
    _out(f"{verb} {freed / 1e6:.1f} MB: {removed} blobs, {len(doomed)} runs, {checkouts} checkouts")
    if parsed.envs is not None:
        active = {r.env_fingerprint for r in records if r.env_fingerprint and r.status not in TERMINAL}
        _gc_environments(parsed, active, engine)
    return 0


def _gc_engine(url: str | None) -> Any:
    """The engine ``gc --envs`` prunes: the local one (which may be absent), or ``--engine URL``, which must
    answer before anything is deleted."""
    from mltrain.targets.docker.util import EngineConfig, connect

    try:
        engine = connect(EngineConfig(base_url=url))
    except ConfigError as exc:
        raise UsageError(f"gc --engine {url}: {str(exc).split(': ', 1)[-1]}") from None
    if url:
        engine.request("GET", "/_ping", versioned=False)  # unreachable: a one-line TargetError naming the URL
    return engine


def _gc_environments(parsed: argparse.Namespace, active: set[str], engine: Any) -> None:
    """``--envs DAYS``: venvs and mltrain-built images no run on this machine used for DAYS days."""
    from mltrain.environments.gc import prune

    pruned = prune(parsed.envs, active, engine=engine, engine_required=bool(parsed.engine), dry_run=parsed.dry_run)
    verb = "would remove" if parsed.dry_run else "removed"
    _out(f"{verb} {len(pruned.venvs)} venvs ({pruned.freed / 1e6:.1f} MB) and {len(pruned.images)} images "
         f"not used for {parsed.envs:g} days"
         + ("" if pruned.images_checked else " (no Docker engine answered: images not checked)"))
    for name in [*pruned.venvs, *pruned.images]:
        _out(f"  {name}")
    for note in pruned.notes:
        _out(f"  {note}")
