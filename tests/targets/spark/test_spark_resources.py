"""compute=spark and the resources block: Spark's own GPU settings (driver and executors, one GPU a task) with
the discovery script mltrain writes, executor cores and memory; conflicts with compute's keys in one line."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
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
    spark = executor_for(SparkCompute(master="spark://head:7077"), Workspace(tmp_path / "ws").ensure())
    conf = dict(spark.resources(_spec(tmp_path, gpus=2, cpus=3, memory="2G")).settings)
    script = conf.pop("spark.driver.resource.gpu.discoveryScript")
    assert script.endswith("/spark/gpu-discovery.sh")
    assert conf.pop("spark.executor.resource.gpu.discoveryScript") == script
    assert conf == {"spark.driver.resource.gpu.amount": "2", "spark.executor.resource.gpu.amount": "2",
                    "spark.task.resource.gpu.amount": "1", "spark.executor.cores": "3",
                    "spark.executor.memory": "2048m"}


def test_a_local_master_gives_the_gpus_to_the_driver_only(tmp_path: Path) -> None:
    """Spark schedules no GPU task on a local master (the job would wait forever): the driver holds them."""
    spark = executor_for(SparkCompute(), Workspace(tmp_path / "ws").ensure())
    conf = spark.resources(_spec(tmp_path, gpus=1)).settings
    assert sorted(conf) == ["spark.driver.resource.gpu.amount", "spark.driver.resource.gpu.discoveryScript"]


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
    plan = project.run("plan", *base, "compute.master=spark://head:7077", "resources.gpus=1", check=True).stdout
    assert "--conf spark.executor.resource.gpu.amount=1" in plan and "spark.task.resource.gpu.amount=1" in plan
    result = project.run("plan", *base, "resources.cpus=2", "compute.executor_cores=4")
    assert_one_line_error(result, "compute.executor_cores and resources set spark.executor.cores")
    result = project.run("plan", *base, "resources.gpus=all")
    assert_one_line_error(result, "resources.gpus=all", "resources.gpus=N")


SPARK_GPUS = """
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
gpu = spark.sparkContext.resources.get("gpu")
print("driver gpus", ",".join(gpu.addresses) if gpu else None, flush=True)
print("count", spark.sparkContext.parallelize(range(10), 2).count(), flush=True)
"""


@pytest.mark.integration
def test_spark_runs_the_discovery_script_and_the_driver_gets_the_gpus(project: Project) -> None:
    java = shutil.which("java") is not None or os.environ.get("JAVA_HOME")
    if importlib.util.find_spec("pyspark") is None or not java:
        pytest.skip("needs pyspark and Java: pip install -e '.[dev,spark]', apt-get install openjdk-17-jre-headless")
    project.env.update({**fake_gpu_path(project.root.parent / "bin", gpus=2), "SPARK_LOCAL_IP": "127.0.0.1"})
    project.env.pop("SPARK_HOME", None)
    project.write("gpus.py", SPARK_GPUS)
    result = project.run("script=gpus.py", "compute=spark", "framework=pyspark", "compute.master='local[2]'",
                         "resources.gpus=1", timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "driver gpus 0,1" in result.stdout and "count 10" in result.stdout
