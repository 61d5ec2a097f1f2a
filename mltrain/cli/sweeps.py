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

from mltrain.errors import ConfigError, MltrainError, StoreError
from mltrain.store.db import CANCELED, COMPLETED, TERMINAL, Store, SweepRecord
from mltrain.store.workspace import Workspace

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

    from mltrain.config.compose import CONFIG_NAME, CONFIG_PATH, prepare_hydra
    from mltrain.sweep.session import CONTROLLER_ENV, SweepSession, begin, end
    from mltrain.sweep.trial import TrialTask

    prepare_hydra()
    if parsed.detach:
        _check_detachable(parsed)
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
    except MltrainError:
        raise
    except Exception as exc:
        problem = plugin_error(parsed, exc)
        if problem is None:
            raise
        raise problem from exc
    finally:
        end()
    if session.detached:
        _info(f"sweep {session.sweep} goes on in the background (mltrain sweeps attach {session.sweep})")
        _out(str(session.sweep))
        return 0
    if session.outcome is None:  # another launcher ran the trials one by one, and none failed
        _info("the trials ran one after another through a Hydra launcher other than mltrain's, with no sweep "
              "record (mltrain runs list shows their runs; mltrain's launcher, the default, keeps one)")
        return 0
    workspace, store = _open_for(session.sweep_dir)
    with store:
        _out(_render(store, workspace, store.get_sweep(session.outcome.sweep_id)))
    return EXIT_CODES.get(session.outcome.status, 1)


def _check_detachable(parsed: argparse.Namespace) -> None:
    """``--detach`` hands the sweep to a controller process, which only mltrain's launcher does; another
    launcher would run every trial here and now, so say so before any starts (one extra composition)."""
    from omegaconf import OmegaConf

    from hydra_plugins.mltrain_plugins.launcher import MltrainLauncher
    from mltrain.config.compose import compose

    try:
        target = OmegaConf.select(compose(parsed.overrides, parsed.config_name, multirun=True),
                                  "hydra.launcher._target_")
    except Exception:
        return  # Hydra reports it in a moment
    if target != f"{MltrainLauncher.__module__}.{MltrainLauncher.__name__}":
        raise ConfigError(f"--detach needs mltrain's launcher (hydra/launcher=mltrain, the default), not {target}, "
                          "which runs the trials in this process; drop --detach or the launcher override")


PLUGIN_KINDS = ("sweeper", "launcher")


def plugin_error(parsed: argparse.Namespace, exc: Exception) -> ConfigError | None:
    """Why Hydra could not set up ``hydra.sweeper`` / ``hydra.launcher``, as one line; None if that was not it.

    Hydra reports a plugin it cannot use as a bare RuntimeError, ImportError or AssertionError. On that
    (rare) path the config is composed again and each plugin's ``_target_`` checked against the installed
    ones: mltrain works with any installed Hydra sweeper or launcher (its own are the defaults), and an
    unknown class is named with the choices.
    """
    import traceback

    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher
    from hydra.plugins.sweeper import Sweeper
    from omegaconf import DictConfig, OmegaConf

    from mltrain.config.compose import compose, group_options

    try:
        cfg = compose(parsed.overrides, parsed.config_name, multirun=True)
    except Exception:
        return None
    targets = {}
    for kind, base in zip(PLUGIN_KINDS, (Sweeper, Launcher), strict=True):
        node = OmegaConf.select(cfg, f"hydra.{kind}")
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        installed = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(base)}
        choices = f"hydra/{kind}=NAME ({', '.join(group_options(f'hydra/{kind}'))}; mltrain is the default)"
        if target is None:
            return ConfigError(f"hydra.{kind} is not set; choose one with {choices}")
        if target not in installed:
            return ConfigError(
                f"hydra.{kind}._target_={target} is not an installed Hydra {kind} (Hydra loads {kind}s only from "
                f"the hydra_plugins package); choose one with {choices}, or install the plugin that provides it")
        targets[kind] = target
    # Both are installed classes: blame the one Hydra was setting up when it failed (the innermost; a
    # sweeper sets up its launcher inside its own setup).
    setting_up = [frame.f_code.co_name.removeprefix("instantiate_") for frame, _ in traceback.walk_tb(exc.__traceback__)
                  if frame.f_code.co_name in ("instantiate_sweeper", "instantiate_launcher")]
    if not setting_up:
        return None
    kind = setting_up[-1]
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    detail = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return ConfigError(f"hydra.{kind} ({targets[kind]}) could not be set up: {detail}")


def _open_for(sweep_dir: str | None) -> tuple[Workspace, Store]:
    from pathlib import Path

    assert sweep_dir is not None
    workspace = Workspace(Path(sweep_dir).parents[1])
    return workspace, Store(workspace.db_path, create=False)


def _render(store: Store, workspace: Workspace, sweep: SweepRecord) -> str:
    from mltrain.sweep.report import render

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
    from mltrain.cli.commands import _table, _when
    from mltrain.sweep.report import number, sweep_dict

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
        shown = f"#{best['idx']} {metric}={number(best['metric'])}" if best else "-"
        done = sum(n for status, n in s["counts"].items() if status in TERMINAL)
        rows.append((s["id"], s["status"], _when(s["created"]), f"{done}/{s['planned'] or '?'}", shown,
                     s["settings"].get("sampler", "grid"), s["experiment"]))
    _out(_table(rows))
    return 0


def sweeps_show(parsed: argparse.Namespace) -> int:
    from mltrain.sweep.report import sweep_dict

    workspace, store = _open(parsed)
    with store:
        sweep = store.get_sweep(parsed.sweep_id)
        _out(json.dumps(sweep_dict(store, workspace, sweep), indent=2) if parsed.json
             else _render(store, workspace, sweep))
    return 0


def sweeps_cancel(parsed: argparse.Namespace) -> int:
    from mltrain.sweep.process import alive

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
