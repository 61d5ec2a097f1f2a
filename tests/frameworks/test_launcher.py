"""The launcher alone: the variables each rank gets, and two launchers as two nodes of one job (what a multi-node
target such as Ray starts: one per node, each with its node rank and rank 0's address)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mltrain.frameworks.distributed import DistributedFramework, DistributedFrameworkConfig
from mltrain.frameworks.launcher import free_port, rank_env
from tests.frameworks.scripts import RENDEZVOUS


def test_ranks_are_numbered_across_nodes() -> None:
    config = {"nproc": 4, "nnodes": 2, "node_rank": 1, "master_addr": "10.0.0.1"}
    env = rank_env({"OMP_NUM_THREADS": "8"}, config, local_rank=2, port=29500)
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
                                "MASTER_PORT", "OMP_NUM_THREADS")} == {
        "RANK": "6", "LOCAL_RANK": "2", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "NODE_RANK": "1",
        "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "OMP_NUM_THREADS": "8"}  # a set value is kept
    assert rank_env({}, config, local_rank=0, port=1)["OMP_NUM_THREADS"] == "1"  # as torchrun does


def test_two_launchers_make_one_job_of_two_nodes(tmp_path: Path) -> None:
    script = tmp_path / "rdv.py"
    script.write_text(RENDEZVOUS)
    port = free_port("127.0.0.1")
    framework = DistributedFramework(DistributedFrameworkConfig(nproc_per_node=2, nnodes=2))
    env = {**os.environ, "MLTRAIN_OUTPUT_DIR": str(tmp_path / "out")}
    nodes = [subprocess.Popen(framework.node_command(sys.executable, [str(script)], node_rank=rank,
                                                     master_addr="127.0.0.1", master_port=port),
                              env=env, stdout=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=120)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0]
    assert "[rank 0] gathered [0, 1, 2, 3]" in outputs[0]
    ranks = [json.loads(line.split("contract ", 1)[1]) for line in outputs[1].splitlines() if "contract" in line]
    assert sorted((r["RANK"], r["NODE_RANK"]) for r in ranks) == [("2", "1"), ("3", "1")]
    assert sorted(p.name for p in (tmp_path / "out" / "ranks").iterdir()) == [f"rank_{n}.log" for n in range(4)]


def test_one_argv_for_every_node_takes_its_place_from_the_environment(tmp_path: Path) -> None:
    """What Ray's driver starts: the same argv on each node, with NODE_RANK, MASTER_ADDR, MASTER_PORT set."""
    script = tmp_path / "rdv.py"
    script.write_text(RENDEZVOUS)
    port = free_port("127.0.0.1")
    framework = DistributedFramework(DistributedFrameworkConfig(nproc_per_node=1, nnodes=2))
    argv = framework.node_command(sys.executable, [str(script)], from_env=True)
    nodes = [subprocess.Popen(argv, env={**os.environ, "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                                         "MASTER_PORT": str(port)}, stdout=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=120)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0]
    assert "[rank 0] gathered [0, 1]" in outputs[0] and "[rank 1] joined 1" in outputs[1]
    unplaced = subprocess.run(argv, env={k: v for k, v in os.environ.items() if k != "NODE_RANK"},
                              capture_output=True, text=True, timeout=60)
    assert unplaced.returncode == 2 and "NODE_RANK, MASTER_ADDR and MASTER_PORT are not all set" in unplaced.stdout
