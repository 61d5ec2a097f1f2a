"""What each target can do is declared on the Executor ABC and answered by the target (never probed for)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mltrain.config.schema import validate
from mltrain.config.spec import RunSpec
from mltrain.environments.docker import DockerEnvironment, DockerImage
from mltrain.errors import ConfigError
from mltrain.store.workspace import Workspace
from mltrain.targets import TARGETS, executor_class, executor_for
from mltrain.targets.base import Resources
from mltrain.targets.docker.config import DockerCompute
from mltrain.targets.docker.util import EngineConfig
from mltrain.targets.local.config import LocalCompute
from mltrain.targets.spark.config import SparkCompute


def _spec(tmp_path: Path, **compute: object) -> RunSpec:
    cfg = validate(OmegaConf.create({"script": "t.py", "environment": {"type": "user_managed"},
                                     "compute": compute or {"type": "local"}, "framework": {"type": "python"}}))
    return RunSpec.from_config(cfg, "", [], cwd=tmp_path)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws").ensure()


def test_which_frameworks_each_target_runs() -> None:
    runs = {kind: [f for f in ("python", "pyspark") if executor_class(kind).supports(f)] for kind in TARGETS}
    assert runs == {"local": ["python", "pyspark"], "docker": ["python"], "ssh": ["python"], "spark": ["pyspark"],
                    "ray": ["python"]}


def test_how_many_nodes_a_job_may_span_is_the_targets_answer() -> None:
    spans = {kind: executor_class(kind).max_nodes() for kind in TARGETS}
    assert {kind: n for kind, n in spans.items() if kind != "ray"} == {"local": 1, "docker": 1, "ssh": 1, "spark": 1}
    assert spans["ray"] > 1 and executor_class("ray").supports("distributed")  # the cluster's alive nodes: at submit


def test_default_concurrency_is_the_targets_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")  # no cluster there: Ray's answer is the fallback
    answers = {kind: executor_class(kind).default_concurrency() for kind in TARGETS}
    assert answers == {"local": len(os.sched_getaffinity(0)), "docker": 4, "ssh": 4, "spark": 4, "ray": 4}


def test_local_has_no_engine_and_limits_nothing(tmp_path: Path, workspace: Workspace) -> None:
    local = executor_for(LocalCompute(cancel_grace=3.5), workspace)
    assert local.docker_engine() is None
    assert local.resources(_spec(tmp_path)) == Resources()
    assert local.cancel_grace == 3.5  # from the typed config
    assert local.describe() == "local"


def test_docker_names_its_engine_and_maps_its_limits(tmp_path: Path, workspace: Workspace) -> None:
    config = DockerCompute(base_url="tcp://engine.invalid:2376", cpus=1.5, mem_limit="2g", gpus="all",
                           cancel_grace=7.0, timeout=5.0)
    docker = executor_for(config, workspace)
    assert docker.docker_engine() == EngineConfig(base_url="tcp://engine.invalid:2376", timeout=5.0)
    mapped = docker.resources(_spec(tmp_path))  # no resources block: compute's own limits reach the engine
    assert mapped.settings["NanoCpus"] == 1_500_000_000 and mapped.settings["Memory"] == 2 * 1024**3
    assert mapped.settings["DeviceRequests"][0]["Count"] == -1
    assert mapped.mapping == ("--gpus all (compute.gpus)", "--cpus 1.5 (compute.cpus)",
                              "--memory 2g (compute.mem_limit)")
    assert docker.cancel_grace == 7.0


def test_the_docker_environment_builds_on_the_targets_engine(tmp_path: Path, workspace: Workspace) -> None:
    """One Engine for the image and the container: the one the target uses itself (no second connection)."""
    docker = executor_for(DockerCompute(base_url="tcp://engine.invalid:2376"), workspace)
    image = DockerImage(DockerEnvironment(image="python:3.11-slim"), source_dir=tmp_path, target=docker)
    assert image._engine(docker) is docker.docker_client()
    local = executor_for(LocalCompute(), workspace)
    with pytest.raises(ConfigError, match="compute=local has no Docker engine"):
        image._engine(local)


def test_spark_starts_pyspark_its_own_way_only(tmp_path: Path, workspace: Workspace) -> None:
    spark = executor_for(SparkCompute(), workspace)
    local = executor_for(LocalCompute(), workspace)
    from mltrain.environments.base import PreparedEnvironment

    prepared = PreparedEnvironment(interpreter="<python>", fingerprint="f", description="")
    assert local.framework_argv("pyspark", _spec(tmp_path), prepared) is None  # the framework's default
    assert spark.framework_argv("python", _spec(tmp_path), prepared) is None
    argv = spark.framework_argv("pyspark", _spec(tmp_path), prepared)
    assert argv is not None and argv[0] == "spark-submit" and "--master" in argv
