"""Queries (issue 16): 10k runs filtered and sorted on a metric and a param, goal <= 300 ms end to end.

Each figure is printed beside its baseline measured in the same run: the store query beside the same
filter written by hand in raw SQL over ``metric_last``, the CLI (``mltrain runs list --where --sort``)
beside ``mltrain --version`` (the interpreter's and the entry point's own start).
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, report, run_cmd

from mltrain.store.db import Store
from mltrain.store.workspace import Workspace
from mltrain.tracking.query import find_runs

RUNS = 10_000
POINTS = 20  # per metric per run: the history holds 400k metric points
WHERE = "metrics.acc > 0.9 and params.lr < 0.01"
MLTRAIN = str(Path(sys.executable).parent / "mltrain")


def fill(store: Store) -> None:
    rng = random.Random(1)
    for i in range(RUNS):
        run = store.create_run(experiment=f"exp{i % 5}", script="train.py", source_dir="/p", compute="local",
                               environment="user_managed",
                               params={"lr": 10 ** -rng.randint(1, 4), "model.depth": rng.randint(1, 8)})
        store.transition(run.id, "Completed")
        store.replace_metrics(run.id, [(name, rng.random(), step, float(step)) for step in range(POINTS)
                                       for name in ("acc", "loss")])


def raw_sql(db: Path) -> int:
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT r.id, a.value FROM runs r JOIN metric_last a ON a.run_id = r.id AND a.name = 'acc'"
        " WHERE a.value > 0.9 AND json_extract(r.params, '$.\"lr\"') < 0.01 ORDER BY a.value DESC LIMIT 50"
    ).fetchall()
    conn.close()
    return len(rows)


def main() -> None:
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Workspace(Path(tmp) / ".mltrain")
        workspace.ensure()
        started = time.perf_counter()
        with Store(workspace.db_path) as store:
            fill(store)
        print(f"filled {RUNS} runs x {2 * POINTS} metric points in {time.perf_counter() - started:.1f}s")

        def api() -> None:
            with Store(workspace.db_path, create=False) as store:
                find_runs(store, workspace, where=WHERE, sort="metrics.acc:desc", limit=50)

        env = {k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_")}
        env["MLTRAIN_HOME"] = str(workspace.root)
        times = interleaved_medians({
            "raw": lambda: raw_sql(workspace.db_path),
            "api": api,
            "cli": run_cmd([MLTRAIN, "runs", "list", "--where", WHERE, "--sort", "metrics.acc:desc",
                            "--columns", "params.lr,metrics.acc"], env=env),
            "version": run_cmd([MLTRAIN, "--version"], env=env),
        }, repeat=7)
        report(f"find_runs: {RUNS} runs, --where + --sort (vs raw SQL)", times["api"], times["raw"], "<= 300 ms")
        report("mltrain runs list --where --sort (vs mltrain --version)", times["cli"], times["version"],
               "<= 300 ms")


if __name__ == "__main__":
    main()
