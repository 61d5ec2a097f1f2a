"""A real Ray cluster for the Ray target's tests: a head and a second worker node on this machine.

Started once per test session (``ray_cluster``), with its own temp folder and free ports for every
Ray process (other clusters on the machine are left alone), and stopped by the pids it started --
the ``ray start --block`` processes and every process below them (gcs_server, raylet, dashboard,
workers, jobs) -- never ``ray stop``, which kills by name.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROVISION_HINT = "pip install 'mltrain[ray]' (make install)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray_bin() -> str | None:
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else shutil.which("ray")


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        found.setdefault(ppid, []).append(int(entry))
    return found


def descendants(pids: list[int]) -> set[int]:
    tree = _children()
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(tree.get(pid, []))
    return seen


@dataclass
class RayCluster:
    """A head (``--num-cpus 2``) and one worker node (``--num-cpus 2``), both on this machine."""

    folder: Path
    nodes: int = 2
    url: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    stopped: bool = False

    def _ports(self) -> list[str]:
        names = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-grpc-port",
                 "--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port"]
        args = [arg for name in names for arg in (name, str(free_port()))]
        # Worker ports below the ephemeral ones free_port gives, a block of 1,000 per test process: the xdist
        # workers of one session share their parent and differ in index, so their clusters never overlap.
        worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
        low = 11000 + (os.getppid() * 7 + worker) % 18 * 1000 + len(self.procs) * 500
        return [*args, "--min-worker-port", str(low), "--max-worker-port", str(low + 400)]

    def start(self) -> RayCluster:
        ray = _ray_bin()
        if ray is None:
            pytest.skip(f"ray is not installed; {PROVISION_HINT}")
        gcs, dash = free_port(), free_port()
        temp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # Ray's socket paths must stay short
        self.temp = temp
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}
        env.pop("RAY_ADDRESS", None)
        self.url = f"http://127.0.0.1:{dash}"
        head = [ray, "start", "--head", "--block", "--num-cpus", "2", "--disable-usage-stats",
                "--dashboard-host", "127.0.0.1", "--port", str(gcs), "--dashboard-port", str(dash),
                "--ray-client-server-port", str(free_port()), "--temp-dir", str(temp), *self._ports()]
        self._spawn(head, env, "head")
        self._wait_dashboard()
        address = f"{_node_ip()}:{gcs}"
        for number in range(1, self.nodes):
            worker = [ray, "start", "--block", "--num-cpus", "2", "--address", address, *self._ports()]
            self._spawn(worker, env, f"worker{number}")
        self._wait_nodes()
        return self

    def _spawn(self, argv: list[str], env: dict[str, str], name: str) -> None:
        with open(self.folder / f"ray-{name}.log", "wb") as out:  # the node keeps its own copy of the fd
            self.procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def _get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def _wait_dashboard(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            with contextlib.suppress(Exception):
                self._get("/api/version")
                return
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"the Ray head did not come up; see {self.folder}/ray-head.log")

    def _wait_nodes(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                data = self._get("/api/v0/nodes?limit=100")
                rows = data["data"]["result"]["result"]  # type: ignore[index]
                if sum(1 for row in rows if row.get("state") == "ALIVE") >= self.nodes:
                    self._remember()
                    return
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"the Ray worker node did not join; see {self.folder}")

    def _remember(self) -> None:
        self.seen |= descendants([p.pid for p in self.procs])

    def stop(self) -> None:
        """TERM the ``ray start`` processes and everything below them, KILL what is left: all by pid.

        Once only: a second call (``atexit`` after ``stop_shared``) must not signal pids that may be reused by then.
        """
        if self.stopped:
            return
        self.stopped = True
        self._remember()
        pids = set(self.seen)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        pids |= descendants(list(pids))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        shutil.rmtree(getattr(self, "temp", self.folder / "none"), ignore_errors=True)


def _node_ip() -> str:
    """The address Ray binds its nodes to here (not loopback: FACTS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            return str(sock.getsockname()[0])
        except OSError:
            return "127.0.0.1"


_SHARED: list[RayCluster] = []


def shared_cluster(folder: Path) -> RayCluster:
    """The session's one cluster (the Ray tests and the conformance suite share it), started on first use and
    stopped when the test process exits (``atexit``: whichever module used it last, the cluster outlives it)."""
    if not _SHARED:
        cluster = RayCluster(folder)
        _SHARED.append(cluster)
        atexit.register(cluster.stop)
        cluster.start()
    return _SHARED[0]


def stop_shared() -> None:
    """Stop the session's cluster now (``pytest_sessionfinish``): a pytest-xdist worker may be killed 10 s after
    its session ends, before ``atexit`` handlers have stopped the cluster."""
    for cluster in _SHARED:
        cluster.stop()


@pytest.fixture(scope="session", name="ray_cluster")
def ray_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    yield shared_cluster(tmp_path_factory.mktemp("ray"))
