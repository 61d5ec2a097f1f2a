"""Ray (issue 14): what mltrain adds on top of Ray's own cost, on a two-node cluster started here.

* a trivial script through ``mltrain … compute=ray`` vs ``ray job submit --working-dir . -- python noop.py``
  by hand, same cluster, samples alternating;
* bytes uploaded when one file of the tree changed, vs the goal (that file + 64 KiB);
* a sweep of 64 x 0.5 s trials at ``max_concurrent=8`` vs the ideal (64 x 0.5 / 8 s plus one submit), and
  Ray's own floor: the same 64 jobs through Ray's ``JobSubmissionClient``, 8 at a time, no mltrain at all.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from common import report

BIN = Path(sys.executable).parent
MLTRAIN = str(BIN / "mltrain")
REPEAT = 5
TRIALS, CONCURRENT, TRIAL_SECONDS = 64, 8, 0.5


def _timed(argv: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - start


def _trivial(url: str, project: Path, env: dict[str, str]) -> None:
    (project / "noop.py").write_text("print('ok')\n")
    hand = [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", ".", "--", "python", "noop.py"]
    ours = [MLTRAIN, "script=noop.py", "compute=ray", f"compute.address={url}"]
    _timed(hand, cwd=project, env=env)
    _timed(ours, cwd=project, env=env)
    samples: dict[str, list[float]] = {"hand": [], "ours": []}
    for _ in range(REPEAT):
        samples["hand"].append(_timed(hand, cwd=project, env=env))
        samples["ours"].append(_timed(ours, cwd=project, env=env))
    report("trivial script: mltrain compute=ray vs ray job submit (median)", statistics.median(samples["ours"]),
           statistics.median(samples["hand"]), "<= 1.1x")
    report("trivial script: the same, least disturbed sample (min)", min(samples["ours"]), min(samples["hand"]),
           "<= 1.1x")


def _resubmit_bytes(url: str, root: Path) -> None:
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.take import take_snapshot
    from mltrain.store.workspace import Workspace
    from mltrain.targets.ray.config import RayCompute
    from mltrain.targets.ray.executor import RayExecutor

    tree = root / "tree"
    (tree / "src").mkdir(parents=True)
    for number in range(200):
        (tree / "src" / f"m{number}.py").write_text(f"# module {number}\n" + "x = 1\n" * 600)
    (tree / "weights.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    workspace = Workspace.locate(str(root / "ws")).ensure()
    executor = RayExecutor(RayCompute(address=url), workspace)
    store = BlobStore(workspace.blobs)

    def stage() -> int:
        snapshot = take_snapshot(tree, store)
        executor.stage_code(snapshot.manifest.id)
        assert executor.upload is not None
        return executor.upload.bytes_sent

    first = stage()
    again = stage()
    changed = tree / "src" / "m7.py"
    changed.write_text(changed.read_text() + "y = 2\n")
    one = stage()
    size = changed.stat().st_size
    print(f"{'upload: first submit of a 4.8 MiB tree':<58} {first / 1024:8.1f} KiB")
    print(f"{'upload: resubmit, nothing changed':<58} {again / 1024:8.1f} KiB   goal 0")
    print(f"{'upload: resubmit, one 3.6 KiB file changed':<58} {one / 1024:8.1f} KiB   goal <= "
          f"{(size + 64 * 1024) / 1024:.1f} KiB (the file + 64 KiB); {executor.upload.parts} parts")


def _sweep(url: str, project: Path, env: dict[str, str]) -> None:
    (project / "trial.py").write_text(f"import time\ntime.sleep({TRIAL_SECONDS})\nprint('::metric loss=1')\n")
    submit = _timed([MLTRAIN, "script=trial.py", "compute=ray", f"compute.address={url}"], cwd=project, env=env)
    ideal = TRIALS * TRIAL_SECONDS / CONCURRENT + submit
    ours = _timed([MLTRAIN, "-m", "script=trial.py", f"+params.i=range(0,{TRIALS})", "compute=ray",
                   f"compute.address={url}", f"sweep.max_concurrent={CONCURRENT}"], cwd=project, env=env)
    report(f"sweep {TRIALS} x {TRIAL_SECONDS} s, max_concurrent={CONCURRENT}: mltrain vs ideal", ours, ideal, "<= 1.5x")

    import logging

    from ray.job_submission import JobStatus, JobSubmissionClient

    # Not a line per job packaged and uploaded in the report (dashboard_sdk sets its own logger to INFO).
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    start = time.perf_counter()
    client = JobSubmissionClient(url)

    def one(_: int) -> None:
        job = client.submit_job(entrypoint=f"{sys.executable} trial.py", runtime_env={"working_dir": str(project)})
        while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            time.sleep(0.1)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        list(pool.map(one, range(TRIALS)))
    floor = time.perf_counter() - start
    report(f"sweep: Ray's own floor (JobSubmissionClient, {CONCURRENT} at a time) vs ideal", floor, ideal, "(Ray's)")
    report("sweep: mltrain vs Ray's own floor", ours, floor, "(mltrain's share)")


def main() -> int:
    if not (BIN / "ray").exists():
        print("ray is not installed (pip install -e '.[ray]'): skipped")
        return 0
    load = os.getloadavg()[0]
    print(f"cores {os.cpu_count()}, load {load:.2f} at start")
    from raytest import RayCluster

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = RayCluster(root).start()
        try:
            project = root / "proj"
            project.mkdir()
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_")},
                   "MLTRAIN_CACHE_DIR": str(root / "cache"), "RAY_ADDRESS": cluster.url}
            _trivial(cluster.url, project, env)
            _resubmit_bytes(cluster.url, root)
            _sweep(cluster.url, project, env)
        finally:
            cluster.stop()
            shutil.rmtree(root / "proj", ignore_errors=True)
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
