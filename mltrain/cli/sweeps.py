"""``mltrain sweeps list|show|cancel|attach|report``: sweeps (``mltrain -m``) and their trials, from the run history.

Starting a sweep is ``mltrain.cli.submit``; the tables are ``mltrain.cli.output``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from mltrain.cli.output import ended, exit_code, info, json_text, out, sweep_table, sweeps_table, write, write_csv
from mltrain.cli.runs import open_history
from mltrain.store.db import CANCELED, Store, SweepRecord
from mltrain.store.workspace import Workspace


def command(parsed: argparse.Namespace) -> int:
    handler = {"list": sweeps_list, "show": sweeps_show, "cancel": sweeps_cancel, "attach": sweeps_attach,
               "report": sweeps_report}
    return handler[parsed.action](parsed)


def _open(parsed: argparse.Namespace) -> tuple[Workspace, Store]:
    return open_history(parsed, "run a sweep first (mltrain -m ...), or set MLTRAIN_HOME")


def sweeps_list(parsed: argparse.Namespace) -> int:
    from mltrain.sweep.report import sweep_dict

    workspace, store = _open(parsed)
    with store:
        data = [sweep_dict(store, workspace, s) for s in store.find_sweeps(limit=parsed.limit or None)]
    if parsed.json:
        out(json_text(data))
        return 0
    if parsed.csv:
        best = [next((t for t in s["trials"] if t["best"]), None) for s in data]
        write_csv(["id", "status", "created", "trials", "planned", "best_trial", "best_metric", "sampler",
                   "experiment"],
                  [[s["id"], s["status"], s["created"], len(s["trials"]), s["planned"], b and b["idx"],
                    b and b["metric"], s["settings"].get("sampler", "grid"), s["experiment"]] for s, b in zip(
                      data, best, strict=True)])
        return 0
    out(sweeps_table(data) if data else "no sweeps")
    return 0


def sweeps_show(parsed: argparse.Namespace) -> int:
    from mltrain.sweep.report import sweep_report

    workspace, store = _open(parsed)
    with store:
        report = sweep_report(store, workspace, store.get_sweep(parsed.sweep_id))
    if parsed.csv:
        metric = report.sweep.settings.get("primary_metric") or "metric"
        write_csv(["trial", "run", "status", metric, "duration", "reused", "best", "params"],
                  [[r.idx, r.run_id, r.status, r.metric, r.duration, r.reused, r.best, " ".join(r.params)]
                   for r in report.rows])
        return 0
    out(json_text(report.to_dict()) if parsed.json else sweep_table(report))
    return 0


def sweeps_report(parsed: argparse.Namespace) -> int:
    """Write the sweep's HTML report (``mltrain.tracking.report``), openable with no network."""
    from pathlib import Path

    from mltrain.tracking.report import write_report

    workspace, store = _open(parsed)
    with store:
        sweep = store.get_sweep(parsed.sweep_id)  # a bad id fails here, before plotly is imported
    path = write_report(workspace, sweep.id, Path(parsed.output or f"sweep-{sweep.id}.html"))
    out(f"wrote {path}")
    return 0


def sweeps_cancel(parsed: argparse.Namespace) -> int:
    from mltrain.sweep.process import alive

    workspace, store = _open(parsed)
    with store:
        sweep = store.get_sweep(parsed.sweep_id)
        if sweep.is_terminal:
            out(f"sweep {sweep.id} already {sweep.status}")
            return 0
        store.update_sweep(sweep.id, cancel_requested=1)
        if alive(sweep.controller):
            sweep = _wait_terminal(store, sweep.id, timeout=120.0)
        else:
            _cancel_orphans(store, workspace, sweep)
            sweep = store.get_sweep(sweep.id)
    out(ended("sweep", sweep.id, sweep.status, sweep.reason))
    return 0


def _wait_terminal(store: Store, sweep_id: str, timeout: float) -> SweepRecord:
    from mltrain.sweep.process import alive

    deadline = time.monotonic() + timeout
    while True:
        sweep = store.get_sweep(sweep_id)
        if sweep.is_terminal or time.monotonic() > deadline or not alive(sweep.controller):
            return sweep
        time.sleep(0.2)


def _cancel_orphans(store: Store, workspace: Workspace, sweep: SweepRecord) -> None:
    """No controller: cancel the sweep's running trials here, and end the sweep."""
    from mltrain.targets.base import cancel_run

    for trial in store.trials(sweep.id):
        if trial.run_id:
            record = store.get(trial.run_id)
            if not record.is_terminal:
                cancel_run(store, workspace, record, reason="canceled by user (mltrain sweeps cancel)")
    store.finish_sweep(sweep.id, CANCELED, "canceled by user (mltrain sweeps cancel)")


def sweeps_attach(parsed: argparse.Namespace) -> int:
    """Follow a sweep's controller log to its end; a sweep whose controller is gone is resumed first."""
    from mltrain.sweep.process import alive, controller_log, spawn
    from mltrain.sweep.report import sweep_report

    workspace, store = _open(parsed)
    with store:
        sweep = store.get_sweep(parsed.sweep_id)
        if sweep.is_terminal:
            out(sweep_table(sweep_report(store, workspace, sweep)))
            return exit_code(sweep.status)
        if not alive(sweep.controller):
            info(f"sweep {sweep.id} has no controller (it was killed or its machine restarted); resuming it")
            store.update_sweep(sweep.id, controller=spawn(workspace, sweep.id, sweep.command))
        log = controller_log(workspace, sweep.id)
        offset = 0
        canceling = False
        while True:
            try:
                offset = _copy_new(log, offset)
                sweep = store.get_sweep(sweep.id)
                if sweep.is_terminal and not alive(sweep.controller):
                    _copy_new(log, offset)
                    break
                time.sleep(0.2)
            except KeyboardInterrupt:
                if canceling:
                    raise
                canceling = True
                info(f"canceling sweep {sweep.id} (Ctrl-C again leaves it running)")
                store.update_sweep(sweep.id, cancel_requested=1)
    return exit_code(sweep.status)


def _copy_new(path: Any, offset: int) -> int:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return offset
    if data:
        write(data)
    return offset + len(data)
