"""``compute=spark``'s settings (``conf/compute/spark.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mltrain.config.groups import ComputeConfig


@dataclass
class SparkCompute(ComputeConfig):
    """A Spark master: local[*] by default, or spark://, yarn, k8s://; optionally submitted from an edge node."""

    type: str = "spark"
    master: str = "local[*]"
    deploy_mode: str = "client"  # client | cluster
    conf: dict[str, Any] = field(default_factory=dict)  # each becomes --conf key=value (nested keys are joined by dots)
    driver_memory: str | None = None
    driver_cores: int | None = None
    executor_memory: str | None = None
    executor_cores: int | None = None
    num_executors: int | None = None
    packages: list[str] = field(default_factory=list)
    jars: list[str] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)
    spark_home: str | None = None  # default: $SPARK_HOME, else the environment's pyspark
    master_ui: str | None = None  # standalone master's web UI (status, app links); default: http://<master host>:8080
    connect_timeout: float = 10.0  # seconds to reach the master's port before giving up
    ssh: dict[str, Any] | None = None  # submit from an edge node: the keys of compute=ssh (host, user, ...)
