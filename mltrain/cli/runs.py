"""``mltrain runs list|show|logs|attach|cancel|metrics|outputs|rerun|diff|export``: the run history."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mltrain.cli.output import (
    duration,
    ended,
    info,
    json_text,
    out,
    run_ended,
    table,
    warn,
    when,
    write,
    write_csv,
)
from mltrain.errors import MltrainError, StoreError
from mltrain.store.db import RunRecord, Store
from mltrain.store.workspace import Workspace
from mltrain.targets.base import cancel_run, follow, handle_for, reconcile

HINT = "submit a run first, or set MLTRAIN_HOME"


def open_history(parsed: argparse.Namespace, hint: str = HINT) -> tuple[Workspace, Store]:
    """The workspace ``--workspace`` (or ``$MLTRAIN_HOME``, ``./.mltrain``) names, and its store; it must exist."""
    workspace = Workspace.locate(getattr(parsed, "workspace", None))
    if not workspace.db_path.exists():
        raise StoreError(f"no run history at {workspace.root}; {hint}")
    return workspace, Store(workspace.db_path, create=False)


def command(parsed: argparse.Namespace) -> int:
    handler = {"list": runs_list, "show": runs_show, "logs": runs_logs, "attach": runs_attach, "cancel": runs_cancel,
               "metrics": runs_metrics, "outputs": runs_outputs, "rerun": runs_rerun, "diff": runs_diff,
               "export": runs_export}
    return handler[parsed.action](parsed)


def runs_list(parsed: argparse.Namespace) -> int:
    """The newest runs, or those ``--where``/``--sweep``/... pick, in ``--sort`` order, as a table, JSON or CSV."""
    from mltrain.tracking.query import differing, find_runs, parse_columns

    columns = parse_columns(parsed.columns) if parsed.columns else None  # a bad one fails before any I/O
    workspace, store = open_history(parsed)
    with store:
        sweep = store.get_sweep(parsed.sweep) if parsed.sweep else None
        found = find_runs(store, workspace, experiment=parsed.experiment, status=parsed.status,
                          sweep_id=sweep.id if sweep else None, where=parsed.where, sort=parsed.sort,
                          limit=parsed.limit or None)
        records = [_reconciled_or_as_is(store, workspace, r) for r in found.runs]
    if parsed.json:
        out(json_text([r.to_dict() | {"metrics": found.metrics[r.id]} for r in records]))
        return 0
    if columns is None and sweep is not None:
        metric = sweep.settings.get("primary_metric")
        names = ["status", *([f"metrics.{metric}"] if metric else []), "duration",
                 *(f"params.{key}" for key in differing(records))]
        columns = parse_columns(",".join(f"`{n}`" if "," in n else n for n in names))
    if columns is None:
        header = ["id", "experiment", "status", "created", "duration", "target", "script"]
        cells = [[r.id, r.experiment, r.status, r.created, r.duration, r.compute, r.script] for r in records]
    else:
        header = ["id", *(c.label for c in columns)]
        cells = [[r.id, *(c.value(r, found.metrics[r.id]) for c in columns)] for r in records]
    if parsed.csv:
        write_csv(header, cells)
        return 0
    if not records:
        out("no runs")
        return 0
    shown = [[_cell(name, value) for name, value in zip(header, row, strict=True)] for row in cells]
    out(table([[name.upper() for name in header], *shown]))
    if parsed.limit and len(records) == parsed.limit and found.total > parsed.limit:
        out(f"({'first' if parsed.sort else 'newest'} {parsed.limit} of {found.total}; --limit 0 shows all)")
    return 0


def _cell(name: str, value: Any) -> str:
    """A value as a table shows it (times as local times, durations short, floats to 6 digits)."""
    from mltrain.sweep.report import number

    if value is None:
        return "-"
    if name in ("created", "started", "ended"):
        return when(value)
    if name == "duration":
        return duration(value)
    if isinstance(value, float):
        return number(value)
    return value if isinstance(value, str) else json.dumps(value)


def runs_export(parsed: argparse.Namespace) -> int:
    """Copy runs to MLflow (``mltrain.tracking.mlflow``): the ids given, an experiment's, or all."""
    from mltrain.errors import UsageError
    from mltrain.tracking.mlflow import absolute_uri, default_uri, export, require

    chosen = sum(bool(x) for x in (parsed.run_ids, parsed.experiment, parsed.all))
    if chosen != 1:
        raise UsageError("runs export: name the runs: IDs, --experiment NAME or --all (one of them)")
    require()
    workspace, store = open_history(parsed)
    with store:
        if parsed.run_ids:
            records = [store.get(ident) for ident in parsed.run_ids]
        else:
            records = store.find(experiment=parsed.experiment)[::-1]  # oldest first, as they were made
        records = [_reconciled_or_as_is(store, workspace, r) for r in records]
        uri = absolute_uri(parsed.mlflow) if parsed.mlflow else default_uri(workspace)
        runs, sweeps = export(uri, store, workspace, records)
    out(f"exported {runs} run{'s' if runs != 1 else ''}" + (f" ({sweeps} sweep{'s' if sweeps != 1 else ''})"
                                                          if sweeps else "") + f" to {uri}")
    return 0


