"""The sweep commands: ``mltrain -m [--detach] ...`` and ``mltrain sweeps list|show|cancel|attach``.

This is the CLI layer for sweeps: it prints; the sweep modules report lines through the session.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from mltrain.errors import StoreError
from mltrain.store import CANCELED, COMPLETED, TERMINAL, Store, SweepRecord
from mltrain.workspace import Workspace

EXIT_CODES = {COMPLETED: 0, CANCELED: 130}
_HYDRA_SWEEP_FLAGS = ("-m", "--multirun", "--detach")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _info(message: str) -> None:
    sys.stderr.write(f"mltrain: {message}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------ mltrain -m
def run_multirun(parsed: argparse.Namespace, parser: argparse.ArgumentParser, args: list[str]) -> int:
    """Run the sweep through Hydra's runner (mltrain's sweeper and launcher are the config's defaults)."""
    from hydra._internal.utils import _run_hydra

    from mltrain.compose import CONFIG_NAME, CONFIG_PATH, prepare_hydra
    from mltrain.sweep_session import CONTROLLER_ENV, SweepSession, begin, end
    from mltrain.sweep_trial import TrialTask

    prepare_hydra()
    # Read once and dropped: the trials' own processes must not think they are sweep controllers.
    controller_of = os.environ.pop(CONTROLLER_ENV, None) or None
    session = SweepSession(args=[a for a in args if a not in _HYDRA_SWEEP_FLAGS], detach=parsed.detach,
                           sweep_id=controller_of, report=_info)
    begin(session)
    try:
        _run_hydra(args=parsed, args_parser=parser, task_function=TrialTask(), config_path=CONFIG_PATH,
                   config_name=CONFIG_NAME)
    except KeyboardInterrupt:
        if session.outcome is None:
            raise
    finally:
        end()
    if session.detached:
        _info(f"sweep {session.sweep} goes on in the background (mltrain sweeps attach {session.sweep})")
        _out(str(session.sweep))
        return 0
    if session.outcome is None:  # another launcher ran the trials one by one, and none failed
        return 0
    workspace, store = _open_for(session.sweep_dir)
    with store:
        _out(_render(store, workspace, store.get_sweep(session.outcome.sweep_id)))
    return EXIT_CODES.get(session.outcome.status, 1)


def _open_for(sweep_dir: str | None) -> tuple[Workspace, Store]:
    from pathlib import Path

    assert sweep_dir is not None
    workspace = Workspace(Path(sweep_dir).parents[1])
    return workspace, Store(workspace.db_path, create=False)


def _render(store: Store, workspace: Workspace, sweep: SweepRecord) -> str:
    from mltrain.sweep_report import render

    return render(store, workspace, sweep)


# --------------------------------------------------------------- mltrain sweeps
def add_parser(sub: Any) -> None:
    sweeps = sub.add_parser("sweeps", help="sweeps (mltrain -m) and their trials")
    sweeps.add_argument("--workspace", help="workspace folder (default: $MLTRAIN_HOME or ./.mltrain)")
    actions = sweeps.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the newest sweeps")
    listing.add_argument("--limit", type=int, default=20, help="newest N (0: all)")
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="a sweep's trials: params, status, primary metric, duration; best marked")
    show.add_argument("sweep_id")
    show.add_argument("--json", action="store_true")
    actions.add_parser("cancel", help="cancel the running trials and start no more").add_argument("sweep_id")
    actions.add_parser("attach", help="follow a sweep (resuming it if its controller is gone)").add_argument(
        "sweep_id")


def command(parsed: argparse.Namespace) -> int:
    handler = {"list": sweeps_list, "show": sweeps_show, "cancel": sweeps_cancel, "attach": sweeps_attach}
    return handler[parsed.action](parsed)


def _open(parsed: argparse.Namespace) -> tuple[Workspace, Store]:
    workspace = Workspace.locate(getattr(parsed, "workspace", None))
    if not workspace.db_path.exists():
        raise StoreError(f"no run history at {workspace.root}; run a sweep first (mltrain -m ...), or set MLTRAIN_HOME")
    return workspace, Store(workspace.db_path, create=False)


