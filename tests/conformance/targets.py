"""The compute targets the conformance suite runs on: one adapter each, and the fixtures that hand them out.

Adding a target (Ray is next) is one class below and one line in ``TARGETS``: ``start`` brings up what the
target needs once per test module (a server, a cluster) or skips saying how to provision it (a failure under
CI=true), ``overrides`` are the command-line overrides that send a run there, ``env`` what the CLI's
environment needs, ``processes`` what runs where the job runs (to see that a cancelled job is gone).

Where a target genuinely behaves otherwise than the suite's default expectation, it says so in ``differs``:
``{behaviour: Differs(what it does instead, why)}``, with the behaviour one of ``BEHAVIOURS``. The test then
checks the declared behaviour; nothing is skipped silently (``test_differences_are_declared_with_a_reason``
keeps the declarations honest).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from conftest import Project

T = TypeVar("T")

#: What a target may declare it does differently, and what the suite expects by default.
BEHAVIOURS = {
    "killed_reason": "the reason recorded for a job killed by SIGKILL (default: 'killed by SIGKILL (exit code 137)')",
    "killed_exit_code": "the exit code recorded for a job killed by SIGKILL (default: 137)",
    "cancel_kill_exit_code": "the exit code recorded when cancel had to KILL a job that ignored TERM (default: None: "
                             "the sh wrapper that records the code is killed with the job's process group)",
    "children_outlive_job": "a child the job started lives on after the job exits, until cancel's KILL (default: True)",
}


@dataclass(frozen=True)
class Differs:
    """What a target does instead of the default ``BEHAVIOURS`` expectation, and why it cannot do otherwise."""

    expected: Any
    why: str


class Target:
    """How the suite sends a run to one compute target. Subclasses fill in the hooks; ``name`` is the test id."""

    name: ClassVar[str]
    compute: ClassVar[str]  # the compute=... option it exercises (several adapters may share one)
    #: the job's interpreter can ``import mltrain`` (else the job uses a copy of mltrain/tracking/metrics.py)
    has_mltrain: ClassVar[bool] = False
    differs: ClassVar[dict[str, Differs]] = {}

    def start(self, folder: Path) -> None:
        """Bring up what the target needs, once per test module (``folder`` is the module's own tmp folder)."""

    def stop(self) -> None:
        """Stop what ``start`` started (by pid or container id, never by name)."""

    def overrides(self, project: TargetProject) -> list[str]:
        raise NotImplementedError

    def env(self, project: Project) -> dict[str, str]:
        return {}

    def processes(self) -> str:
        """The processes where the job runs, one ``PID ARGS`` line each."""
        return subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout

    def kill(self, marker: str) -> None:
        """SIGKILL, by pid, the processes where the job runs whose command line holds ``marker`` (a test's own)."""
        for line in self.processes().splitlines():
            pid, _, args = line.strip().partition(" ")
            if marker in args:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)

    def cleanup(self, project: TargetProject) -> None:
        """Remove what one test's runs left on the target (containers, remote folders)."""

    def expect(self, behaviour: str, default: T) -> T:
        """The value the suite checks for ``behaviour``: the target's declared one, else ``default``."""
        assert behaviour in BEHAVIOURS, f"unknown behaviour {behaviour!r}; add it to BEHAVIOURS"
        found = self.differs.get(behaviour)
        return default if found is None else found.expected  # type: ignore[no-any-return]


