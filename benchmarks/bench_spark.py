"""Spark (issue 6): a trivial pyspark job through mltrain vs the same spark-submit command typed by hand.

Both run on the same master (``local[2]``), from the same folder, with the same interpreter; the samples
alternate (hand, mltrain, hand, ...) so a machine that gets busier during the run weighs on both alike.
A JVM start swings by seconds on a busy machine, so three figures: the least disturbed sample of each
(min), the medians, and mltrain's own time around spark-submit in each run (its wall time minus the
spark-submit process's, from the run record), which the JVM's swings do not reach.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report

BIN = Path(sys.executable).parent
MLTRAIN = str(BIN / "mltrain")
MASTER = "local[2]"
REPEAT = 5

TRIVIAL = """
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
print("rows", spark.range(1000).count())
spark.stop()
"""


def _timed(argv: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - start


def _job_seconds(project: Path, env: dict[str, str]) -> float:
    """How long the last run's spark-submit ran: from Running (just after launch) to its exit code file."""
    listing = subprocess.run([MLTRAIN, "runs", "list", "--json", "--limit", "1"], cwd=project, env=env,
                             check=True, capture_output=True, text=True).stdout
    record = json.loads(listing)[0]
    exit_file = project / ".mltrain" / "runs" / record["id"] / "exit_code"
    return float(exit_file.stat().st_mtime - record["started"])


def main() -> int:
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        print("pyspark is not installed (pip install -e '.[spark]'): skipped")
        return 0
    spark_submit = str(Path(spec.origin).parent / "bin" / "spark-submit")
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "proj"
        project.mkdir()
        (project / "trivial.py").write_text(TRIVIAL)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_") and k != "SPARK_HOME"}
        env["MLTRAIN_CACHE_DIR"] = str(Path(tmp) / "cache")
        kw = {"cwd": project, "env": env}
        by_hand = [spark_submit, "--master", MASTER, "--deploy-mode", "client",
                   "--conf", f"spark.pyspark.python={sys.executable}",
                   "--conf", f"spark.pyspark.driver.python={sys.executable}", "trivial.py"]
        through = [MLTRAIN, "framework=pyspark", "compute=spark", f"compute.master='{MASTER}'",
                   f"environment.interpreter={sys.executable}", "script=trivial.py"]
        _timed(by_hand, **kw)  # warm-up: the page cache, the first snapshot and checkout
        _timed(through, **kw)
        hand, ours, own = [], [], []
        for _ in range(REPEAT):
            hand.append(_timed(by_hand, **kw))
            ours.append(_timed(through, **kw))
            own.append(ours[-1] - _job_seconds(project, env))
        report(f"pyspark job on {MASTER}: mltrain vs by hand (min)", min(ours), min(hand), "<= 1.1x")
        report(f"pyspark job on {MASTER}: mltrain vs by hand (median)", statistics.median(ours),
               statistics.median(hand), "<= 1.1x")
        report("mltrain's own time around spark-submit (median)", statistics.median(own), None,
               f"<= {0.1 * min(hand) * 1000:.0f} ms (10% of the job)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
