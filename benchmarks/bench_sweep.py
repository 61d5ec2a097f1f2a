"""Sweeps (issue: sweeps): mltrain's launcher vs Hydra's basic launcher on the same 100 trials, vs the ideal;
and the launch overhead per trial beyond the trial's own process start."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import median_seconds, report, run_cmd

BIN = Path(sys.executable).parent
MLTRAIN = str(BIN / "mltrain")
TRIALS = 100
SLEEP = 0.2
CONCURRENT = 4


def wall(argv: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    took = time.perf_counter() - start
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}:\n{tail}")
    return took


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        project = root / "proj"
        project.mkdir()
        (project / "sleep.py").write_text(f"import time\ntime.sleep({SLEEP})\n")
        (project / "noop.py").write_text("pass\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_")}
        env["MLTRAIN_CACHE_DIR"] = str(root / "cache")
        kw = {"cwd": project, "env": env}
        trials = f"params.i=range(0,{TRIALS})"
        subprocess.run([MLTRAIN, "script=noop.py"], check=True, capture_output=True, **kw)  # warm the caches

        # `experiment=` differs per sweep so no trial is reused from an earlier one (same fingerprint).
        ours = wall([MLTRAIN, "-m", "script=sleep.py", trials, f"sweep.max_concurrent={CONCURRENT}",
                     "experiment=ours"], **kw)
        basic = wall([MLTRAIN, "-m", "script=sleep.py", trials, "hydra/launcher=basic", "hydra/sweeper=basic",
                      "experiment=basic"], **kw)
        startup = median_seconds(run_cmd([MLTRAIN, "script=noop.py"], **kw), repeat=5)
        ideal = TRIALS * SLEEP / CONCURRENT + startup
        report(f"{TRIALS} x {SLEEP}s trials, max_concurrent={CONCURRENT}: Hydra basic launcher vs mltrain",
               basic, ours, ">= 3x faster")
        report(f"{TRIALS} x {SLEEP}s trials, max_concurrent={CONCURRENT}: mltrain vs ideal", ours, ideal, "<= 1.5x")

        # Overhead per trial: the slope of sweep wall time over trial count at max_concurrent=1, less the
        # trial's own process start (the same interpreter starting the same script, measured bare).
        few, many = 5, 45
        t_few = min(wall([MLTRAIN, "-m", "script=noop.py", f"params.i=range(0,{few})", "sweep.max_concurrent=1",
                          f"experiment=few{r}"], **kw) for r in range(2))
        t_many = min(wall([MLTRAIN, "-m", "script=noop.py", f"params.i=range(0,{many})", "sweep.max_concurrent=1",
                           f"experiment=many{r}"], **kw) for r in range(2))
        per_trial = (t_many - t_few) / (many - few)
        bare = median_seconds(run_cmd(["/bin/sh", "-c", '"$@"', "sh", sys.executable, "noop.py", "--i", "1"],
                                      cwd=project), repeat=15)
        report("launch overhead per trial beyond its own process start", per_trial - bare, None, "<= 40 ms")
        report("  (per trial at max_concurrent=1, its process start alone)", per_trial, bare, "-")


if __name__ == "__main__":
    main()
