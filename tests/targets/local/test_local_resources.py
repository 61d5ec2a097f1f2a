"""compute=local on a (fake) GPU machine: CUDA_VISIBLE_DEVICES, the refusal of more GPUs than it has, the plan,
the hardware record in ``runs show`` and ``runs diff``."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Project, assert_one_line_error
from tests.gpus import fake_gpu_path

SEE = """
import os
print("CVD=" + str(os.environ.get("CUDA_VISIBLE_DEVICES")), "OMP=" + str(os.environ.get("OMP_NUM_THREADS")))
"""


@pytest.fixture
def gpu_project(project: Project) -> Project:
    project.env.update(fake_gpu_path(project.root.parent / "bin", gpus=2))
    project.write("see.py", SEE)
    return project


def _last(project: Project) -> dict[str, object]:
    run_id = project.runs()[0]["id"]
    return json.loads(project.run("runs", "show", str(run_id), "--json", check=True).stdout)  # type: ignore[no-any-return]


def test_gpus_become_cuda_visible_devices_and_the_hardware_is_recorded(gpu_project: Project) -> None:
    result = gpu_project.run("script=see.py", "resources.gpus=1", "resources.cpus=3", check=True)
    assert "CVD=0 OMP=3" in result.stdout
    shown = _last(gpu_project)
    hardware = shown["hardware"]
    assert isinstance(hardware, dict)
    assert hardware["gpu_count"] == 1 and hardware["gpus"][0]["name"] == "NVIDIA H200"
    assert (hardware["driver"], hardware["cuda"]) == ("550.54.15", "12.4")
    text = gpu_project.run("runs", "show", str(shown["id"]), check=True).stdout
    assert "gpus        1 x NVIDIA H200 140 GiB (driver 550.54.15, CUDA 12.4)" in text
    assert gpu_project.run("script=see.py", "resources.gpus=[1]", check=True).stdout.count("CVD=1 OMP=None") == 1
    second = _last(gpu_project)
    diff = gpu_project.run("runs", "diff", str(shown["id"]), str(second["id"]), check=True).stdout
    assert "hardware:\n  cpus_limit: 3.0 -> None" in diff


def test_no_request_leaves_the_devices_alone(gpu_project: Project) -> None:
    result = gpu_project.run("script=see.py", check=True)
    assert "CVD=None" in result.stdout
    assert _last(gpu_project)["hardware"]["gpu_count"] == 2  # type: ignore[index]  # the job saw every device


def test_more_gpus_than_the_machine_has_is_one_line_and_nothing_starts(gpu_project: Project) -> None:
    result = gpu_project.run("script=see.py", "resources.gpus=3")
    assert_one_line_error(result, "resources.gpus=3", "this machine has 2 GPUs (0,1)", "at most 2")
    assert gpu_project.run("runs", "list", "--json").stdout.strip() in ("", "[]")
    result = gpu_project.run("script=see.py", "resources.gpus=[4]")
    assert_one_line_error(result, "no GPU 4", "2 GPUs (0,1)")


def test_a_machine_without_gpus_refuses_a_gpu_request(project: Project) -> None:
    project.env["PATH"] = "/usr/bin:/bin"
    result = project.run("script=train.py", "resources.gpus=1")
    assert_one_line_error(result, "resources.gpus=1", "this machine has 0 GPUs")


def test_plan_shows_the_mapping(gpu_project: Project) -> None:
    result = gpu_project.run("plan", "script=see.py", "resources.gpus=2", "resources.memory=1G", check=True)
    mapping = "[resources: gpus=2 memory=1G -> CUDA_VISIBLE_DEVICES=0,1; memory 1G: recorded, not enforced"
    assert mapping in result.stdout