def _reconciled_or_as_is(store: Store, workspace: Workspace, record: RunRecord) -> RunRecord:
    """One unreachable target must not hide the whole history: show that run as last recorded."""
    if record.is_terminal:
        return record
    try:
        return reconcile(store, workspace, record)
    except MltrainError as exc:
        warn(f"run {record.id}: status not refreshed: {exc}")
        return record


def _show_dict(store: Store, workspace: Workspace, record: RunRecord) -> dict[str, Any]:
    data = record.to_dict()
    data["metrics"] = store.last_metrics(record.id)
    data["transitions"] = [{"status": s, "time": t} for s, t in store.transitions(record.id)]
    data["folder"] = str(workspace.run_paths(record.id).dir)
    return data


def runs_show(parsed: argparse.Namespace) -> int:
    from mltrain.tracking.sparkline import printable, run_lines, series

    workspace, store = open_history(parsed)
    with store:
        record = reconcile(store, workspace, store.get(parsed.run_id))
        data = _show_dict(store, workspace, record)
        curves = series(store.metric_points(record.id)) if not parsed.json else {}
    if parsed.json:
        out(json_text(data))
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
        f"created     {when(record.created)}   duration {duration(record.duration)}",
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
    if record.hardware:
        from mltrain.hosts.hardware import describe

        lines += describe(record.hardware)
    if data["metrics"]:
        # A job chose these names: printable, so an escape sequence logged as a name cannot drive the terminal.
        lines.append("metrics     " + "  ".join(f"{printable(k)}={v:g}" for k, v in data["metrics"].items()))
    lines.append("history     " + "  ".join(f"{t['status']} {when(t['time'])[11:]}" for t in data["transitions"]))
    for label, value in (record.handle or {}).get("display", {}).items():  # target-specific (e.g. Spark app id)
        lines.append(f"{label:<12}{value}")
    lines.append(f"folder      {data['folder']}")
    lines += run_lines(curves)
    out("\n".join(lines))
    return 0


def runs_logs(parsed: argparse.Namespace) -> int:
    workspace, store = open_history(parsed)
    with store:
        record = store.get(parsed.run_id)
        handle = handle_for(record, workspace)
        if parsed.follow and not record.is_terminal:
            try:
                follow(store, workspace, record, out=write, handle=handle)
            except KeyboardInterrupt:
                return 0
            return 0
        paths = workspace.run_paths(record.id)
        if handle is not None and not record.is_terminal:  # an ended run's log is complete in its folder
            data = handle.read_log(0)[0]
        else:
            data = paths.log.read_bytes() if paths.log.exists() else b""
        write(data)
        reconcile(store, workspace, record)
    return 0


