"""compute=docker with base_url=ssh://: the engine of an SSH host, reached over mltrain's own SSH connection
(host key from ~/.ssh/known_hosts, as compute=ssh), never docker-py's paramiko transport."""

# ruff: noqa: F811  (the fixtures imported are named as the test arguments)
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Project
from sshtest import SshHost
from test_ssh import SshProject, local_sshd  # noqa: F401 (fixture: sshd on this machine, whose engine is the local one)

pytestmark = pytest.mark.integration


def test_ssh_engine_runs_the_job_with_the_code_copied_in(local_sshd: SshHost, project: Project,
                                                          tmp_path: Path) -> None:
    from sshtest import SSHD_IMAGE

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(local_sshd.client_key, home / ".ssh" / "id_ed25519")
    shutil.copy(local_sshd.known_hosts, home / ".ssh" / "known_hosts")
    project.write("data/info.txt", "from the snapshot")
    project.write("r.py", "import os\nprint(open('data/info.txt').read(), os.getcwd())\n"
                          "open(os.path.join(os.environ['MLTRAIN_OUTPUT_DIR'], 'o.txt'), 'w').write('out')\n")
    base_url = f"ssh://root@{local_sshd.host}:{local_sshd.port}"
    result = project.run("script=r.py", "compute=docker", f"compute.base_url={base_url}", "environment=docker",
                         f"environment.image={SSHD_IMAGE}", env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert "from the snapshot /mltrain/code" in result.stdout
    (record,) = project.runs()
    assert (project.workspace / "runs" / str(record["id"]) / "outputs" / "o.txt").read_text() == "out"
    leftover = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mltrain.run_id={record['id']}"],
                              capture_output=True, text=True).stdout.split()
    assert leftover == []

    (home / ".ssh" / "known_hosts").write_text("")  # an unknown host key is refused, in one line
    refused = project.run("script=r.py", "compute=docker", f"compute.base_url={base_url}", "environment=docker",
                          f"environment.image={SSHD_IMAGE}", env={"HOME": str(home)})
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "cannot reach the Docker engine at ssh://" in refused.stderr and "unknown host key" in refused.stderr


def _ssh_home(local_sshd: SshHost, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(local_sshd.client_key, home / ".ssh" / "id_ed25519")
    shutil.copy(local_sshd.known_hosts, home / ".ssh" / "known_hosts")
    return home


def _containers(run_label: str) -> list[str]:
    return subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mltrain_test={run_label}"],
                          capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.parametrize("source", ["/run", "LINK"])
def test_ssh_engine_refuses_volumes_holding_its_socket(local_sshd: SshHost, project: Project, tmp_path: Path,
                                                       source: str) -> None:
    """Host paths are the engine host's: /run as written before anything runs, a link there resolved by the
    host itself (through the same SSH connection) before the container is created."""
    from sshtest import SSHD_IMAGE

    home = _ssh_home(local_sshd, tmp_path)
    if source == "LINK":
        (tmp_path / "links").mkdir()
        (tmp_path / "links" / "to-run").symlink_to("/var/run")
        source = str(tmp_path / "links" / "to-run")
    label = tmp_path.name
    result = project.run("script=train.py", "compute=docker", f"compute.base_url=ssh://root@{local_sshd.host}:"
                         f"{local_sshd.port}", f"+compute.labels.mltrain_test={label}", "environment=docker",
                         f"environment.image={SSHD_IMAGE}", f"compute.volumes=[{source}:/host]",
                         env={"HOME": str(home)})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"mltrain: error: compute.volumes: '{source}:/host' hands the job the Docker engine's "
                            "socket ("), error
    assert "compute.allow_engine_socket=true" in error
    if source.endswith("to-run"):
        assert "(a link to /run) holds /run/docker.sock" in error  # resolved on the engine's host
    assert _containers(label) == []


def test_ssh_target_never_mounts_a_checkout_that_leads_to_the_socket(local_sshd: SshHost, project: Project,
                                                                     tmp_path: Path) -> None:
    """compute=ssh with an image: mltrain's own mounts are resolved on the host, so a checkout replaced by a
    link to /var/run does not hand the container the host's engine."""
    from sshtest import SSHD_IMAGE

    remote = tmp_path / "remote"
    sproject = SshProject(project, local_sshd, str(remote))
    sproject.write("d.py", "print('in the container')\n")
    overrides = ("script=d.py", "environment=docker", f"environment.image={SSHD_IMAGE}")
    assert "in the container" in sproject.submit(*overrides, check=True).stdout
    snapshot = str(sproject.runs()[0]["snapshot_id"])
    checkout = remote / "checkouts" / snapshot
    checkout.rename(tmp_path / "aside")
    checkout.symlink_to("/var/run")
    result = sproject.submit(*overrides)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("mltrain: error: compute=ssh: the container's mount "
                            f"{checkout} (a link to /run) holds /run/docker.sock on 127.0.0.1"), error
    assert "compute.remote_dir" in error
    record = sproject.runs()[0]
    assert record["status"] == "Failed"
    leftover = subprocess.run(["docker", "ps", "-aq", "--filter", f"name=mltrain-{record['id']}"],
                              capture_output=True, text=True).stdout.split()
    assert leftover == []


def test_a_container_run_as_root_on_the_host_says_so(local_sshd: SshHost, project: Project, tmp_path: Path) -> None:
    """compute=ssh with an image runs the container as the login's uid:gid, as compute=docker runs it as the
    caller's: root there gets the same warning in the run's log (the checks are written once)."""
    from sshtest import SSHD_IMAGE

    sproject = SshProject(project, local_sshd, str(tmp_path / "remote"))
    sproject.write("d.py", "import os\nprint('uid', os.getuid())\n")
    result = sproject.submit("script=d.py", "environment=docker", f"environment.image={SSHD_IMAGE}", check=True)
    assert "uid 0" in result.stdout
    log = sproject.log(str(sproject.runs()[0]["id"]))
    assert "[mltrain] warning: the job runs as root in the container, because mltrain logs in to" in log


def test_ssh_engine_detached_log_is_mirrored_without_a_client(local_sshd: SshHost, project: Project,
                                                              tmp_path: Path) -> None:
    """The log mirror of a remote engine's container reaches it through its own SSH connection."""
    import time

    from sshtest import SSHD_IMAGE

    home = _ssh_home(local_sshd, tmp_path)
    project.write("count.py", "import time\nfor i in range(40):\n    print('line', i, flush=True)\n"
                              "    time.sleep(0.1)\n")
    run_id = project.run("--detach", "script=count.py", "compute=docker", f"compute.base_url=ssh://root@"
                         f"{local_sshd.host}:{local_sshd.port}", "environment=docker",
                         f"environment.image={SSHD_IMAGE}", env={"HOME": str(home)}, check=True).stdout.strip()
    log = project.workspace / "runs" / run_id / "output.log"
    deadline = time.monotonic() + 60
    while "line 10\n" not in log.read_text():  # nobody attached: the mirror copied it
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    attached = project.run("runs", "attach", run_id, env={"HOME": str(home)}, check=True)
    assert "Completed" in attached.stderr
    lines = [line for line in log.read_text().splitlines() if line.startswith("line ")]
    assert lines == [f"line {i}" for i in range(40)]
