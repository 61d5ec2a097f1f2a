"""The ``resources`` block: one typed request every target maps, and one-line errors for what cannot be one."""

from __future__ import annotations

import pytest

from mltrain.config.resources import ResourceRequest, ResourcesConfig, format_bytes, parse_memory
from mltrain.errors import ConfigError
from tests.conftest import Project, assert_one_line_error


@pytest.mark.parametrize(("gpus", "count", "ids", "every"), [
    (None, 0, (), False),
    (2, 2, (), False),
    ("3", 3, (), False),
    ("all", 0, (), True),
    ([0, 2], 2, (0, 2), False),
    ("1,3", 2, (1, 3), False),
])
def test_gpus_forms(gpus: object, count: int, ids: tuple[int, ...], every: bool) -> None:
    request = ResourceRequest.parse(ResourcesConfig(gpus=gpus))
    assert (request.gpu_count, request.gpu_ids, request.all_gpus) == (count, ids, every)
    assert request.wants_gpus == (count > 0 or every)


@pytest.mark.parametrize(("text", "size"), [
    ("512M", 512 * 1024**2), ("16G", 16 * 1024**3), ("1.5GiB", 3 * 1024**3 // 2), ("2048", 2048), (4096, 4096),
])
def test_memory_sizes(text: object, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("bad", [
    ResourcesConfig(gpus="x"), ResourcesConfig(gpus=[0, 0]), ResourcesConfig(gpus=-1), ResourcesConfig(gpus=True),
    ResourcesConfig(memory="lots"), ResourcesConfig(memory=0), ResourcesConfig(cpus=0),
])
def test_bad_requests_are_config_errors(bad: ResourcesConfig) -> None:
    with pytest.raises(ConfigError, match=r"^resources\."):
        ResourceRequest.parse(bad)


def test_describe_round_numbers() -> None:
    request = ResourceRequest.parse(ResourcesConfig(gpus=[1], cpus=2, memory="16G"))
    assert request.describe() == "gpus=1 cpus=2 memory=16G"
    assert format_bytes(1536) == "1536B"


def test_cli_refuses_a_bad_request_in_one_line_and_starts_nothing(project: Project) -> None:
    result = project.run("script=train.py", "resources.memory=lots")
    assert_one_line_error(result, "resources.memory='lots'", "16G")
    assert not (project.workspace / "runs").exists() or not any((project.workspace / "runs").iterdir())
    result = project.run("script=train.py", "resources.gpus=two")
    assert_one_line_error(result, "resources.gpus", "resources.gpus=all")
