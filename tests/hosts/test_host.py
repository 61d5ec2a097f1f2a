"""The Host seam, one set of tests run on both hosts: this machine (``LocalHost``, the job code in-process) and
a real OpenSSH server in a container (``SshHost``, the same code run by the helper there)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from sshtest import SshHost as SshServer
from sshtest import require_sshd_image

from mltrain.hosts.base import Host, JobState
from mltrain.hosts.local import LocalHost

STUBBORN = """
import signal, subprocess, sys, time
def term(*_):
    print("got TERM", flush=True)
signal.signal(signal.SIGTERM, term)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", sys.argv[1]])
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""

OBEDIENT = "import sys, time\nprint('ready', flush=True)\ntime.sleep(300)\n"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    require_sshd_image()
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.remove()


class Place:
    """A host under test, and what the test needs to look at it from outside: its processes, files, boot id."""

    def __init__(self, host: Host, server: SshServer | None, root: Path) -> None:
        self.host = host
        self.server = server
        self.root = root  # a folder of the test's own on the host

    @property
    def python(self) -> str:
        return self.host.python()

    def sh(self, script: str) -> str:
        if self.server is not None:
            return self.server.sh(script)
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout

    def count(self, marker: str) -> int:
        """Processes whose command line holds ``marker``, the sh wrapper's aside (zombies are gone already)."""
        count = 0
        for line in self.sh("ps -ww -eo stat=,args=").splitlines():
            stat, _, args = line.strip().partition(" ")
            count += marker in args and not stat.startswith("Z") and not args.lstrip().startswith("/bin/sh")
        return count

    def kill_group(self, pid: int) -> None:
        if self.server is None:
            os.killpg(pid, signal.SIGKILL)
        else:
            self.server.sh(f"python3 -c 'import os; os.killpg({pid}, 9)'")

    def write(self, path: str, text: str) -> None:
        if self.server is not None:
            self.server.sh(f"printf %s '{text}' > {path}")
        else:
            Path(path).write_text(text)

    def launch(self, code: str, *args: str, run_id: str | None = None) -> tuple[str, Any]:
        run_id = run_id or uuid.uuid4().hex[:12]
        job = self.host.launch(run_id, [self.python, "-c", code, *args], cwd="/tmp", env={"MLTRAIN_TEST": "1"})
        return run_id, job

    def wait_log(self, run_id: str, text: bytes) -> None:
        wait_for(lambda: text in self.host.read_log(run_id, 0), timeout=30)


@pytest.fixture(params=["local", "ssh"])
def place(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Place]:
    if request.param == "local":
        boot = tmp_path / "boot_id"
        boot.write_text(uuid.uuid4().hex)
        monkeypatch.setenv("MLTRAIN_BOOT_ID_FILE", str(boot))  # what the helper reads instead of the kernel's
        yield Place(LocalHost(tmp_path / "runs"), None, tmp_path)
        return
    from mltrain.targets.ssh.host import SshHost
    from mltrain.targets.ssh.link import Link

    server: SshServer = request.getfixturevalue("sshd")
    link = Link(server.settings(remote_dir=f"/root/mltrain-{tmp_path.name}"))
    try:
        yield Place(SshHost(link), server, Path(f"/root/mltrain-{tmp_path.name}"))
    finally:
        link.close()


def test_launch_twice_starts_one_process(place: Place) -> None:
    marker = f"once-{uuid.uuid4().hex[:8]}"
    run_id, first = place.launch(OBEDIENT, marker)
    try:
        _, second = place.launch(OBEDIENT, marker, run_id=run_id)
        assert not first.again and second.again
        assert (second.pid, second.start_time, second.boot_id) == (first.pid, first.start_time, first.boot_id)
        wait_for(lambda: place.count(marker) == 1)
        assert place.host.poll(run_id) == JobState(running=True)
    finally:
        place.host.cancel(run_id, 1.0)
    assert place.count(marker) == 0


def test_launches_racing_for_one_run_start_one_process(place: Place) -> None:
    """Two launches of one run at once (a launch retried on a fresh link while the first is still starting)."""
    marker = f"race-{uuid.uuid4().hex[:8]}"
    run_id = uuid.uuid4().hex[:12]
    jobs: list[Any] = []
    hosts = [place.host, _another(place)]
    threads = [threading.Thread(target=lambda h=h: jobs.append(h.launch(  # type: ignore[misc]
        run_id, [place.python, "-c", OBEDIENT, marker], cwd="/tmp", env={}))) for h in hosts]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(jobs) == 2 and jobs[0].pid == jobs[1].pid
        assert sorted(job.again for job in jobs) == [False, True]
        wait_for(lambda: place.count(marker) == 1)
    finally:
        place.host.cancel(run_id, 1.0)
        for host in hosts[1:]:
            getattr(host, "link", None) and host.link.close()  # type: ignore[attr-defined]


def _another(place: Place) -> Host:
    """A second client of the same host (over SSH: another connection, so another helper process)."""
    if place.server is None:
        return LocalHost(place.host.runs)  # type: ignore[attr-defined]
    from mltrain.targets.ssh.host import SshHost
    from mltrain.targets.ssh.link import Link

    return SshHost(Link(place.host.link.settings))  # type: ignore[attr-defined]