def sweeps_list(parsed: argparse.Namespace) -> int:
    from mltrain.commands import _table, _when
    from mltrain.sweep_report import sweep_dict

    workspace, store = _open(parsed)
    with store:
        data = [sweep_dict(store, workspace, s) for s in store.find_sweeps(limit=parsed.limit or None)]
    if parsed.json:
        _out(json.dumps(data, indent=2))
        return 0
    if not data:
        _out("no sweeps")
        return 0
    rows = [("ID", "STATUS", "CREATED", "TRIALS", "BEST", "SAMPLER", "EXPERIMENT")]
    for s in data:
        metric = s["settings"].get("primary_metric")
        best = next((t for t in s["trials"] if t["best"]), None)
        shown = f"#{best['idx']} {metric}={best['metric']:g}" if best else "-"
        done = sum(n for status, n in s["counts"].items() if status in TERMINAL)
        rows.append((s["id"], s["status"], _when(s["created"]), f"{done}/{s['planned'] or '?'}", shown,
                     s["settings"].get("sampler", "grid"), s["experiment"]))
    _out(_table(rows))
    return 0


def sweeps_show(parsed: argparse.Namespace) -> int:
    from mltrain.sweep_report import sweep_dict

    workspace, store = _open(parsed)
    with store:
        sweep = store.get_sweep(parsed.sweep_id)
        _out(json.dumps(sweep_dict(store, workspace, sweep), indent=2) if parsed.json
             else _render(store, workspace, sweep))
    return 0


def sweeps_cancel(parsed: argparse.Namespace) -> int:
    from mltrain.sweep_process import alive

    workspace, store = _open(parsed)
    with store:
        sweep = store.get_sweep(parsed.sweep_id)
        if sweep.is_terminal:
            _out(f"sweep {sweep.id} already {sweep.status}")
            return 0
        store.update_sweep(sweep.id, cancel_requested=1)
        if alive(sweep.controller):
            sweep = _wait_terminal(store, sweep.id, timeout=120.0)
        else:
            _cancel_orphans(store, workspace, sweep)
            sweep = store.get_sweep(sweep.id)
    _out(f"sweep {sweep.id} {sweep.status}" + (f" ({sweep.reason})" if sweep.reason else ""))
    return 0


def _wait_terminal(store: Store, sweep_id: str, timeout: float) -> SweepRecord:
    from mltrain.sweep_process import alive

    deadline = time.monotonic() + timeout
    while True:
        sweep = store.get_sweep(sweep_id)
        if sweep.is_terminal or time.monotonic() > deadline or not alive(sweep.controller):
            return sweep
        time.sleep(0.2)


def _cancel_orphans(store: Store, workspace: Workspace, sweep: SweepRecord) -> None:
    """No controller: cancel the sweep's running trials here, and end the sweep."""
    from mltrain.executors.base import cancel_run

    for trial in store.trials(sweep.id):
        if trial.run_id:
            record = store.get(trial.run_id)
            if not record.is_terminal:
                cancel_run(store, workspace, record, reason="canceled by user (mltrain sweeps cancel)")
    store.finish_sweep(sweep.id, CANCELED, "canceled by user (mltrain sweeps cancel)")


def sweeps_attach(parsed: argparse.Namespace) -> int:
    """Follow a sweep's controller log to its end; a sweep whose controller is gone is resumed first."""
    from mltrain.sweep_process import alive, controller_log, spawn

    workspace, store = _open(parsed)
    with store:
        sweep = store.get_sweep(parsed.sweep_id)
        if sweep.is_terminal:
            _out(_render(store, workspace, sweep))
            return EXIT_CODES.get(sweep.status, 1)
        if not alive(sweep.controller):
            _info(f"sweep {sweep.id} has no controller (it was killed or its machine restarted); resuming it")
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
                _info(f"canceling sweep {sweep.id} (Ctrl-C again leaves it running)")
                store.update_sweep(sweep.id, cancel_requested=1)
    return EXIT_CODES.get(sweep.status, 1)


def _copy_new(path: Any, offset: int) -> int:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return offset
    if data:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return offset + len(data)
