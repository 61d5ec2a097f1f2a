"""compute=docker and the resources block: the create request the engine receives (DeviceRequests, NanoCpus,
Memory; resources wins over compute's own fields), the engine's refusal of GPUs it has no runtime for (this
machine's engine has none: one line, no container left), and a memory request enforced by the engine."""

# ruff: noqa: F811  (the fixtures imported from dockertest are named as the test arguments)
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_one_line_error
from dockertest import DockerProject, dproject, engine  # noqa: F401 (fixtures)
from omegaconf import OmegaConf

from mltrain.config.schema import validate
from mltrain.config.spec import RunSpec
from mltrain.store.workspace import Workspace
from mltrain.targets import executor_for
from mltrain.targets.docker.config import DockerCompute
from tests.gpus import fake_gpu_path


def _spec(tmp_path: Path, **resources: object) -> RunSpec:
    cfg = validate(OmegaConf.create({"script": "t.py", "environment": {"type": "docker", "image": "x"},
                                     "compute": {"type": "docker"}, "framework": {"type": "python"},
                                     "resources": resources}))
    return RunSpec.from_config(cfg, "", [], cwd=tmp_path)


def test_the_request_becomes_the_create_calls_host_config(tmp_path: Path) -> None:
    config = DockerCompute(base_url="tcp://engine.invalid:2376", mem_limit="2g", cpus=4.0)
    docker = executor_for(config, Workspace(tmp_path / "ws").ensure())
    mapped = docker.resources(_spec(tmp_path, gpus=[1, 3], cpus=1.5, memory="512M"))
    assert mapped.settings["DeviceRequests"] == [
        {"Driver": "", "Count": 0, "DeviceIDs": ["1", "3"], "Capabilities": [["gpu"]], "Options": {}}]
    assert mapped.settings["NanoCpus"] == 1_500_000_000  # resources wins over compute.cpus
    assert mapped.settings["Memory"] == mapped.settings["MemorySwap"] == 512 * 1024**2  # and over compute.mem_limit
    assert mapped.env["OMP_NUM_THREADS"] == "2"
    assert mapped.mapping == ("--gpus device=1,3 (DeviceRequests)", "--cpus 1.5 (NanoCpus)",
                              "--memory 512M (Memory, no swap)")
    counted = docker.resources(_spec(tmp_path, gpus=2)).settings["DeviceRequests"][0]
    assert (counted["Count"], counted["DeviceIDs"]) == (2, [])  # a remote engine: its own devices, by count
    assert docker.resources(_spec(tmp_path, gpus="all")).settings["DeviceRequests"][0]["Count"] == -1


def test_a_container_on_an_ssh_host_gets_the_picked_devices_and_limits() -> None:
    from mltrain.config.resources import ResourceRequest
    from mltrain.hosts.container import RunContainer
    from mltrain.targets.base import Resources
    from mltrain.targets.ssh.executor import container_limits

    mapped = Resources(ResourceRequest(gpu_count=2, cpus=2.0, memory_bytes=1024**3), gpu_ids=(1, 3))
    limits = container_limits(mapped)
    assert limits == ["--gpus", "device=1,3", "--cpus", "2", "--memory", "1073741824", "--memory-swap", "1073741824"]
    argv = RunContainer(image="img", argv=["python3", "t.py"], user="1:1", run_id="r", experiment="e",
                        limits=limits).run_argv()
    assert argv[argv.index("--gpus") + 1] == "device=1,3" and argv.index("--gpus") < argv.index("img")
    assert container_limits(None) == [] and container_limits(Resources()) == []


@pytest.mark.integration
def test_an_engine_without_a_gpu_runtime_refuses_in_one_line(dproject: DockerProject) -> None:
    dproject.env.update(fake_gpu_path(dproject.root.parent / "bin", gpus=2))  # this machine "has" two GPUs
    plan = dproject.run("plan", *dproject.overrides("script=train.py", "resources.gpus=1", build=False), check=True)
    assert "--gpus device=0 (DeviceRequests)" in plan.stdout
    result = dproject.submit("script=train.py", "resources.gpus=1", build=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]  # after the environment's progress line: the engine said no
    assert error.startswith("mltrain: error: the Docker engine (local engine) cannot give the container GPUs")
    assert "install the NVIDIA container toolkit" in error
    assert dproject.record()["status"] == "Failed" and "cannot give the container GPUs" in dproject.record()["reason"]
    assert dproject.containers() == []
    result = dproject.submit("script=train.py", "resources.gpus=3", build=False)
    assert_one_line_error(result, "resources.gpus=3", "2 GPUs (0,1)")
    dproject.submit("script=train.py", "resources.cpus=1", build=False, check=True)  # no device request ...
    hardware = dproject.show(str(dproject.record()["id"]))["hardware"]
    assert hardware["gpu_count"] == 0 and hardware["cpus_limit"] == 1.0  # ... so the container saw no GPU
    dproject.submit("script=train.py", "compute.mem_limit=256m", build=False, check=True)  # compute's own limit
    assert dproject.show(str(dproject.record()["id"]))["hardware"]["memory_limit_bytes"] == 256 * 1024**2


@pytest.mark.integration
def test_a_memory_request_is_enforced_by_the_engine(dproject: DockerProject) -> None:
    dproject.write("hog.py", "x = bytearray(512 * 1024 * 1024)\nprint(len(x))\n")
    result = dproject.submit("script=hog.py", "resources.memory=48M", "compute.mem_limit=4g", build=False)
    assert result.returncode == 1
    assert dproject.record()["reason"] == "out of memory (limit 48M)"
