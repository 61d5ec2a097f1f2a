"""The multi-node driver's parts that need no cluster: a node task's guard (its ranks die with the task's worker,
even by KILL), its frame parsing, and the merge of a node's outputs (hostile input: nothing outside, no links)."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

from conftest import process_alive, wait_for

from mltrain.frameworks.distributed import DistributedFramework, DistributedFrameworkConfig
from mltrain.targets.ray.executor import _wrapper_code
from mltrain.targets.ray.nodes import _extract
from tests.frameworks.scripts import RENDEZVOUS

HANGS = RENDEZVOUS.replace("import json, os, socket, sys, time", '''import json, os, socket, sys, time
with open(os.path.join(os.environ["PID_DIR"], os.environ["RANK"]), "w") as fh:
    fh.write(str(os.getpid()))''')

# a node task as Ray's worker would run it, here a plain process: it prints each batch, then the end
WORKER = """
import json, sys
from mltrain.targets.ray.nodes import node_task
spec = json.loads(sys.argv[1])
for item in node_task(0, spec, "127.0.0.1", int(sys.argv[2])):
    if item[0] == "out":
        sys.stdout.write(item[1].decode())
    else:
        sys.stdout.write(f"END {item[1]} {len(item[2] or b'')}\\n")
    sys.stdout.flush()
"""


def _spec(tmp_path: Path, nproc: int) -> dict[str, object]:
    script = tmp_path / "hang.py"
    script.write_text(HANGS)
    framework = DistributedFramework(DistributedFrameworkConfig(nproc_per_node=nproc, nnodes=1))
    argv = framework.node_command(sys.executable, [str(script)], from_env=True)
    return {"argv": argv, "wrapper": _wrapper_code(), "limit": 1 << 20, "node_python": "python3", "grace": 2.0}



def _worker(tmp_path: Path, nproc: int, **env: str) -> subprocess.Popen[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "pids").mkdir()
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(_spec(tmp_path, nproc)), str(port)],
                            env={**os.environ, "PID_DIR": str(tmp_path / "pids"), **env}, stdout=subprocess.PIPE,
                            text=True, cwd=tmp_path)


def test_a_node_task_streams_its_ranks_and_ends_with_its_frame(tmp_path: Path) -> None:
    worker = _worker(tmp_path, 2)
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0
    assert "[rank 0] gathered [0, 1]" in out and "[rank 1] joined 1" in out
    assert "--mltrain-node-" not in out
    end = out.strip().splitlines()[-1].split()
    assert end[:2] == ["END", "0"] and int(end[2]) > 0  # the frame's tar came back, checked


def test_ranks_die_with_the_task_even_when_its_worker_is_killed(tmp_path: Path) -> None:
    """What Ray does to a canceled task's worker (or every worker of a job whose driver died): KILL."""
    worker = _worker(tmp_path, 2, HANG="1")
    assert worker.stdout is not None
    ready = 0
    while ready < 2:
        line = worker.stdout.readline()
        assert line, "the node ended before its ranks were ready"
        ready += "ready" in line
    pids = [int((tmp_path / "pids" / str(rank)).read_text()) for rank in range(2)]
    assert all(process_alive(pid) for pid in pids)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    worker.stdout.close()
    wait_for(lambda: not any(process_alive(pid) for pid in pids), timeout=30)


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_a_nodes_outputs_merge_inside_and_the_first_writer_keeps_a_name(tmp_path: Path) -> None:
    outputs, metrics = tmp_path / "out", tmp_path / "metrics.jsonl"
    outputs.mkdir()
    (tmp_path / "victim").write_text("mine")
    link = tarfile.TarInfo("run/outputs/link")
    link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "victim")
    hard = tarfile.TarInfo("run/outputs/hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "run/outputs/ranks/rank_2.log"
    _extract(_tar([(_file("run/outputs/ranks/rank_2.log"), b"two"), (_file("run/outputs/model.txt"), b"node0"),
                   (_file("run/metrics.jsonl"), b'{"name": "a", "value": 1}\n')]), str(outputs), str(metrics))
    _extract(_tar([(_file("run/outputs/model.txt"), b"node1"), (_file("run/outputs/../../escaped"), b"x"),
                   (_file("/abs"), b"x"), (link, b""), (hard, b""), (_file("run/metrics.jsonl"), b'{"name": "b"}\n')]),
             str(outputs), str(metrics))
    found = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*"))
    assert found == ["model.txt", "ranks", "ranks/rank_2.log"]
    assert (outputs / "model.txt").read_text() == "node0"
    assert not (tmp_path / "escaped").exists() and (tmp_path / "victim").read_text() == "mine"
    assert metrics.read_text().count("name") == 2
