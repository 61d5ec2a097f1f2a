"""framework=distributed (issue 14): 4 local ranks, from start to every rank rendezvoused, vs torchrun.

Each command starts a script whose rank 0 gathers the other ranks over TCP (MASTER_ADDR, MASTER_PORT + 1, no torch)
and writes the time it had them all. The figure is that time minus the command's start:
* mltrain's launcher (what framework=distributed runs on the target) vs ``python -m torch.distributed.run
  --nproc_per_node 4`` on the same script, where torch is installed (goal <= 1.2x); else absolute, beside four
  bare processes started at once by this benchmark (the floor: Python start-up and the rendezvous itself);
* the whole ``mltrain script=rdv.py framework=distributed framework.nproc_per_node=4`` (snapshot, plan, launch:
  the user's wait), for reference;
* where ray is installed, on a two-node Ray cluster started here: the whole submit of 2 nodes x 2 ranks
  (``framework.nnodes=2``: placement group, one launcher per node) beside 1 node x 4 ranks on the same cluster
  (the single-node path, samples alternating), and beside the local figure above.
Set PYTHON to time another interpreter (the GPU machine's, with torch).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from common import report

from mltrain.frameworks.distributed import launcher_source

PYTHON = os.environ.get("PYTHON", sys.executable)
MLTRAIN = os.environ.get("MLTRAIN", str(Path(sys.executable).parent / "mltrain"))
NPROC = 4
REPEAT = int(os.environ.get("BENCH_REPEAT", "7"))
RAY_REPEAT = int(os.environ.get("BENCH_RAY_REPEAT", "3"))

RDV = """
import os, socket, time
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]) + 1  # torchrun's agent holds MASTER_PORT
if rank == 0:
    server = socket.create_server((addr, port))
    peers = [server.accept()[0] for _ in range(world - 1)]
    for peer in peers:
        peer.recv(8)
    with open(os.environ["BENCH_OUT"], "w") as fh:
        fh.write(repr(time.time()))
    for peer in peers:
        peer.sendall(b"ok")
else:
    while True:
        try:
            sock = socket.create_connection((addr, port))
            break
        except OSError:
            time.sleep(0.005)
    sock.sendall(b"hi")
    sock.recv(2)
"""


def _has_torch() -> bool:
    if sys.executable == PYTHON:
        return importlib.util.find_spec("torch") is not None
    probe = subprocess.run([PYTHON, "-c", "import torch"], capture_output=True)
    return probe.returncode == 0


def _timed(argv: list[str], out: Path, env: dict[str, str], cwd: Path) -> float:
    out.unlink(missing_ok=True)
    start = time.time()
    subprocess.run(argv, env={**env, "BENCH_OUT": str(out)}, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return float(out.read_text()) - start


def _bare(script: Path, out: Path, env: dict[str, str], port: int) -> float:
    """Four processes started at once, with the variables set by hand: the floor under any launcher."""
    out.unlink(missing_ok=True)
    start = time.time()
    procs = []
    for rank in range(NPROC):
        rank_env = {**env, "BENCH_OUT": str(out), "RANK": str(rank), "WORLD_SIZE": str(NPROC), "LOCAL_RANK": str(rank),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([PYTHON, str(script)], env=rank_env))
    for proc in procs:
        proc.wait()
    return float(out.read_text()) - start


def main() -> None:
    print(f"cores {os.cpu_count()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}, python {PYTHON}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        project = root / "proj"
        project.mkdir()
        script = project / "rdv.py"
        script.write_text(RDV)
        out = root / "gathered"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_")}
        env["MLTRAIN_CACHE_DIR"] = str(root / "cache")
        config = json.dumps({"nproc": NPROC, "nnodes": 1, "node_rank": 0, "master_addr": "127.0.0.1",
                             "master_port": 0, "launcher": "mltrain", "grace": 10.0})
        commands = {
            "launcher": [PYTHON, "-S", "-c", launcher_source(), "mltrain-launch", config, "--", PYTHON, str(script)],
            "submit": [MLTRAIN, "script=rdv.py", "framework=distributed", f"framework.nproc_per_node={NPROC}",
                       "environment=user_managed", f"environment.interpreter={PYTHON}"],
        }
        torch = _has_torch()
        if torch:
            commands["torchrun"] = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(NPROC),
                                    "--master_addr", "127.0.0.1", "--master_port", "{port}", str(script)]
        samples: dict[str, list[float]] = {name: [] for name in [*commands, "bare"]}
        for round_ in range(REPEAT + 1):  # round 0 warms caches and is dropped
            for name, argv in commands.items():
                port = str(29500 + 4 * round_)  # a fresh port each round: none left in TIME_WAIT by the last
                value = _timed([port if a == "{port}" else a for a in argv], out, env, project)
                if round_:
                    samples[name].append(value)
            value = _bare(script, out, env, 29700 + 4 * round_)
            if round_:
                samples["bare"].append(value)
        medians = {name: statistics.median(values) for name, values in samples.items()}
        if torch:
            report(f"{NPROC} ranks rendezvoused: mltrain launcher vs torchrun", medians["launcher"],
                   medians["torchrun"], "<= 1.2x")
            report("  whole `mltrain ... framework=distributed` vs torchrun", medians["submit"], medians["torchrun"],
                   "(for reference)")
        else:
            report(f"{NPROC} ranks rendezvoused: mltrain launcher (torch absent: absolute)", medians["launcher"],
                   None, "report absolute")
            report("  whole `mltrain ... framework=distributed` (absolute)", medians["submit"], None,
                   "(for reference)")
        report(f"  {NPROC} bare processes started at once (the floor)", medians["bare"], None, "(for reference)")
        report("  mltrain launcher vs the floor", medians["launcher"], medians["bare"], "(for reference)")
        _on_ray(root, project, out, env, medians["submit"])


def _on_ray(root: Path, project: Path, out: Path, env: dict[str, str], local: float) -> None:
    """2 nodes x 2 ranks through compute=ray, beside 1 node x 4 ranks there (same cluster, alternating)."""
    if not (Path(MLTRAIN).parent / "ray").exists():
        print("ray is not installed (pip install -e '.[ray]'): the multi-node figure is skipped")
        return
    from raytest import RayCluster

    cluster = RayCluster(root).start()
    try:
        ray = ["compute=ray", f"compute.address={cluster.url}", f"env_vars.BENCH_OUT={out}", "resources.cpus=0.5",
               "script=rdv.py", "framework=distributed"]
        commands = {"multi": [MLTRAIN, *ray, "framework.nnodes=2", "framework.nproc_per_node=2"],
                    "single": [MLTRAIN, *ray, f"framework.nproc_per_node={NPROC}"]}
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(RAY_REPEAT + 1):  # round 0 uploads the snapshot and warms the nodes' workers
            for name, argv in commands.items():
                value = _timed(argv, out, env, project)
                if round_:
                    samples[name].append(value)
        multi, single = (statistics.median(samples[name]) for name in ("multi", "single"))
        report("2 nodes x 2 ranks on Ray (whole submit) vs 1 node x 4 ranks there", multi, single, "(absolute)")
        report("  2 nodes x 2 ranks on Ray vs 4 local ranks (whole submit)", multi, local, "(for reference)")
    finally:
        cluster.stop()
    print(f"cores {os.cpu_count()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end")


if __name__ == "__main__":
    main()
