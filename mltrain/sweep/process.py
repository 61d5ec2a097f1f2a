"""The sweep controller as a process: its folder, whether it still lives, and starting one that goes on alone.

A detached sweep (``mltrain -m --detach``) and a resumed one (``mltrain sweeps
attach`` after its controller died) are carried on by a controller process:
the same ``mltrain -m`` command line, with ``$MLTRAIN_SWEEP_ID`` naming the
sweep, in its own session so it outlives the terminal, writing its progress
to ``<workspace>/sweeps/<id>/controller.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mltrain.hosts.agent import start_time as process_start_time
from mltrain.store.workspace import Workspace
from mltrain.sweep.session import CONTROLLER_ENV

KEPT_ENV = ("MLTRAIN_CONFIG_DIR", "MLTRAIN_HOME", "MLTRAIN_CACHE_DIR")  # what decides which config and workspace


def sweep_dir(workspace: Workspace, sweep_id: str) -> Path:
    """``<workspace>/sweeps/<id>``: Hydra's sweep dir for the trials, the controller's log, the git patch."""
    return workspace.root / "sweeps" / sweep_id


def controller_log(workspace: Workspace, sweep_id: str) -> Path:
    return sweep_dir(workspace, sweep_id) / "controller.log"


def this_process() -> dict[str, Any]:
    return {"pid": os.getpid(), "start_time": process_start_time(os.getpid())}


def alive(controller: dict[str, Any] | None) -> bool:
    """Is the recorded controller process still running (the same process, not a recycled pid)?"""
    if not controller or not controller.get("pid"):
        return False
    now = process_start_time(int(controller["pid"]))
    return now is not None and now == controller.get("start_time")


def command(args: list[str]) -> dict[str, Any]:
    """What a controller process needs to run this sweep again: the arguments, where, with which config."""
    return {"args": list(args), "cwd": os.getcwd(), "env": {k: os.environ[k] for k in KEPT_ENV if k in os.environ}}


def spawn(workspace: Workspace, sweep_id: str, cmd: dict[str, Any]) -> dict[str, Any]:
    """Start a controller for ``sweep_id`` that carries on without this process; returns its identity."""
    log = controller_log(workspace, sweep_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **cmd.get("env", {}), CONTROLLER_ENV: sweep_id}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mltrain", "-m", *cmd["args"]], cwd=cmd["cwd"], env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return {"pid": process.pid, "start_time": process_start_time(process.pid)}
