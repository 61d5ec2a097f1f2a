"""Looking at results (issue 16 part 2): what the sparklines, ``runs plot`` and ``sweeps report`` cost.

Each figure beside a baseline from the same history in the same run: ``runs show`` with its sparkline tail
vs ``runs show --json`` (no curves read); ``runs plot`` (text and a PNG) vs ``runs metrics --json`` of the same
runs' points; ``sweeps report`` vs ``sweeps show`` of the same sweep (the same trials, as a table).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, report, run_cmd

from mltrain.store.db import COMPLETED, PREPARING, RUNNING, Store, TrialRecord
from mltrain.store.workspace import Workspace

BIN = Path(sys.executable).parent
MLTRAIN = str(BIN / "mltrain")
POINTS = 100_000  # one long run: loss and acc, 50k steps each
TRIALS, STEPS = 200, 1000  # a big sweep: 200 trials, loss and acc over 1000 steps


def _history(workspace: Workspace) -> None:
    workspace.ensure()
    with Store(workspace.db_path) as store:
        store.create_sweep(sweep_id="bench001", key="k", experiment="bench", command={},
                           settings={"primary_metric": "loss", "goal": "min", "sampler": "random"},
                           planned=TRIALS, controller=None)
        runs = [(f"long{i:04d}", None, [f"params.lr={0.1 / (i + 1)}"], POINTS // 2) for i in range(5)]
        runs += [(f"t{i:07d}", i, [f"params.lr={10 ** (-4 + 3 * i / TRIALS):.6g}",
                                   f"params.opt={('sgd', 'adam')[i % 2]}"], STEPS) for i in range(TRIALS)]
        for run_id, idx, params, steps in runs:
            store.create_run(run_id=run_id, experiment="bench", script="train.py", source_dir="/src",
                             compute="local", environment="user_managed", overrides=params,
                             sweep_id="bench001" if idx is not None else None)
            for status in (PREPARING, RUNNING, COMPLETED):
                store.transition(run_id, status)
            rate = 1e-3 * (1 + (idx or 0) % 17)
            store.add_metrics(run_id, [(name, value, s, None) for s in range(steps) for name, value in
                                       (("loss", math.exp(-rate * s)), ("acc", 1 - math.exp(-rate * s)))])
            if idx is not None:
                store.put_trial(TrialRecord("bench001", idx, params, f"fp{idx}", run_id))
        store.finish_sweep("bench001", COMPLETED)


def main() -> None:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        workspace = Workspace(root / ".mltrain")
        _history(workspace)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_")}
        env["MLTRAIN_HOME"] = str(workspace.root)
        kw = {"cwd": root, "env": env}
        five = [f"long{i:04d}" for i in range(5)]

        show = interleaved_medians({"curves": run_cmd([MLTRAIN, "runs", "show", "long0000"], **kw),
                                    "json": run_cmd([MLTRAIN, "runs", "show", "long0000", "--json"], **kw)}, repeat=5)
        report(f"runs show of a run with {POINTS} points (sparklines) vs --json", show["curves"], show["json"],
               "<= 2x")
        plot = interleaved_medians({
            "text": run_cmd([MLTRAIN, "runs", "plot", *five], **kw),
            "png": run_cmd([MLTRAIN, "runs", "plot", *five, "-o", str(root / "p.png")], **kw),
            "metrics": run_cmd([MLTRAIN, "runs", "metrics", "long0000", "--json"], **kw),
        }, repeat=3)
        report(f"runs plot of 5 runs x {POINTS} points, text vs runs metrics --json of 1", plot["text"],
               plot["metrics"], "<= 3x")
        report(f"runs plot of 5 runs x {POINTS} points, -o PNG vs runs metrics --json of 1", plot["png"],
               plot["metrics"], "<= 10x")
        sweep = interleaved_medians({
            "report": run_cmd([MLTRAIN, "sweeps", "report", "bench001", "-o", str(root / "r.html")], **kw),
            "show": run_cmd([MLTRAIN, "sweeps", "show", "bench001"], **kw),
        }, repeat=3)
        report(f"sweeps report of {TRIALS} trials x {STEPS} steps x 2 metrics vs sweeps show", sweep["report"],
               sweep["show"], "<= 10x")
        size = (root / "r.html").stat().st_size
        report("  its page (plotly.js inlined: ~4.8 MB of it)", size / 1e6, None, "<= 25 MB", unit="MB")
    print(f"{os.cpu_count()} cores; load average (1 min) at start {load:.2f}, at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
