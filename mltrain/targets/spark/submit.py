"""How mltrain calls ``spark-submit``: the options from ``compute=spark``, and the checks made before it runs.

Everything here builds an argv or asks the driver's machine a question; nothing imports pyspark
(130 ms). The argv is what an expert would type: the command a run logs (``[mltrain] $ ...``) can
be pasted into a shell as is.

* ``SparkSettings``: ``--master``, ``--deploy-mode``, resources, ``--conf k=v`` (nested config keys
  are joined: ``+compute.conf.spark.sql.shuffle.partitions=4`` works as well as
  ``{spark.sql.shuffle.partitions: 4}``), packages, jars, archives -- checked when the config is read.
* ``find_spark_submit``: ``compute.spark_home`` > ``$SPARK_HOME`` > the environment's pyspark > PATH,
  and Java, looked up on the driver's machine (this one, or an edge node: everything there goes
  through its ``Runner``). A missing Java is a one-line error saying how to install it; Spark would
  print a shell error.
* ``check_master``: an unreachable master fails within a deadline; Spark would retry for a minute.
* ``pyfiles_zip``: the importable Python of the snapshot (below the script's folder, which is the
  driver's ``sys.path[0]``) as one zip for ``--py-files``, so functions shipped to executors import
  the project's modules.
"""

from __future__ import annotations

import math
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from mltrain.errors import ConfigError, EnvironmentBuildError, TargetError
from mltrain.hosts.runner import Runner, StartError

if TYPE_CHECKING:
    from mltrain.config.resources import ResourceRequest
    from mltrain.targets.spark.config import SparkCompute

DEPLOY_MODES = ("client", "cluster")
JAVA_HINT = "install it with `apt-get install openjdk-17-jre-headless` (or set JAVA_HOME)"
# Settings that have their own compute key: giving both would leave one silently ignored.
_OWN_KEYS = {
    "spark.master": "master", "spark.submit.deployMode": "deploy_mode",
    "spark.driver.memory": "driver_memory", "spark.driver.cores": "driver_cores",
    "spark.executor.memory": "executor_memory", "spark.executor.cores": "executor_cores",
    "spark.executor.instances": "num_executors", "spark.jars.packages": "packages",
    "spark.jars": "jars", "spark.archives": "archives",
}
_CONF_KEY = re.compile(r"^spark\.[^\s=]+$")


DISCOVERY_NAME = "gpu-discovery.sh"
DISCOVERY_SCRIPT = """#!/bin/sh
# Written by mltrain: Spark's GPU discovery script (spark.{driver,executor}.resource.gpu.discoveryScript).
# Prints the GPUs nvidia-smi lists here as Spark's ResourceInformation JSON.
ids=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | tr -cd '0-9\\n' | sed 's/.*/"&"/' | paste -sd, -)
echo "{\\"name\\": \\"gpu\\", \\"addresses\\": [$ids]}"
"""


def spark_resource_conf(request: ResourceRequest, discovery_script: Callable[[], str], *,
                        local_master: bool = False) -> dict[str, str]:
    """A resource request as Spark settings: GPUs for the driver and each executor (one a task), found by
    ``discovery_script`` on each node; cpus and memory as each executor's cores and memory.

    A local master has no executors of its own: Spark schedules no task that needs a GPU there (a job would
    wait forever), so only the driver gets GPUs -- the script uses them itself.
    """
    conf: dict[str, str] = {}
    if request.all_gpus:
        raise ConfigError("resources.gpus=all: Spark needs a number of GPUs per executor; use resources.gpus=N")
    if request.gpu_count:
        for role in ("driver",) if local_master else ("driver", "executor"):
            conf[f"spark.{role}.resource.gpu.amount"] = str(request.gpu_count)
            conf[f"spark.{role}.resource.gpu.discoveryScript"] = discovery_script()
        if not local_master:
            conf["spark.task.resource.gpu.amount"] = "1"
    if request.cpus is not None:
        conf["spark.executor.cores"] = str(max(1, math.ceil(request.cpus)))
    if request.memory_bytes is not None:
        conf["spark.executor.memory"] = f"{max(1, request.memory_bytes // 1024**2)}m"
    return conf