def runs_attach(parsed: argparse.Namespace) -> int:
    """Follow a run as ``Run.wait`` does (so a run submitted with ``tracking.mlflow_uri`` is mirrored meanwhile)."""
    from mltrain.results import Run

    workspace, store = open_history(parsed)
    with store:
        record = store.get(parsed.run_id)
    return run_ended(Run(record.id, workspace).wait(out=write), workspace)


def runs_cancel(parsed: argparse.Namespace) -> int:
    workspace, store = open_history(parsed)
    with store:
        record = store.get(parsed.run_id)
        if record.is_terminal:
            out(f"run {record.id} already {record.status}")
            return 0
        record = cancel_run(store, workspace, record)
    out(ended("run", record.id, record.status, record.reason))
    return 0


def runs_metrics(parsed: argparse.Namespace) -> int:
    workspace, store = open_history(parsed)
    with store:
        record = reconcile(store, workspace, store.get(parsed.run_id))
        rows = store.metrics(record.id)
    if parsed.json:
        out(json_text([{"name": n, "step": s, "value": v, "time": t} for n, s, v, t in rows]))
        return 0
    if parsed.csv:
        write_csv(["name", "step", "value", "time"], rows)
        return 0
    if not rows:
        out(f"run {record.id} logged no metrics")
        return 0
    from mltrain.tracking.sparkline import printable

    cells = [("NAME", "STEP", "VALUE")] + [(printable(n), "-" if s is None else str(s), f"{v:g}")
                                           for n, s, v, _ in rows]
    out(table(cells))
    return 0


def runs_outputs(parsed: argparse.Namespace) -> int:
    """List a run's outputs, or copy them (``--download DEST``) all or nothing, never following a link."""
    from mltrain.util.outputs import Refused, copy_tree, listing

    workspace, store = open_history(parsed)
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
        out(f"{files} files of run {record.id} copied to {dest}")
        return 0
    found = listing(outputs)
    if not found:
        out(f"run {record.id} has no outputs")
        return 0
    rows = [(str(size) if size is not None else "link", path if target is None else f"{path} -> {target}")
            for path, size, target in found]
    out(table([("SIZE", "PATH"), *rows]))
    return 0


def runs_rerun(parsed: argparse.Namespace) -> int:
    from mltrain.plan.rerun import rerun

    workspace, store = open_history(parsed)
    with store:
        parent = store.get(parsed.run_id)
    run = rerun(workspace, parent, parsed.overrides, show_output=not parsed.detach)
    if parsed.detach:
        out(run.id)
        return 0
    info(f"run {run.id} started, a rerun of {parent.id}")
    return run_ended(run.wait(show_output=True), workspace)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


DIFF_IGNORED = ("workspace.", "source_dir", "snapshot.", "sweep.", "tracking.")
"""Config keys ``runs diff`` does not compare: they say where a run was made from, not what it ran.
``workspace.*`` is where the history is kept; ``source_dir`` where the code was read from and
``snapshot.*`` the limits on reading it (``files:`` compares the code itself); ``sweep.*`` the settings of
the sweep a trial belonged to (a trial's fingerprint leaves them out too); ``tracking.*`` where it was mirrored."""


def _ignored(key: str) -> bool:
    return any(key == prefix or key.startswith(prefix) for prefix in DIFF_IGNORED)


def runs_diff(parsed: argparse.Namespace) -> int:
    import yaml

    from mltrain.snapshot.blobstore import BlobStore

    workspace, store = open_history(parsed)
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
    if first.hardware or second.hardware:
        from mltrain.hosts.hardware import differences

        lines.append("hardware:")
        lines += [f"  {line}" for line in differences(first.hardware, second.hardware)] or ["  (same)"]
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
    out("\n".join(lines))
    return 0