def test_poll_wait_and_read_the_log_by_offset(place: Place) -> None:
    run_id, _ = place.launch("import sys\nprint('one')\nprint('two')\nprint('three')\nsys.exit(3)\n")
    state = place.host.wait(run_id, 60)
    assert state == JobState(exit_code=3)
    assert place.host.poll(run_id) == state
    assert place.host.read_log(run_id, 0) == b"one\ntwo\nthree\n"
    assert place.host.read_log(run_id, 4) == b"two\nthree\n"
    assert place.host.read_log(run_id, 4, limit=3) == b"two"
    assert place.host.read_log(run_id, 10_000) == b""
    assert place.host.poll("never-launched") == JobState(lost="unknown")


def test_wait_returns_running_when_the_time_is_up(place: Place) -> None:
    run_id, _ = place.launch(OBEDIENT, "waiting")
    try:
        assert place.host.wait(run_id, 0.2) == JobState(running=True)
    finally:
        place.host.cancel(run_id, 1.0)


def test_cancel_terms_the_group_then_kills_it(place: Place) -> None:
    """The job traps TERM (and its child never sees a reason to stop): TERM first, KILL for the whole group after."""
    marker = f"stubborn-{uuid.uuid4().hex[:8]}"
    run_id, _ = place.launch(STUBBORN, marker)
    place.wait_log(run_id, b"ready")
    assert place.count(marker) == 2  # the job and its child
    assert place.host.cancel(run_id, 0.5) is True
    assert b"got TERM" in place.host.read_log(run_id, 0)  # TERM came first, and was caught
    assert place.count(marker) == 0  # then KILL took the group, child included
    assert place.host.poll(run_id) == JobState(lost="vanished")  # the wrapper went too: no exit code
    assert place.host.cancel(run_id, 0.5) is False  # nothing left to signal


def test_cancel_of_a_job_that_obeys_term_records_its_exit(place: Place) -> None:
    run_id, _ = place.launch(OBEDIENT)
    place.wait_log(run_id, b"ready")
    assert place.host.cancel(run_id, 30.0) is True
    assert place.host.poll(run_id) == JobState(exit_code=128 + signal.SIGTERM)  # the wrapper wrote it


def test_a_job_killed_outright_is_seen_to_vanish(place: Place) -> None:
    marker = f"victim-{uuid.uuid4().hex[:8]}"
    run_id, job = place.launch(OBEDIENT, marker)
    place.wait_log(run_id, b"ready")
    place.kill_group(job.pid)  # wrapper and script die: nobody writes an exit code
    wait_for(lambda: place.count(marker) == 0)
    assert place.host.wait(run_id, 30) == JobState(lost="vanished")


def test_a_recycled_pid_is_not_the_job(place: Place) -> None:
    """A record whose pid now names another process (another start time) is not alive, and never signalled."""
    marker = f"bystander-{uuid.uuid4().hex[:8]}"
    run_id, job = place.launch("pass")
    place.host.wait(run_id, 30)
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)", marker]
    bystander = subprocess.Popen(sleeper, start_new_session=True) if place.server is None else None
    try:
        pid = bystander.pid if bystander is not None else 1  # the container's sshd
        folder = place.host.run_dir(run_id)
        place.sh(f"rm -f {folder}/exit_code")
        place.write(f"{folder}/launch.json",
                    f'{{"pid": {pid}, "start_time": "1", "boot_id": "{job.boot_id}", "run_dir": "{folder}"}}')
        fresh = _another(place)  # one that has not read the record before
        assert fresh.poll(run_id) == JobState(lost="vanished")
        assert fresh.cancel(run_id, 0.5) is False
        assert (bystander.poll() is None) if bystander is not None else place.count("sshd") >= 1
    finally:
        if bystander is not None:
            bystander.kill()
            bystander.wait()


def test_a_changed_boot_id_is_a_reboot(place: Place) -> None:
    run_id, _ = place.launch(OBEDIENT)
    original = _boot_id(place)
    try:
        assert place.host.poll(run_id).running
        _set_boot_id(place, uuid.uuid4().hex)  # what a restart of the host changes
        assert place.host.poll(run_id) == JobState(lost="rebooted")
        assert place.host.cancel(run_id, 0.5) is False  # a process of another boot is not the job's
    finally:
        _set_boot_id(place, original)
        place.host.cancel(run_id, 1.0)


def _boot_id(place: Place) -> str:
    if place.server is None:
        return Path(os.environ["MLTRAIN_BOOT_ID_FILE"]).read_text()
    return place.server.sh("cat /etc/mltrain-boot-id").strip()


def _set_boot_id(place: Place, value: str) -> None:
    if place.server is None:
        Path(os.environ["MLTRAIN_BOOT_ID_FILE"]).write_text(value)
    else:
        place.server.sh(f"echo {value} > /etc/mltrain-boot-id")


def test_local_jobs_are_children_reaped_by_this_process(tmp_path: Path) -> None:
    """LocalHost's jobs are children of the client (the pidfd wait needs it), reaped once they end."""
    host = LocalHost(tmp_path / "runs")
    run_id = "child"
    job = host.launch(run_id, [sys.executable, "-c", "pass"], cwd=str(tmp_path), env={})
    assert host.wait(run_id, 60) == JobState(exit_code=0)
    with pytest.raises(ChildProcessError):
        os.waitpid(job.pid, os.WNOHANG)  # reaped already: no zombie left behind
