"""framework=distributed across the two nodes of the real Ray cluster (``tests/raytest.py``): a placement group of
``nnodes`` bundles, one launcher per node, rank 0's node as MASTER_ADDR; every node's output, rank logs and
metrics come back, the first failing rank ends the run, a cancel stops every rank on every node, and more nodes
than the cluster has alive is one line before anything starts."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error, process_alive, wait_for
from raytest import RayCluster, ray_cluster_fixture  # noqa: F401 (the session fixture)

from tests.frameworks.scripts import RENDEZVOUS

pytestmark = [pytest.mark.integration]

# every rank writes its pid where this machine's test can see it; rank 2 (on the second node) reports a metric and
# writes an output file, so both come back from a node other than the driver's
MULTI = RENDEZVOUS.replace("import json, os, socket, sys, time", '''import json, os, socket, sys, time
pids = os.environ.get("PID_DIR")
if pids:
    with open(os.path.join(pids, os.environ["RANK"]), "w") as fh:
        fh.write(str(os.getpid()))
if os.environ["RANK"] == "2":
    with open(os.environ["MLTRAIN_METRICS_FILE"], "a") as fh:
        fh.write(json.dumps({"name": "node1_loss", "value": 0.5, "step": 1, "time": time.time()}) + "\\n")
    with open(os.path.join(os.environ["MLTRAIN_OUTPUT_DIR"], "from_node1.txt"), "w") as fh:
        fh.write("node " + os.environ["NODE_RANK"])''')

TWO_BY_TWO = ("framework=distributed", "framework.nnodes=2", "framework.nproc_per_node=2",
              "resources.cpus=0.5")  # per node: the test cluster's nodes have 2 CPUs each


def ray(cluster: RayCluster, *extra: str) -> list[str]:
    return ["compute=ray", f"compute.address={cluster.url}", *extra]


def record(project: Project) -> dict[str, object]:
    run_id = str(project.runs()[0]["id"])
    return json.loads(project.run("runs", "show", run_id, "--json", check=True).stdout)  # type: ignore[no-any-return]


@pytest.fixture
def mproject(project: Project) -> Project:
    project.write("multi.py", MULTI)
    return project


def test_four_ranks_on_two_nodes_rendezvous_and_everything_comes_back(mproject: Project,
                                                                       ray_cluster: RayCluster) -> None:
    result = mproject.run("script=multi.py", *TWO_BY_TWO, *ray(ray_cluster), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[rank 0] gathered [0, 1, 2, 3]" in result.stdout
    contracts = [json.loads(line.split("contract ", 1)[1]) for line in result.stdout.splitlines() if "contract" in line]
    assert sorted((c["RANK"], c["NODE_RANK"], c["LOCAL_RANK"]) for c in contracts) == [
        ("0", "0", "0"), ("1", "0", "1"), ("2", "1", "0"), ("3", "1", "1")]
    assert all(c["WORLD_SIZE"] == "4" and c["LOCAL_WORLD_SIZE"] == "2" for c in contracts)
    found = record(mproject)
    assert found["status"] == "Completed"
    assert found["metrics"] == {"node1_loss": 0.5}
    outputs = mproject.workspace / "runs" / str(found["id"]) / "outputs"
    assert sorted(p.name for p in (outputs / "ranks").iterdir()) == [f"rank_{n}.log" for n in range(4)]
    assert "joined 3" in (outputs / "ranks" / "rank_3.log").read_text()
    assert (outputs / "from_node1.txt").read_text() == "node 1"
    log = (mproject.workspace / "runs" / str(found["id"]) / "output.log").read_text()
    assert "--mltrain-" not in log and "INFO worker.py" not in log


def test_a_failing_rank_on_the_second_node_fails_the_run_with_its_reason(mproject: Project,
                                                                          ray_cluster: RayCluster) -> None:
    result = mproject.run("script=multi.py", *TWO_BY_TWO, "env_vars.FAIL_RANK=3", "env_vars.HANG=1",
                          *ray(ray_cluster), timeout=240)  # the other ranks would wait 10 minutes: they are stopped
    assert result.returncode == 1
    found = record(mproject)
    assert found["status"] == "Failed" and found["exit_code"] == 1
    assert found["reason"] == "Error: rank 3 failed (exit code 1): ValueError: rank 3 gives up"


def test_cancel_stops_every_rank_on_every_node(mproject: Project, ray_cluster: RayCluster) -> None:
    with tempfile.TemporaryDirectory(prefix="mltrain-pids-") as pids:
        run_id = mproject.run("--detach", "script=multi.py", *TWO_BY_TWO, "env_vars.HANG=1", f"env_vars.PID_DIR={pids}",
                              "compute.cancel_grace=3", *ray(ray_cluster), check=True).stdout.strip()
        wait_for(lambda: mproject.run("runs", "logs", run_id).stdout.count("ready") == 4, timeout=120, every=0.25)
        ranks = [int((Path(pids) / str(rank)).read_text()) for rank in range(4)]
        assert all(process_alive(pid) for pid in ranks)
        assert "Canceled" in mproject.run("runs", "cancel", run_id, timeout=120, check=True).stdout
        wait_for(lambda: not any(process_alive(pid) for pid in ranks), timeout=30)



def test_plan_shows_the_placement(mproject: Project, ray_cluster: RayCluster) -> None:
    mproject.run("script=multi.py", *ray(ray_cluster))  # (fails: no RANK) the snapshot stored, where plan looks
    plan = mproject.run("plan", "script=multi.py", *TWO_BY_TWO, *ray(ray_cluster), check=True).stdout
    assert "placement group of 2 bundles, STRICT_SPREAD (one node each); each bundle: CPU=0.5" in plan
    assert "<mltrain launcher>" in plan and '"from_env": true' in plan


@pytest.mark.parametrize(("extra", "fragments"), [
    (["framework.nnodes=3"], ("framework.nnodes=3", "has 2 alive nodes", "framework.nnodes=2 or fewer")),
    (["framework.nnodes=2", "resources.cpus=3"], ("framework.nnodes=2", "CPU=3", "resources are per node")),
    (["framework.nnodes=2", "resources.gpus=1"], ("framework.nnodes=2", "GPU=1")),
])
def test_more_than_the_cluster_has_is_one_line_and_nothing_starts(
        mproject: Project, ray_cluster: RayCluster, extra: list[str], fragments: tuple[str, ...]) -> None:
    result = mproject.run("script=multi.py", "framework=distributed", *extra, *ray(ray_cluster))
    assert_one_line_error(result, *fragments)
    assert mproject.run("runs", "list", "--json").stdout.strip() in ("", "[]")
