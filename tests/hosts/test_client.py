"""Judging a run's client from the row it wrote: alive, dead, or not ours to judge (mltrain.hosts.client)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mltrain.hosts.agent import start_time
from mltrain.hosts.client import client_state, identity, machine_key, stop_group
from mltrain.store.db import Store
from mltrain.store.workspace import Workspace
from mltrain.targets.base import CLIENT_DIED, reconcile


def _dead_process() -> dict[str, Any]:
    """The identity a client that has exited left on its row."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    info = {"pid": proc.pid, "start_time": start_time(proc.pid), "machine": machine_key()}
    proc.wait()
    return info


def test_client_state() -> None:
    me = identity()
    assert me["start_time"] and me["machine"]
    assert client_state(me) == "alive"
    assert client_state(_dead_process()) == "dead"
    assert client_state({**me, "start_time": "1"}) == "dead"  # the pid now belongs to another process
    assert client_state({**me, "machine": "another-boot/pid:[1]"}) == "unknown"  # its pids mean nothing here
    assert client_state({**me, "start_time": None}) == "unknown"
    assert client_state(None) == "unknown"


def test_stop_group_only_kills_the_keeper_recorded() -> None:
    proc = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        recorded = {**identity(), "group": {"pid": proc.pid, "start_time": "1"}}  # a recycled pid
        assert not stop_group(recorded)
        assert proc.poll() is None
        assert not stop_group({**recorded, "group": {"pid": proc.pid, "start_time": start_time(proc.pid)},
                               "machine": "elsewhere"})
        assert proc.poll() is None
        assert stop_group({**recorded, "group": {"pid": proc.pid, "start_time": start_time(proc.pid)}})
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _preparing(store: Store, client: dict[str, Any] | None) -> str:
    record = store.create_run(experiment="e", script="s.py", source_dir="/x", compute="local",
                              environment="venv", client=client)
    store.transition(record.id, "Preparing")
    return record.id


def test_reconcile_fails_a_run_whose_client_died_and_leaves_the_others(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / ".mltrain").ensure()
    with Store(workspace.db_path) as store:
        dead = _preparing(store, _dead_process())
        alive = _preparing(store, identity())
        elsewhere = _preparing(store, {**_dead_process(), "machine": "another-boot/pid:[1]"})
        unrecorded = _preparing(store, None)
        just_now = _preparing(store, _dead_process())
        with store._write() as db:  # all but one were created a while ago
            db.execute("UPDATE runs SET created = ? WHERE id != ?", (time.time() - 60, just_now))
        states = {run_id: reconcile(store, workspace, store.get(run_id)) for run_id in
                  (dead, alive, elsewhere, unrecorded, just_now)}
        assert (states[dead].status, states[dead].reason) == ("Failed", CLIENT_DIED)
        assert [t for t, _ in store.transitions(dead)] == ["Queued", "Preparing", "Failed"]
        for run_id in (alive, elsewhere, unrecorded, just_now):
            assert states[run_id].status == "Preparing", run_id
