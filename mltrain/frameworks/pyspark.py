"""``framework=pyspark``: the script is a Spark driver, started by ``spark-submit``.

The argv is ``spark-submit <target's options> <interpreter settings> [--py-files zip] script args``.
Where the options come from is the target's answer, never a guess made here:

* ``compute=spark`` has its own argv (``Executor.framework_argv``: master, resources, conf, the
  snapshot's modules as ``--py-files``; with ``compute.ssh``, the spark-submit of the edge node).
* any other target that ``supports("pyspark")`` (``compute=local``) runs ``spark-submit --master
  local[*]`` on its machine, as a plain job: the code folder is the working directory and the
  script's folder is on the driver's path, as with ``framework=python``. (``compute=spark`` -- its
  default master is also ``local[*]`` -- adds the application id on the run record, conf, resources
  and ``--py-files``.)

Targets that do not support it are refused when the config is validated (``mltrain.config.schema``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mltrain.config.groups import FrameworkConfig
from mltrain.environments.base import PreparedEnvironment, default_cache_dir
from mltrain.frameworks.base import Framework
from mltrain.hosts.runner import Runner
from mltrain.targets.spark.config import SparkCompute
from mltrain.targets.spark.submit import SparkSettings, find_spark_submit

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec
    from mltrain.targets.base import Executor


@dataclass
class PySparkFrameworkConfig(FrameworkConfig):
    """``spark-submit [options] script args``: the script is a Spark driver."""

    type: str = "pyspark"


def spark_submit_for(runner: Runner, environment: PreparedEnvironment, spark_home: str | None,
                     env_vars: dict[str, str]) -> str:
    """spark-submit on ``runner``'s machine for this environment, Java checked in the job's variables;
    a plan, made before the environment is ready, shows the bare name."""
    if not os.path.isabs(environment.interpreter):
        return "spark-submit"
    from mltrain.environments.probe import probe

    site_dirs = probe(environment.interpreter, default_cache_dir(), runner=runner).site_dirs
    return find_spark_submit(runner, environment.interpreter, spark_home, site_dirs, env_vars)


class PySparkFramework(Framework):
    kind = "pyspark"
    config_class = PySparkFrameworkConfig

    def default_command(self, spec: RunSpec, environment: PreparedEnvironment, target: Executor) -> list[str]:
        settings = SparkSettings.from_config(SparkCompute())  # the defaults: local[*], client mode
        submit = spark_submit_for(target.runner(), environment, None, dict(spec.env_vars))
        return [submit, *settings.options, *settings.python_options(environment.interpreter), *spec.script_argv()]
