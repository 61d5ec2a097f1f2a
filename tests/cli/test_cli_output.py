"""What the history commands print, character for character, from a history with fixed times.

The tables and listings are made in ``mltrain.cli.output`` for both ``runs`` and ``sweeps``; these
outputs were taken from the code before that module existed, so a change to how the CLI shows
things is a decision someone makes here, not a drift.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest
from conftest import Project

from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.take import take_snapshot
from mltrain.store.db import CANCELED, COMPLETED, FAILED, PREPARING, RUNNING, Store, TrialRecord
from mltrain.store.workspace import Workspace

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
CONFIG = """\
experiment: exp
script: train.py
params:
  lr: {lr}
workspace:
  dir: /somewhere/{run}
"""


def _history(root: Path, source: Path) -> Workspace:
    """Four runs (two of them a sweep's trials), metrics, outputs, two snapshots, one sweep; times fixed."""
    workspace = Workspace(root).ensure()
    blobs = BlobStore(workspace.blobs)
    source.mkdir()
    (source / "train.py").write_text("print('one')\n")
    (source / "data.txt").write_text("same\n")
    first_snapshot = take_snapshot(source, blobs).manifest.id
    (source / "train.py").write_text("print('two')\n")
    (source / "new.py").write_text("x = 1\n")
    (source / "data.txt").unlink()
    second_snapshot = take_snapshot(source, blobs).manifest.id
    with Store(workspace.db_path) as store:
        sweep = store.create_sweep(sweep_id="sw000001", key="k", experiment="exp", command={},
                                   settings={"primary_metric": "loss", "goal": "min", "sampler": "grid"},
                                   planned=3, controller=None)
        runs = [("r0000001", COMPLETED, 0, None, None, 0.5), ("r0000002", FAILED, 75, "exit code 3", None, 0.25),
                ("r0000003", COMPLETED, 3725, None, sweep.id, 0.125), ("r0000004", CANCELED, 12.34, "stopped",
                                                                       sweep.id, 1 / 3)]
        for n, (run_id, status, _, reason, sweep_id, loss) in enumerate(runs):
            store.create_run(run_id=run_id, experiment="exp", script="train.py", source_dir=str(source),
                             compute="local", environment="user_managed", overrides=[f"params.lr={loss}"],
                             sweep_id=sweep_id)
            store.transition(run_id, PREPARING)
            store.transition(run_id, RUNNING)
            store.transition(run_id, status, reason=reason, exit_code=0 if status == COMPLETED else 3)
            store.update(run_id, snapshot_id=first_snapshot if n % 2 == 0 else second_snapshot,
                         git={"is_repo": True, "commit": "abc123", "branch": "main", "dirty": n == 1})
            store.add_metrics(run_id, [("loss", loss * 2, 1, T0), ("loss", loss, 2, T0), ("acc", 0.9, None, T0)])
            paths = workspace.run_paths(run_id)
            paths.dir.mkdir(parents=True, exist_ok=True)
            paths.config.write_text(CONFIG.format(lr=loss, run=run_id))
            paths.outputs.mkdir()
            (paths.outputs / "model.bin").write_bytes(b"x" * (n + 1) * 10)
            (paths.outputs / "sub").mkdir()
            (paths.outputs / "sub" / "notes.txt").write_text("hi")
            (paths.outputs / "link").symlink_to("model.bin")
        for idx, run_id in enumerate(("r0000003", "r0000004")):
            store.put_trial(TrialRecord(sweep.id, idx, [f"params.lr={0.1 * (idx + 3)}"], f"fp{idx}", run_id))
        store.put_trial(TrialRecord(sweep.id, 2, ["params.lr=0.020460187086026708"], "fp2", None,
                                    error="bad config"))
        store.finish_sweep(sweep.id, COMPLETED)
    db = sqlite3.connect(workspace.db_path)
    with db:
        for n, (run_id, _, took, *_) in enumerate(runs):
            created = T0 + 3600 * n
            db.execute("UPDATE runs SET created = ?, started = ?, ended = ? WHERE id = ?",
                       (created, created + 1, created + 1 + took, run_id))
            rows = db.execute("SELECT rowid FROM transitions WHERE run_id = ? ORDER BY rowid", (run_id,)).fetchall()
            for k, (rowid,) in enumerate(rows):
                db.execute("UPDATE transitions SET time = ? WHERE rowid = ?",
                           (created + (k if k < 3 else 1 + took), rowid))
        db.execute("UPDATE sweeps SET created = ?, ended = ?", (T0 + 7200, T0 + 20000))
    db.close()
    return workspace


@pytest.fixture
def history(project: Project, tmp_path: Path) -> Project:
    _history(project.workspace, tmp_path / "src")
    project.env = {**project.env, "TZ": "UTC"}
    return project


def _out(project: Project, *args: str) -> str:
    return project.run(*args, check=True).stdout.replace(str(project.root), "<root>")


def test_runs_list(history: Project) -> None:
    assert _out(history, "runs", "list") == textwrap.dedent("""\
        ID        EXPERIMENT  STATUS     CREATED              DURATION  TARGET  SCRIPT
        r0000004  exp         Canceled   2026-01-01 03:00:00  12.3s     local   train.py
        r0000003  exp         Completed  2026-01-01 02:00:00  1h02m     local   train.py
        r0000002  exp         Failed     2026-01-01 01:00:00  1m15s     local   train.py
        r0000001  exp         Completed  2026-01-01 00:00:00  0.0s      local   train.py
        """)
    assert _out(history, "runs", "list", "--limit", "2").splitlines()[-1] == "(newest 2 of 4; --limit 0 shows all)"
    assert [r["id"] for r in json.loads(_out(history, "runs", "list", "--json"))] == [
        "r0000004", "r0000003", "r0000002", "r0000001"]


def test_runs_show(history: Project) -> None:
    shown = _out(history, "runs", "show", "r0000002")
    assert shown == textwrap.dedent(f"""\
        run         r0000002
        experiment  exp
        status      Failed (exit code 3)
        exit code   3
        script      train.py  (source {history.root.parent / 'src'})
        target      local   environment user_managed
        snapshot    {shown.split()[shown.split().index('snapshot') + 1]}
        created     2026-01-01 01:00:00   duration 1m15s
        overrides   params.lr=0.25
        git         abc123 on main dirty
        metrics     acc=0.9  loss=0.25
        history     Queued 01:00:00  Preparing 01:00:01  Running 01:00:02  Failed 01:01:16
        folder      <root>/.mltrain/runs/r0000002
        curves      acc   ▄  0.9
                    loss  █▁  0.5 -> 0.25  (2 points)
        """)


def test_runs_metrics_and_outputs(history: Project) -> None:
    assert _out(history, "runs", "metrics", "r0000004") == textwrap.dedent("""\
        NAME  STEP  VALUE
        loss  1     0.666667
        loss  2     0.333333
        acc   -     0.9
        """)
    assert _out(history, "runs", "outputs", "r0000002") == textwrap.dedent("""\
        SIZE  PATH
        link  link -> model.bin
        20    model.bin
        2     sub/notes.txt
        """)


def test_runs_diff(history: Project) -> None:
    assert _out(history, "runs", "diff", "r0000001", "r0000002") == textwrap.dedent("""\
        --- r0000001
        +++ r0000002
        config:
          params.lr: 0.5 -> 0.25
          (not compared, as they say where a run was made from, not what it ran: workspace.dir)
        files:
          - data.txt
          + new.py
          M train.py
        """)


def test_sweeps_list_and_show(history: Project) -> None:
    assert _out(history, "sweeps", "list") == textwrap.dedent("""\
        ID        STATUS     CREATED              TRIALS  BEST           SAMPLER  EXPERIMENT
        sw000001  Completed  2026-01-01 02:00:00  3/3     #0 loss=0.125  grid     exp
        """)
    assert _out(history, "sweeps", "show", "sw000001") == textwrap.dedent("""\
        sweep sw000001  Completed
        3 of 3 trials: 1 canceled, 1 completed, 1 failed   sampler grid, goal min loss
        TRIAL  RUN       STATUS     loss      DURATION  PARAMS
        0 *    r0000003  Completed  0.125     62m05s    params.lr=0.3
        1      r0000004  Canceled   0.333333  12.3s     params.lr=0.4
        2      -         Failed     -         -         params.lr=0.0204602
        * best by loss (min)
        """)
    shown = json.loads(_out(history, "sweeps", "show", "sw000001", "--json"))
    assert [t["status"] for t in shown["trials"]] == ["Completed", "Canceled", "Failed"]


def test_done_runs_and_sweeps_say_so(history: Project) -> None:
    assert _out(history, "runs", "cancel", "r0000001") == "run r0000001 already Completed\n"
    assert _out(history, "sweeps", "cancel", "sw000001") == "sweep sw000001 already Completed\n"
    assert _out(history, "gc", "--dry-run", "--failed") .startswith("would free ")