class TargetProject(Project):
    """A temp project whose runs go to ``target``: ``submit`` adds the target's overrides."""

    def __init__(self, project: Project, target: Target) -> None:
        super().__init__(project.root, {**project.env, **target.env(project)})
        self.target = target
        self.tag = uuid.uuid4().hex[:12]  # names this test's leftovers on the target (labels, folders, markers)

    def overrides(self, *extra: str) -> list[str]:
        return [*self.target.overrides(self), *extra]

    def submit(self, *extra: str, flags: tuple[str, ...] = (), **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run(*flags, *self.overrides(*extra), **kwargs)

    def start(self, *extra: str, flags: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        """``submit`` in the background (reaped by conftest's ``reap_started`` whatever the test does)."""
        return self.popen(*flags, *self.overrides(*extra))

    def show(self, run_id: str) -> dict[str, Any]:
        return json.loads(self.run("runs", "show", run_id, "--json", check=True).stdout)  # type: ignore[no-any-return]

    def only_run(self) -> dict[str, Any]:
        (record,) = self.runs()
        return self.show(str(record["id"]))

    def log(self, run_id: str) -> str:
        return (self.workspace / "runs" / run_id / "output.log").read_text()

    def outputs(self, run_id: str) -> Path:
        return self.workspace / "runs" / run_id / "outputs"


# --------------------------------------------------------------------------------------------- the targets
class Local(Target):
    name = compute = "local"
    has_mltrain = True  # environment=user_managed: the Python running mltrain

    def overrides(self, project: TargetProject) -> list[str]:
        return ["compute=local"]


DOCKER_IMAGE = os.environ.get("MLTRAIN_TEST_BASE_IMAGE", "mltrain-test/python:bookworm")
DOCKER_LABEL = "mltrain_test"


class Docker(Target):
    """The local engine, with the provisioned base image as is (no build: the suite is about the run)."""

    name = compute = "docker"
    differs = {
        "killed_reason": Differs(
            "killed (possibly out of memory)",
            "the engine reports only the exit code 137 (its init turns a signal into 128+n), and a kernel OOM kill "
            "outside the container's own memory limit looks the same; the reason says both"),
        "cancel_kill_exit_code": Differs(
            137, "the engine records the container's exit code itself, and its init reports KILL as 128+9"),
        "children_outlive_job": Differs(
            False, "the container ends with its main process: the kernel kills what is left in its pid namespace"),
    }

    def start(self, folder: Path) -> None:
        probe = subprocess.run(["docker", "image", "inspect", DOCKER_IMAGE], capture_output=True)
        if shutil.which("docker") is None or probe.returncode != 0:
            pytest.skip(f"no Docker engine or no image {DOCKER_IMAGE}; run `bash .ci/provision-docker.sh` "
                        "(make provision)")

    def overrides(self, project: TargetProject) -> list[str]:
        return ["compute=docker", f"+compute.labels.{DOCKER_LABEL}={project.tag}", "environment=docker",
                f"environment.image={DOCKER_IMAGE}"]

    def cleanup(self, project: TargetProject) -> None:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={DOCKER_LABEL}={project.tag}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


class DockerCopy(Docker):
    """The local engine treated as a remote one: the code copied in, outputs and metrics copied back out as an
    archive (what a tcp:// or ssh:// engine gets), instead of bind mounts."""

    name = "docker-copy"

    def overrides(self, project: TargetProject) -> list[str]:
        return [*super().overrides(project), "compute.code_transfer=copy"]


class Ssh(Target):
    """One sshd container for the module (tests/sshtest.py); each test has its own ``remote_dir`` there."""

    name = compute = "ssh"

    def start(self, folder: Path) -> None:
        from sshtest import SshHost, require_sshd_image

        require_sshd_image()
        self.host = SshHost(folder / "sshhost")

    def stop(self) -> None:
        if hasattr(self, "host"):
            self.host.remove()

    def overrides(self, project: TargetProject) -> list[str]:
        return self.host.overrides(remote_dir=f"/root/mltrain-{project.tag}")

    def env(self, project: Project) -> dict[str, str]:
        return {"HOME": str(project.root.parent / "home")}  # nothing reads or writes the real ~/.ssh

    def processes(self) -> str:
        return self.host.sh("ps -ww -eo pid=,args=")

    def kill(self, marker: str) -> None:
        pids = [ln.split()[0] for ln in self.processes().splitlines() if marker in ln and "ps -ww" not in ln]
        if pids:
            self.host.sh(f"kill -KILL {' '.join(pids)}", check=False)

    def cleanup(self, project: TargetProject) -> None:
        self.host.sh(f"rm -rf /root/mltrain-{project.tag}", check=False)


class Spark(Target):
    """compute=spark on ``local[2]`` (pyspark's own Spark): spark-submit runs the script as the driver."""

    name = compute = "spark"
    has_mltrain = True  # the driver's Python is the environment's: the one running mltrain
    differs = {
        "cancel_kill_exit_code": Differs(
            143,
            "the driver is spark-submit's JVM, which runs the Python script as its child and exits 143 on TERM "
            "(its shutdown hook) while the script still ignores it: the wrapper records the JVM's code before "
            "KILL ends the script"),
    }

    def start(self, folder: Path) -> None:
        if importlib.util.find_spec("pyspark") is None:
            pytest.skip("pyspark is not installed: pip install -e '.[dev,spark]' (make install)")
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            pytest.skip("Java is missing: apt-get install openjdk-17-jre-headless (make provision)")

    def overrides(self, project: TargetProject) -> list[str]:
        return ["framework=pyspark", "compute=spark", "compute.master='local[2]'"]

    def env(self, project: Project) -> dict[str, str]:
        # Spark binds to the machine's own address unless told; loopback keeps the suite off the network
        return {"SPARK_LOCAL_IP": "127.0.0.1"}


class Ray(Target):
    """The session's two-node Ray cluster (tests/raytest.py): the job runs on a node Ray picks, on this machine."""

    name = compute = "ray"
    has_mltrain = True  # the nodes' python3 is the one running mltrain (the cluster starts with it on PATH)

    def start(self, folder: Path) -> None:
        from raytest import shared_cluster

        self.cluster = shared_cluster(folder)

    def overrides(self, project: TargetProject) -> list[str]:
        return ["compute=ray", f"compute.address={self.cluster.url}"]


#: Every target the suite runs on; a new target is one entry here.
TARGETS: list[type[Target]] = [Local, Docker, DockerCopy, Ssh, Spark, Ray]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", params=TARGETS, ids=[t.name for t in TARGETS])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One adapter per target, started once for the module (pytest groups the tests by target)."""
    adapter: Target = request.param()
    try:
        adapter.start(tmp_path_factory.mktemp(f"target-{adapter.name}"))
        yield adapter
    finally:
        adapter.stop()


@pytest.fixture
def tproject(project: Project, target: Target) -> Iterator[TargetProject]:
    """The shared ``project`` with its runs going to ``target``; what they left there is removed afterwards."""
    env = {k: v for k, v in project.env.items() if k != "SPARK_HOME"}
    proj = TargetProject(Project(project.root, env), target)
    try:
        yield proj
    finally:
        proj.cancel_unfinished()
        target.cleanup(proj)
