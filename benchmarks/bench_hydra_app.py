"""A Hydra app's sweep on mltrain's launcher (issue 15): each job an mltrain run (snapshot, record, own process)
against Hydra's basic launcher running the same jobs in the app's process, and against the same jobs each
started as a plain ``python app.py`` process (the floor for a job in a process of its own)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, report, run_cmd

JOBS = 6
APP = """import hydra

@hydra.main(version_base=None, config_path=None)
def main(cfg):
    return cfg.get("a", 0)

if __name__ == "__main__":
    main()
"""


def main() -> None:
    print(f"cores {os.cpu_count()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "app.py").write_text(APP)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_")}
        env.update(MLTRAIN_HOME=str(root / "ws"), MLTRAIN_CACHE_DIR=str(root / "cache"))
        values = ",".join(str(i) for i in range(JOBS))
        sweep = [sys.executable, "app.py", "-m", f"+a={values}", "hydra.sweep.dir=multirun/x"]
        kw = {"cwd": root, "env": env}

        def processes() -> None:
            for i in range(JOBS):
                run_cmd([sys.executable, "app.py", f"+a={i}", f"hydra.run.dir=runs/{i}"], **kw)()

        times = interleaved_medians({
            "basic": run_cmd([*sweep, "hydra/launcher=basic"], **kw),
            "processes": processes,
            "mltrain": run_cmd([*sweep, "hydra/launcher=mltrain"], **kw),
            "mltrain_serial": run_cmd([*sweep, "hydra/launcher=mltrain", "hydra.launcher.max_concurrent=1"], **kw),
        }, repeat=3)
    report(f"{JOBS}-job sweep, mltrain launcher (runs side by side) vs basic", times["mltrain"], times["basic"],
           "a job in its own process, recorded: < 8 x")
    report(f"{JOBS}-job sweep, mltrain launcher one at a time vs {JOBS} plain processes",
           times["mltrain_serial"], times["processes"], "< 2 x (snapshot, record, launch per job)")
    report("per job, mltrain launcher one at a time", times["mltrain_serial"] / JOBS, times["processes"] / JOBS,
           "< 2 x a plain process")


if __name__ == "__main__":
    main()
