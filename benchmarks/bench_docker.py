"""Docker target (issue 4): a cached second run vs a bare `docker run --rm`; a 10,000-file snapshot's cost.

Needs a running engine and the local base image (`bash .ci/provision-docker.sh`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, median_seconds, report, run_cmd
from make_tree import make_tree

BIN = Path(sys.executable).parent
MLTRAIN = str(BIN / "mltrain")
BASE_IMAGE = os.environ.get("MLTRAIN_TEST_BASE_IMAGE", "mltrain-test/python:bookworm")


def _images(label: str) -> set[str]:
    out = subprocess.run(["docker", "images", "-q", "--no-trunc", "--filter", f"label={label}"],
                         check=True, capture_output=True, text=True).stdout
    return set(out.split())


def main() -> int:
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        print(f"skipped: no engine or no {BASE_IMAGE} (run `bash .ci/provision-docker.sh`)")
        return 1
    label = f"mltrain_bench={uuid.uuid4().hex[:12]}"
    overrides = ["script=noop.py", "compute=docker", "environment=docker_python",
                 f"environment.base_image={BASE_IMAGE}", f"+environment.labels.{label}",
                 f"+compute.labels.{label}"]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            env = {k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_")}
            env["MLTRAIN_CACHE_DIR"] = str(root / "cache")
            small, big = root / "small", root / "big"
            small.mkdir()
            make_tree(big, small=10_000, big=0)
            for project in (small, big):
                (project / "noop.py").write_text("pass\n")

            submit = run_cmd([MLTRAIN, *overrides], cwd=small, env=env)
            submit()  # builds the image once
            built_before = _images(label)
            (image,) = [t for t in subprocess.run(
                ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"label={label}"],
                check=True, capture_output=True, text=True).stdout.split()]
            times = interleaved_medians({"bare": run_cmd(["docker", "run", "--rm", image, "python3", "-c", "pass"]),
                                         "second": submit}, repeat=7)
            bare, second = times["bare"], times["second"]
            built = len(_images(label) - built_before)
            report("second run, no-op script (submit -> exit) vs `docker run --rm`", second, bare, "<= 1.5x")
            print(f"{'  images built during those runs':<58} {built:8d}{'':29}goal 0")

            tree = median_seconds(run_cmd([MLTRAIN, *overrides], cwd=big, env=env), repeat=7)
            report("second run from a 10,000-file tree vs from a 1-file tree", tree, second, "<= +0.1 s")
            print(f"{'  difference':<58} {(tree - second) * 1000:8.1f} ms{'':26}goal <= 100 ms")
            # The same pair on compute=local: what the snapshot itself costs, whatever the target.
            local = [median_seconds(run_cmd([MLTRAIN, "script=noop.py"], cwd=folder, env=env), repeat=7)
                     for folder in (small, big)]
            print(f"{'  same pair on compute=local (the snapshot alone)':<58} {(local[1] - local[0]) * 1000:8.1f} ms"
                  f"{'':26}(reference)")
    finally:
        for kind in ("container", "image"):
            ids = subprocess.run(["docker", kind, "ls", "-aq", "--filter", f"label={label}"],
                                 capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", kind, "rm", "-f", *ids], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
