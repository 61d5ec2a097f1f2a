"""A sweep on a (fake) two-GPU machine: concurrent trials get disjoint devices, trial k waits for a free one."""

from __future__ import annotations

import threading
from pathlib import Path

from mltrain.config.resources import ResourceRequest
from mltrain.sweep.gpus import GpuPool
from tests.conftest import Project
from tests.gpus import fake_gpu_path

HOLD = """
import os, sys, time
held = os.environ["HELD_DIR"]
devices = os.environ["CUDA_VISIBLE_DEVICES"].split(",")
claims = []
for device in devices:  # a device another trial holds right now would make this fail
    fd = os.open(os.path.join(held, device), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)
    claims.append(device)
print("devices", ",".join(devices), flush=True)
time.sleep(0.5)
for device in claims:
    os.remove(os.path.join(held, device))
"""


def test_concurrent_trials_get_disjoint_gpus(project: Project, tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    project.env.update({**fake_gpu_path(tmp_path / "bin", gpus=2), "HELD_DIR": str(held)})
    project.write("hold.py", HOLD)
    result = project.run("-m", "script=hold.py", "resources.gpus=1", "params.trial=1,2,3,4",
                         "sweep.max_concurrent=4", timeout=240)
    assert result.returncode == 0, result.stderr
    runs = project.runs()
    assert len(runs) == 4 and {r["status"] for r in runs} == {"Completed"}
    logs = [(project.workspace / "runs" / str(r["id"]) / "output.log").read_text() for r in runs]
    seen = {line.split()[1] for log in logs for line in log.splitlines() if line.startswith("devices ")}
    assert seen <= {"0", "1"} and len(seen) == 2  # one device each, both used
    result = project.run("-m", "script=hold.py", "resources.gpus=2", "params.trial=5,6", "sweep.max_concurrent=2",
                         timeout=240)
    assert result.returncode == 0, result.stderr
    assert all(r["status"] == "Completed" for r in project.runs())


def test_the_pool_blocks_until_devices_come_back() -> None:
    pool = GpuPool((0, 1, 2))
    one = ResourceRequest(gpu_count=1)
    assert pool.take(ResourceRequest(gpu_ids=(1,), gpu_count=1)) == (1,)
    assert pool.take(one) == (0,)
    assert pool.take(one) == (2,)
    got: list[tuple[int, ...]] = []
    waiter = threading.Thread(target=lambda: got.append(pool.take(ResourceRequest(all_gpus=True))))
    waiter.start()
    pool.give((0,))
    pool.give((2,))
    assert not got  # still waiting for device 1 (join below would hang if it had not waited)
    pool.give((1,))
    waiter.join(timeout=30)
    assert got == [(0, 1, 2)]
    assert not pool.fits(ResourceRequest(gpu_count=4)) and pool.fits(ResourceRequest(gpu_ids=(2,), gpu_count=1))
