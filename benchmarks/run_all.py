"""`make bench`: every benchmark, each figure printed beside its baseline measured in the same run."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
# The benchmarks of local processes first: docker, ssh, spark and ray leave containers, JVMs and clusters winding
# down, which a sweep of 16 process starts on 2 cores measured as its own cost (1.48x instead of 1.28x ideal).
# bench_snapshot deletes ~0.5M files at the end (its 100k-file tree, store and copies), which slows file creation
# on this VM for minutes: it runs last but for bench_resubmit.
BENCHES = ["bench_core.py", "bench_sweep.py", "bench_hydra_app.py", "bench_plots.py", "bench_query.py",
           "bench_docker.py", "bench_ssh.py", "bench_spark.py", "bench_ray.py", "bench_distributed.py",
           "bench_snapshot.py", "bench_resubmit.py"]  # after the snapshot bench: it also deletes ~0.5M files at its end


def settle(quiet: float = 0.5, idle: float = 0.9, patience: float = 180.0) -> tuple[float, float]:
    """Wait (up to ``patience`` s) for the 1-minute load average to fall below ``quiet`` per core and the CPUs to
    be ``idle`` over the last 3 s: what the last benchmark left winding down (a Ray cluster stopping, a JVM,
    containers being removed) would otherwise be measured as the next one's. The load average alone lags: it
    read 0.94 while the 5-minute one still read 3.2. Returns the seconds waited and the load then."""
    started = time.monotonic()
    cores = os.cpu_count() or 1
    while time.monotonic() - started < patience:
        if os.getloadavg()[0] <= quiet * cores and _idle_fraction(3.0) >= idle:
            break
        time.sleep(2)
    return time.monotonic() - started, os.getloadavg()[0]


def _idle_fraction(seconds: float) -> float:
    """The share of CPU time all cores spent idle (or waiting on I/O) over the next ``seconds``."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)

    idle_before, total_before = sample()
    time.sleep(seconds)
    idle_after, total_after = sample()
    return (idle_after - idle_before) / max(1, total_after - total_before)


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
