"""framework=distributed on this machine: the ranks rendezvous over TCP with torchrun's variables, their output
is prefixed and kept per rank, the first failing rank's reason ends the run, a cancel stops every rank, and
what a target cannot do is one line before anything starts. (Every single-node target: tests/conformance.)"""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from mltrain.frameworks.distributed import launcher_source
from tests.conftest import Project, assert_one_line_error, wait_for
from tests.frameworks.scripts import GLOO, RENDEZVOUS

DIST = ("framework=distributed",)


@pytest.fixture
def dproject(project: Project) -> Project:
    project.write("rdv.py", RENDEZVOUS)
    return project


def _record(project: Project) -> dict[str, object]:
    run_id = project.runs()[0]["id"]
    return json.loads(project.run("runs", "show", str(run_id), "--json", check=True).stdout)  # type: ignore[no-any-return]


def test_four_ranks_rendezvous_with_torchruns_variables(dproject: Project) -> None:
    result = dproject.run("script=rdv.py", *DIST, "framework.nproc_per_node=4", check=True)
    assert "[rank 0] gathered [0, 1, 2, 3]" in result.stdout
    contracts = [json.loads(line.split("contract ", 1)[1]) for line in result.stdout.splitlines() if "contract" in line]
    assert sorted(c["RANK"] for c in contracts) == ["0", "1", "2", "3"]
    assert all(c["RANK"] == c["LOCAL_RANK"] and c["WORLD_SIZE"] == c["LOCAL_WORLD_SIZE"] == "4"
               and c["NODE_RANK"] == "0" for c in contracts)
    run_id = str(dproject.runs()[0]["id"])
    ranks = dproject.workspace / "runs" / run_id / "outputs" / "ranks"
    assert sorted(p.name for p in ranks.iterdir()) == [f"rank_{n}.log" for n in range(4)]
    assert "joined 2" in (ranks / "rank_2.log").read_text() and "[rank" not in (ranks / "rank_2.log").read_text()


def test_the_first_failing_rank_ends_the_run_with_its_reason(dproject: Project) -> None:
    result = dproject.run("script=rdv.py", *DIST, "framework.nproc_per_node=3", "env_vars.FAIL_RANK=1",
                          "env_vars.HANG=1", timeout=120)  # the others would wait 10 minutes: they are stopped
    assert result.returncode == 1
    record = _record(dproject)
    assert record["status"] == "Failed"
    assert record["reason"] == "Error: rank 1 failed (exit code 1): ValueError: rank 1 gives up"


def test_cancel_stops_every_rank(dproject: Project) -> None:
    marker = f"rdv-{dproject.root.parent.name}"
    dproject.write(f"{marker}.py", RENDEZVOUS)
    run_id = dproject.run("--detach", f"script={marker}.py", *DIST, "framework.nproc_per_node=3", "env_vars.HANG=1",
                          "compute.cancel_grace=5", check=True).stdout.strip()
    wait_for(lambda: dproject.run("runs", "logs", run_id).stdout.count("ready") == 3, timeout=60, every=0.2)

    def ranks_alive() -> int:
        ps = subprocess.run(["ps", "-ww", "-eo", "args="], capture_output=True, text=True).stdout
        return sum(1 for line in ps.splitlines() if f"{marker}.py" in line and "-S -c" not in line)

    assert ranks_alive() == 3
    assert "Canceled" in dproject.run("runs", "cancel", run_id, check=True).stdout
    wait_for(lambda: ranks_alive() == 0, timeout=30)


def test_what_a_target_cannot_do_is_one_line_and_nothing_starts(dproject: Project) -> None:
    result = dproject.run("script=rdv.py", *DIST, "framework.nnodes=3")
    assert_one_line_error(result, "framework.nnodes=3", "compute=local runs a job on one node")
    result = dproject.run("script=rdv.py", *DIST, "compute=spark")
    assert_one_line_error(result, "framework=distributed cannot run on compute=spark")
    result = dproject.run("script=rdv.py", *DIST, "framework.launcher=mpirun")
    assert_one_line_error(result, "framework.launcher='mpirun'", "mltrain, torchrun")
    assert dproject.run("runs", "list", "--json").stdout.strip() in ("", "[]")


def test_plan_names_the_launcher_instead_of_its_source(dproject: Project) -> None:
    plan = dproject.run("plan", "script=rdv.py", *DIST, "framework.nproc_per_node=2", check=True).stdout
    assert "-S -c <mltrain launcher> mltrain-launch" in plan and '"nproc": 2' in plan
    assert launcher_source()[:200] not in plan


def test_torch_paths_where_torch_is_and_is_not(project: Project) -> None:
    """With torch (the GPU machine): a gloo all-reduce over 4 ranks, through mltrain's launcher and torchrun.
    Without (this machine; no skip, as CI=true fails skips): ``launcher=torchrun`` fails saying torch is needed.
    benchmarks/device_gpu.sh runs the gloo and nccl all-reduces there with the real GPU."""
    project.write("gloo.py", GLOO)
    if importlib.util.find_spec("torch") is None:
        result = project.run("script=gloo.py", *DIST, "framework.launcher=torchrun")
        assert result.returncode == 1
        assert "framework.launcher=torchrun needs torch" in str(_record(project)["reason"])
        return
    for launcher in ("mltrain", "torchrun"):
        result = project.run("script=gloo.py", *DIST, "framework.nproc_per_node=4", f"framework.launcher={launcher}",
                             timeout=300, check=True)
        assert result.stdout.count("allreduce 10 world 4") == 4, (launcher, result.stdout[-2000:])
