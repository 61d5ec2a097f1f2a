"""compute=ssh on a (fake) GPU host: the fake ``nvidia-smi`` is on the host's PATH (not this machine's), so the
devices, the refusal and the hardware record all come from the host, through its helper."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error
from sshtest import SshHost, require_sshd_image

from tests.gpus import FAKE

pytestmark = [pytest.mark.integration]

SEE = "import os\nprint('CVD=' + str(os.environ.get('CUDA_VISIBLE_DEVICES')))\n"


@pytest.fixture(scope="module")
def gpu_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    require_sshd_image()
    server = SshHost(tmp_path_factory.mktemp("gpuhost"))
    try:
        shutil.copy(FAKE, server.cfg / "nvidia-smi")
        (server.cfg / "nvidia-smi").chmod(0o755)
        server.sh("ln -s /mnt/cfg/nvidia-smi /usr/local/bin/nvidia-smi")
        yield server
    finally:
        server.remove()


def test_the_hosts_gpus_are_mapped_refused_and_recorded(project: Project, gpu_host: SshHost, tmp_path: Path) -> None:
    project.env["HOME"] = str(tmp_path / "home")  # this machine has no nvidia-smi: what is seen is the host's
    project.write("see.py", SEE)
    ssh = gpu_host.overrides(remote_dir=f"/root/mltrain-{tmp_path.name}")
    result = project.run(*ssh, "script=see.py", "resources.gpus=[1]", check=True)
    assert "CVD=1" in result.stdout
    run_id = str(project.runs()[0]["id"])
    hardware = json.loads(project.run("runs", "show", run_id, "--json", check=True).stdout)["hardware"]
    assert hardware["host"].startswith("host ") and hardware["gpu_count"] == 1
    assert hardware["gpus"][0]["index"] == 1 and hardware["cuda"] == "12.4"
    result = project.run(*ssh, "script=see.py", "resources.gpus=3")
    assert_one_line_error(result, "resources.gpus=3", "has 2 GPUs (0,1)")
    assert len(project.runs()) == 1  # nothing recorded, nothing started
