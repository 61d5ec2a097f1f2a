"""framework=distributed on every target of the suite: each single-node target runs the ranks (rendezvous over
TCP, per-rank logs back in outputs/ranks, the first failing rank's reason, every rank stopped by a cancel); a
target that cannot start it refuses in one line before anything starts."""

# ruff: noqa: F811  (the fixtures imported from targets are named as the test arguments)
from __future__ import annotations

import pytest
from conftest import assert_one_line_error, wait_for
from targets import TargetProject, target, tproject  # noqa: F401 (fixtures)

from mltrain.targets import executor_class
from tests.frameworks.scripts import RENDEZVOUS

pytestmark = pytest.mark.integration


def _supported(tproject: TargetProject) -> bool:
    if executor_class(tproject.target.compute).supports("distributed"):
        return True
    result = tproject.run("script=rdv.py", f"compute={tproject.target.compute}", "framework=distributed")
    assert_one_line_error(result, f"framework=distributed cannot run on compute={tproject.target.compute}")
    assert tproject.run("runs", "list", "--json").stdout.strip() in ("", "[]")
    return False


def test_ranks_rendezvous_and_their_logs_come_back(tproject: TargetProject) -> None:
    tproject.write("rdv.py", RENDEZVOUS)
    if not _supported(tproject):
        return
    result = tproject.submit("script=rdv.py", "framework=distributed", "framework.nproc_per_node=3", timeout=240)
    assert result.returncode == 0, result.stderr
    assert "[rank 0] gathered [0, 1, 2]" in result.stdout
    run_id = str(tproject.runs()[0]["id"])
    ranks = tproject.outputs(run_id) / "ranks"
    assert sorted(p.name for p in ranks.iterdir()) == ["rank_0.log", "rank_1.log", "rank_2.log"]
    assert "joined 1" in (ranks / "rank_1.log").read_text()


def test_first_failing_rank_is_the_reason_and_cancel_stops_every_rank(tproject: TargetProject) -> None:
    tproject.write("rdv.py", RENDEZVOUS)
    if not _supported(tproject):
        return
    result = tproject.submit("script=rdv.py", "framework=distributed", "framework.nproc_per_node=2",
                             "env_vars.FAIL_RANK=1", "env_vars.HANG=1", timeout=240)
    assert result.returncode == 1
    reason = tproject.show(str(tproject.runs()[0]["id"]))["reason"]
    assert reason == "Error: rank 1 failed (exit code 1): ValueError: rank 1 gives up"
    marker = f"hang-{tproject.tag}"
    tproject.write(f"{marker}.py", RENDEZVOUS)
    detached = tproject.submit(f"script={marker}.py", "framework=distributed", "framework.nproc_per_node=2",
                               "env_vars.HANG=1", "compute.cancel_grace=5", flags=("--detach",), timeout=240)
    run_id = detached.stdout.strip()
    wait_for(lambda: tproject.run("runs", "logs", run_id).stdout.count("ready") == 2, timeout=120, every=0.25)
    assert "Canceled" in tproject.run("runs", "cancel", run_id, timeout=120, check=True).stdout
    wait_for(lambda: marker not in tproject.target.processes(), timeout=30)
