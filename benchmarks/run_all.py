"""`make bench`: every benchmark, each figure printed beside its baseline measured in the same run."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# bench_snapshot deletes ~0.5M files at the end (its 100k-file tree, store and copies), which slows file creation
# on this VM for minutes: it runs last but for bench_resubmit.
BENCHES = ["bench_core.py", "bench_docker.py", "bench_ssh.py", "bench_spark.py", "bench_ray.py", "bench_sweep.py",
           "bench_hydra_app.py", "bench_plots.py", "bench_query.py", "bench_distributed.py", "bench_snapshot.py",
           "bench_resubmit.py"]  # after the snapshot bench: it also deletes ~0.5M files at its end


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
        print(f"== {name}", flush=True)
        failed += subprocess.run([sys.executable, str(path)], env=env).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
