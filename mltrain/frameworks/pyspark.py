"""``framework=pyspark``: the script is a Spark driver, started by ``spark-submit``.

The argv is ``spark-submit <target's options> <interpreter settings> [--py-files zip] script args``.
Where the options come from is the target's answer, never a guess made here:

* ``compute=spark`` offers ``spark_submit(spec, environment)`` (master, resources, conf, the snapshot's
  modules as ``--py-files``; with ``compute.ssh``, the spark-submit of the edge node).
* ``compute=local`` runs ``spark-submit --master local[*]`` on this machine, as a plain local job: the
  code folder is the working directory and the script's folder is on the driver's path, as with
  ``framework=python``. (``compute=spark`` -- its default master is also ``local[*]`` -- adds the
  application id on the run record, conf, resources and ``--py-files``.)

Other targets are refused when the config is validated (``mltrain.config.schema``).
"""

from __future__ import annotations

import os
from typing import Any

from mltrain.config.schema import SparkCompute
from mltrain.environments.base import PreparedEnvironment, default_cache_dir
from mltrain.frameworks.base import Framework
from mltrain.hosts.runner import Runner, runner_for
from mltrain.targets.spark.submit import SparkSettings, find_spark_submit


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

    def command(self, spec: Any, environment: PreparedEnvironment, target: Any) -> list[str]:
        own = getattr(target, "spark_submit", None)
        if own is not None:
            argv: list[str] = own(spec, environment)
            return argv
        settings = SparkSettings.from_config(SparkCompute())  # the defaults: local[*], client mode
        submit = spark_submit_for(runner_for(target), environment, None, dict(spec.env_vars))
        return [submit, *settings.options, *settings.python_options(environment.interpreter), *spec.script_argv()]
