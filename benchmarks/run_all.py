"""`make bench`: every benchmark, each figure printed beside its baseline measured in the same run."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
# bench_snapshot deletes ~0.5M files at the end (its 100k-file tree, store and copies), which slows file creation
# on this VM for minutes: it runs last but for bench_resubmit.
BENCHES = ["bench_core.py", "bench_docker.py", "bench_ssh.py", "bench_spark.py", "bench_ray.py", "bench_sweep.py",
           "bench_hydra_app.py", "bench_plots.py", "bench_query.py", "bench_distributed.py", "bench_snapshot.py",
           "bench_resubmit.py"]  # after the snapshot bench: it also deletes ~0.5M files at its end


def settle(quiet: float = 0.5, patience: float = 120.0) -> tuple[float, float]:
    """Wait (up to ``patience`` s) for the 1-minute load average to fall below ``quiet`` per core: what the last
    benchmark left winding down (a Ray cluster stopping, a JVM, containers being removed) would otherwise be
    measured as the next one's. Returns the seconds waited and the load then."""
    started = time.monotonic()
    cores = os.cpu_count() or 1
    while (load := os.getloadavg()[0]) > quiet * cores and time.monotonic() - started < patience:
        time.sleep(5)
    return time.monotonic() - started, load


def main() -> int:
    # Measure what an installed user runs: pip compiles bytecode when it installs a wheel, but an editable
    # checkout under PYTHONDONTWRITEBYTECODE=1 would recompile every module on every start (~50 ms).
    compileall.compile_dir(str(HERE.parent / "mltrain"), quiet=1)
    compileall.compile_dir(str(HERE.parent / "hydra_plugins"), quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    failed = 0
    for name in BENCHES:
        path = HERE / name
        if not path.exists():
            continue
        waited, load = settle()
        print(f"== {name} (load {load:.2f} after {waited:.0f} s waiting for the machine to settle)", flush=True)
        failed += subprocess.run([sys.executable, str(path)], env=env).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