def master_kind(master: str) -> str:
    """``local`` | ``standalone`` | ``yarn`` | ``k8s`` (anything else: ``other``)."""
    if master.startswith("local"):
        return "local"
    if master.startswith("spark://"):
        return "standalone"
    if master == "yarn":
        return "yarn"
    if master.startswith("k8s://"):
        return "k8s"
    return "other"


def _render(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def flatten_conf(conf: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{spark: {sql: {x: 1}}}`` and ``{"spark.sql.x": 1}`` both give ``{"spark.sql.x": "1"}``; checks every entry."""
    flat: dict[str, str] = {}
    for key, value in conf.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_conf(value, f"{name}."))
            continue
        if value is None:
            raise ConfigError(f"compute.conf.{name} has no value; give one, or drop the key with ~compute.conf.{name}")
        if isinstance(value, list | tuple):
            raise ConfigError(f"compute.conf.{name}={value!r}: a Spark setting is one string (join lists with commas)")
        if not _CONF_KEY.match(name):
            hint = "keys have no spaces or '='" if name.startswith("spark.") else f"did you mean spark.{name}?"
            raise ConfigError(f"compute.conf.{name}: not a Spark setting (Spark ignores keys not starting with "
                              f"'spark.'; {hint})")
        text = _render(value)
        if "\n" in text:
            raise ConfigError(f"compute.conf.{name}: the value spans several lines; give it on one line")
        flat[name] = text
    return flat


@dataclass(frozen=True)
class SparkSettings:
    """``compute=spark`` checked once (when the executor is made, before a run is recorded)."""

    master: str
    deploy_mode: str
    conf: dict[str, str]
    options: tuple[str, ...]  # everything but the interpreter settings and --py-files

    @property
    def kind(self) -> str:
        return master_kind(self.master)

    @property
    def driver_is_local(self) -> bool:
        return self.deploy_mode == "client"

    @classmethod
    def from_config(cls, config: SparkCompute) -> SparkSettings:
        master = str(config.master or "").strip()
        if not master:
            raise ConfigError("compute.master is empty; e.g. local[*], spark://host:7077, yarn or k8s://https://host")
        if config.deploy_mode not in DEPLOY_MODES:
            raise ConfigError(f"compute.deploy_mode={config.deploy_mode!r}: choose one of {', '.join(DEPLOY_MODES)}")
        kind = master_kind(master)
        if config.deploy_mode == "cluster" and kind in ("local", "standalone"):
            where = "a local master" if kind == "local" else "Spark's standalone master"
            raise ConfigError(f"{where} cannot run a Python driver in cluster mode (Spark refuses it); "
                              "use compute.deploy_mode=client, or a yarn / k8s:// master")
        conf = flatten_conf(config.conf or {})
        for key, own in _OWN_KEYS.items():
            if key in conf and getattr(config, own):  # a field named in _OWN_KEYS
                raise ConfigError(f"compute.conf.{key} and compute.{own} set the same thing; keep one")
        options = ["--master", master, "--deploy-mode", config.deploy_mode]
        for flag, value in (("--driver-memory", config.driver_memory), ("--driver-cores", config.driver_cores),
                            ("--executor-memory", config.executor_memory),
                            ("--executor-cores", config.executor_cores), ("--num-executors", config.num_executors)):
            if value not in (None, ""):
                options += [flag, str(value)]
        for flag, values in (("--packages", config.packages), ("--jars", config.jars), ("--archives", config.archives)):
            if values:
                options += [flag, ",".join(str(v) for v in values)]
        for key, value in conf.items():
            options += ["--conf", f"{key}={value}"]
        return cls(master, config.deploy_mode, conf, tuple(options))

    def python_options(self, interpreter: str) -> list[str]:
        """Driver and executors use the environment's interpreter, unless ``compute.conf`` says otherwise.

        In cluster mode the driver runs on the cluster, where our path means nothing: the
        cluster's default (or the user's ``spark.pyspark.*`` setting) applies there.
        """
        if not self.driver_is_local:
            return []
        out = []
        for key in ("spark.pyspark.python", "spark.pyspark.driver.python"):
            if key not in self.conf:
                out += ["--conf", f"{key}={interpreter}"]
        return out


# ------------------------------------------------- the driver's machine
# One sh run answers everything about the driver's machine (this one, or an edge node through its runner):
# which java spark-submit would use, and the first spark-submit of compute.spark_home ($1), $SPARK_HOME,
# the environment's pyspark (site folders: $2...) and PATH. Values arrive as arguments, never as shell text.
_TOOLS = r"""
own=$1; shift
case $own in "~"/*) own="$HOME/${own#"~/"}";; esac
if [ -n "$JAVA_HOME" ]; then java="$JAVA_HOME/bin/java"; else java=$(command -v java 2>/dev/null); fi
if [ -n "$java" ] && [ -x "$java" ]; then echo "java=$java"; else echo "no_java=$JAVA_HOME"; fi
if [ -n "$own" ]; then
  if [ -x "$own/bin/spark-submit" ]; then echo "submit=$own/bin/spark-submit"; else echo "bad_own=$own"; fi
  exit 0
fi
if [ -n "$SPARK_HOME" ]; then
  submit="$SPARK_HOME/bin/spark-submit"
  if [ -x "$submit" ]; then echo "submit=$submit"; else echo "bad_home=$SPARK_HOME"; fi
  exit 0
fi
for dir in "$@"; do
  if [ -x "$dir/pyspark/bin/spark-submit" ]; then echo "submit=$dir/pyspark/bin/spark-submit"; exit 0; fi
done
found=$(command -v spark-submit 2>/dev/null) && echo "submit=$found"
exit 0
"""


def find_spark_submit(runner: Runner, interpreter: str, spark_home: str | None, site_dirs: tuple[str, ...],
                      env: Mapping[str, str]) -> str:
    """The ``spark-submit`` the job will run on ``runner``'s machine, Java checked there (``env``: the job's
    variables, which may set JAVA_HOME or SPARK_HOME). Order: ``compute.spark_home``, ``$SPARK_HOME``, the
    environment's pyspark, ``spark-submit`` on PATH."""
    where = "" if runner.shares_files else f" on {runner.name}"
    try:
        result = runner.run(["/bin/sh", "-c", _TOOLS, "mltrain-spark", spark_home or "", *site_dirs],
                            env=dict(env), timeout=60)
    except StartError as exc:
        raise TargetError(f"could not look for spark-submit{where}: {exc}") from exc
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    if "no_java" in found:
        what = f"JAVA_HOME={found['no_java']} has no bin/java" if found["no_java"] else "Java not found on PATH"
        raise TargetError(f"{what}{where} (spark-submit needs Java 17 or newer); {JAVA_HINT}")
    if "bad_own" in found:
        raise ConfigError(f"compute.spark_home={spark_home} has no bin/spark-submit{where}; "
                          "point it at a Spark install")
    if "bad_home" in found:
        raise ConfigError(f"SPARK_HOME={found['bad_home']} has no bin/spark-submit{where}; fix or unset SPARK_HOME")
    if "submit" not in found:
        raise EnvironmentBuildError(
            f"spark-submit not found{where}: the environment's Python ({interpreter}) has no pyspark, SPARK_HOME is "
            "not set and none is on PATH; pip install 'mltrain[spark]' (or pyspark) into that environment, or set "
            "SPARK_HOME / compute.spark_home"
        )
    return found["submit"]


def master_addresses(master: str) -> list[tuple[str, int]]:
    """The ``host:port`` endpoints a master URL names (several for a standalone HA master); none for yarn/local."""
    kind = master_kind(master)
    if kind == "standalone":
        hosts = master[len("spark://"):].split(",")
        default = 7077
    elif kind == "k8s":
        rest = master[len("k8s://"):]
        scheme, sep, rest = rest.partition("://")
        if not sep:
            scheme, rest = "https", scheme
        hosts = [rest.split("/", 1)[0]]
        default = 443 if scheme == "https" else 80
    else:
        return []
    out = []
    for item in hosts:
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host or (port and not port.isdigit()):
            raise ConfigError(f"compute.master={master!r}: cannot read host:port in {item!r}")
        out.append((host.strip("[]"), int(port) if port else default))
    return out


def connect_here(host: str, port: int, timeout: float) -> str | None:
    """Open and close a TCP connection from this machine; the reason it failed, or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


# The same from another machine, run by the environment's Python there (stdlib only).
CONNECT_SCRIPT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()
except OSError as exc:
    print(exc.strerror or exc or type(exc).__name__)
    sys.exit(1)
"""


def check_master(master: str, timeout: float, connect: Callable[[str, int, float], str | None] = connect_here,
                 where: str = "") -> None:
    """Refuse, within ``timeout`` seconds, a master nobody answers at (Spark would retry for a minute)."""
    addresses = master_addresses(master)
    if not addresses:
        return
    deadline = time.monotonic() + timeout
    problem = ""
    for host, port in addresses:
        problem = connect(host, port, max(0.1, deadline - time.monotonic())) or ""
        if not problem:
            return
    raise TargetError(f"Spark master {master} is unreachable{where} ({problem}; gave up after {timeout:g}s); "
                      "start it, or fix compute.master / compute.connect_timeout")


def master_ui(master: str, explicit: str | None) -> str | None:
    """The standalone master's web UI (``compute.master_ui``, else the first master host on port 8080)."""
    if explicit:
        return explicit.rstrip("/")
    if master_kind(master) != "standalone":
        return None
    host, _ = master_addresses(master)[0]
    return f"http://{host}:8080"


# ----------------------------------------------------------------- py-files
# Run by the environment's Python on the driver's machine: zips the .py files below the script's folder
# (the script excepted) into argv[4], or leaves argv[4] + ".none" when there are none.
PYFILES_SCRIPT = r"""
import os, sys, zipfile
checkout, folder, script, target = sys.argv[1:5]
base = os.path.join(checkout, folder)
files = []
for here, dirs, names in os.walk(base):
    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
    for name in sorted(names):
        rel = os.path.relpath(os.path.join(here, name), base).replace(os.sep, "/")
        if name.endswith(".py") and rel != script:
            files.append(rel)
os.makedirs(os.path.dirname(target), exist_ok=True)
if not files:
    open(target + ".none", "w").close()
    sys.exit(0)
tmp = "%s.tmp%d" % (target, os.getpid())
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
    for rel in files:
        archive.write(os.path.join(base, rel), rel)
os.replace(tmp, target)
"""


def pyfiles_zip(runner: Runner, interpreter: str, checkout: str, script: str, target: str) -> str | None:
    """``target`` holding the snapshot's modules for ``--py-files`` (made once, reused), or None if there are none.

    The folder zipped is the script's: it is the driver's ``sys.path[0]``, so executors import what the
    driver imports.
    """
    have_zip, have_none = (m >= 0 for m in runner.mtimes([target, f"{target}.none"]))
    if not (have_zip or have_none):
        script_path = PurePosixPath(script)
        try:
            result = runner.run([interpreter, "-c", PYFILES_SCRIPT, checkout, str(script_path.parent),
                                 script_path.name, target], timeout=300)
        except StartError as exc:
            raise TargetError(f"could not zip the snapshot's modules for --py-files: {exc}") from exc
        if result.returncode != 0:
            raise TargetError(f"could not zip the snapshot's modules for --py-files: {result.last_line()}")
        have_zip = runner.mtimes([target])[0] >= 0
    return target if have_zip else None
