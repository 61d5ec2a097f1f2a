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
from test_ssh import local_sshd  # noqa: F401 (fixture: sshd on this machine, whose engine is the local one)

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
