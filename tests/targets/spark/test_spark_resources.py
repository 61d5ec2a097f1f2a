"""compute=spark and the resources block: Spark's own GPU settings (driver and executors, one GPU a task) with
the discovery script mltrain writes, executor cores and memory; conflicts with compute's keys in one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

from mltrain.config.schema import validate
from mltrain.config.spec import RunSpec
from mltrain.store.workspace import Workspace
from mltrain.targets import executor_for
from mltrain.targets.spark.config import SparkCompute
from mltrain.targets.spark.submit import DISCOVERY_SCRIPT
from tests.conftest import Project, assert_one_line_error
from tests.gpus import fake_gpu_path


def _spec(tmp_path: Path, **resources: object) -> RunSpec:
    cfg = validate(OmegaConf.create({"script": "t.py", "environment": {"type": "user_managed"},
                                     "compute": {"type": "spark"}, "framework": {"type": "pyspark"},
                                     "resources": resources}))
    return RunSpec.from_config(cfg, "", [], cwd=tmp_path)


def test_gpus_cpus_and_memory_become_spark_settings(tmp_path: Path) -> None:
    spark = executor_for(SparkCompute(), Workspace(tmp_path / "ws").ensure())
    conf = dict(spark.resources(_spec(tmp_path, gpus=2, cpus=3, memory="2G")).settings)
    script = conf.pop("spark.driver.resource.gpu.discoveryScript")
    assert script.endswith("/spark/gpu-discovery.sh")
    assert conf.pop("spark.executor.resource.gpu.discoveryScript") == script
    assert conf == {"spark.driver.resource.gpu.amount": "2", "spark.executor.resource.gpu.amount": "2",
                    "spark.task.resource.gpu.amount": "1", "spark.executor.cores": "3",
                    "spark.executor.memory": "2048m"}


def test_the_discovery_script_lists_the_gpus_as_spark_reads_them(tmp_path: Path) -> None:
    script = tmp_path / "discover.sh"
    script.write_text(DISCOVERY_SCRIPT)
    script.chmod(0o755)
    out = subprocess.run([str(script)], env=fake_gpu_path(tmp_path / "bin", gpus=3), capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == {"name": "gpu", "addresses": ["0", "1", "2"]}
    none = subprocess.run([str(script)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True).stdout
    assert json.loads(none) == {"name": "gpu", "addresses": []}


def test_plan_shows_the_conf_and_conflicts_are_one_line(project: Project) -> None:
    base = ("script=train.py", "compute=spark", "framework=pyspark")
    plan = project.run("plan", *base, "resources.gpus=1", check=True).stdout
    assert "--conf spark.executor.resource.gpu.amount=1" in plan and "spark.task.resource.gpu.amount=1" in plan
    result = project.run("plan", *base, "resources.cpus=2", "compute.executor_cores=4")
    assert_one_line_error(result, "compute.executor_cores and resources set spark.executor.cores")
    result = project.run("plan", *base, "resources.gpus=all")
    assert_one_line_error(result, "resources.gpus=all", "resources.gpus=N")
