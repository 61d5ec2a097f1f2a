"""`make bench`: every benchmark, each figure printed beside its baseline measured in the same run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# bench_snapshot deletes ~90k files at the end, which slows file creation on this VM for minutes: run it last.
BENCHES = ["bench_core.py", "bench_docker.py", "bench_ssh.py", "bench_spark.py", "bench_sweep.py", "bench_snapshot.py"]


def main() -> int:
    failed = 0
    for name in BENCHES:
        path = HERE / name
        if not path.exists():
            continue
        print(f"== {name}", flush=True)
        failed += subprocess.run([sys.executable, str(path)]).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
