"""``compute=spark``: a Spark application submitted with ``spark-submit`` (the seed's HDInsight target).

What "a run" is on each part of Spark, and why:

* **the driver's machine** is this one, or a cluster's edge node (``compute.ssh``, the HDInsight
  pattern). ``spark-submit`` there is an ordinary job of that machine's target -- ``compute=local``
  or ``compute=ssh`` -- so this target *drives* one of those (``self.driver``) instead of copying
  them: the snapshot is staged, the environment prepared, the job started detached under the sh
  wrapper in its own process group, its log and status read, exactly as that target does.
* **client mode** (the default, and the only mode Spark allows for Python on ``local[*]`` and
  standalone masters): the driver is that job. Cancel is that target's: TERM to the process group
  (Spark's shutdown hook ends the application), KILL after the grace. In **cluster mode** (YARN,
  Kubernetes) spark-submit only watches; cancel also runs the cluster's kill
  (``yarn application -kill`` / ``spark-submit --kill``) on the driver's machine.
* **the code**: the checkout of the snapshot is the working directory (data files open at the paths
  the script uses), and its ``.py`` files below the script's folder reach the executors as one zip on
  ``--py-files`` (made once per snapshot, on the driver's machine).
* **the application** is recognised in the output (``mltrain.targets.spark.app``); its id and UI URL are added
  to the run record's ``handle`` as soon as they appear. A run nobody watches is brought up to date
  whenever it is read; if its driver vanished without an exit code, the standalone master's JSON
  endpoint says what became of the application.
* **checks before start**: the conf (when the config is read), Java and spark-submit (on the
  driver's machine), the master's port (from there; a deadline, not Spark's minute of retries).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from mltrain.config.groups import ComputeConfig
from mltrain.environments.base import PreparedEnvironment, digest
from mltrain.errors import ConfigError, TargetError
from mltrain.hosts.masking import mask_text
from mltrain.store.workspace import RunPaths, Workspace
from mltrain.targets import TARGETS, executor_for
from mltrain.targets.base import RUNTIME, Executor, ExitInfo, Handle, LaunchRequest, Resources
from mltrain.targets.spark.app import (
    SCAN_LIMIT,
    AppInfo,
    LogScanner,
    cluster_kill_argv,
    kill_cluster_app,
    standalone_state,
)
from mltrain.targets.spark.config import SparkCompute
from mltrain.targets.spark.submit import (
    CONNECT_SCRIPT,
    DISCOVERY_NAME,
    DISCOVERY_SCRIPT,
    SparkSettings,
    check_master,
    master_kind,
    master_ui,
    pyfiles_zip,
    spark_resource_conf,
)

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec
    from mltrain.hosts.runner import Runner

log = logging.getLogger(__name__)


def edge_config(config: SparkCompute) -> ComputeConfig | None:
    """``compute.ssh`` as a checked ``compute=ssh`` config (the edge node), or None."""
    if not config.ssh:
        return None
    ssh = TARGETS.config_class("ssh")  # the SSH target's own schema, through the registry
    valid = {f.name for f in dataclasses.fields(ssh)} - {"type", "cancel_grace"}
    unknown = sorted(set(config.ssh) - valid)
    if unknown:
        raise ConfigError(f"compute.ssh.{unknown[0]}: unknown key (valid keys: {', '.join(sorted(valid))})")
    if not config.ssh.get("host"):
        raise ConfigError("compute.ssh.host is missing: the edge node to submit from, e.g. compute.ssh.host=edge1")
    return ssh(**{**dict(config.ssh), "cancel_grace": config.cancel_grace})


def _driver_executor(config: SparkCompute, workspace: Workspace) -> Executor:
    """The target whose job spark-submit is: this machine's, or the edge node's (built through the registry)."""
    edge = edge_config(config) or TARGETS.config_class("local")(cancel_grace=config.cancel_grace)
    return executor_for(edge, workspace)


@dataclass(frozen=True)
class SparkHandle(Handle):
    """The driver's job (a local or an SSH handle) plus what is known of its Spark application."""

    kind = "spark"

    driver: Handle
    spark: dict[str, Any] = field(default_factory=dict)  # master, deploy_mode, master_ui, spark_submit, name, ssh
    scratch: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False, metadata=RUNTIME)

    @property
    def master_kind(self) -> str:
        return master_kind(str(self.spark.get("master", "")))

    @property
    def app(self) -> AppInfo:
        """What is known of the application: what the record said, and what the log told this process since."""
        return self._scanner().info

    def _scanner(self) -> LogScanner:
        scanner = self.scratch.get("scanner")
        if scanner is None:
            scanner = LogScanner(self.master_kind, AppInfo.from_dict(self.spark), self.spark.get("master_ui"))
            self.scratch["scanner"] = scanner
        return scanner

    # ------------------------------------------------------------ the app
    def _scan(self) -> None:
        """Read what the log gained since the last look; record the app's id/UI once they show up."""
        scanned = self.scratch.get("scanned", 0)
        if self.app.complete or scanned >= SCAN_LIMIT:
            return
        data, self.scratch["scanned"] = self.driver.read_log(scanned)  # an edge node's log is copied here first
        if data and self._scanner().feed(data):
            self._remember()

    def _remember(self) -> None:
        """Put the application's id and UI on the run record (the handle column), through ``on_update``."""
        app = self.app
        changes: dict[str, Any] = {"spark": {**self.spark, **app.to_dict()}}
        if app.app_id:
            changes["display"] = {"spark app": " ".join(filter(None, (app.app_id, app.ui_url)))}
        self.update(changes)

    def _explain(self, info: ExitInfo) -> ExitInfo:
        """A vanished driver's reason: what the master saw of the application. (A failed driver's Python
        error is read from the log like every target's, in ``targets.base.finalize``.)"""
        ended: ExitInfo | None = self.scratch.get("ended")
        if ended is None:
            self._scan()
            reason = None
            if info.exit_code is None and self.spark.get("master_ui"):
                state = standalone_state(self.spark["master_ui"], self.app.app_id, self.spark.get("name"))
                if state:
                    reason = (f"{info.reason or 'the driver process disappeared'}; "
                              f"the master reports the application {state}")
            ended = self.scratch["ended"] = ExitInfo(info.exit_code, reason or info.reason)
        return ended

    # ------------------------------------------------------- Handle API
    def poll(self) -> ExitInfo | None:
        self._scan()
        info = self.driver.poll()
        return None if info is None else self._explain(info)

    def wait(self, timeout: float) -> ExitInfo | None:
        info = self.driver.wait(timeout)
        self._scan()
        return None if info is None else self._explain(info)

    def read_log(self, offset: int) -> tuple[bytes, int]:
        return self.driver.read_log(offset)

    def cancel(self, grace: float) -> None:
        self.driver.cancel(grace)
        if self.spark.get("deploy_mode") != "cluster":
            return
        self._scan()
        argv = cluster_kill_argv(self.master_kind, self.app, str(self.spark.get("spark_submit")),
                                 str(self.spark.get("master")))
        if argv is None:
            log.warning("run %s: its cluster application may still run (no id seen, or no kill command)",
                        self.paths.dir.name)
            return
        kill_cluster_app(self._driver_runner(), argv, timeout=max(grace, 30.0))

    def _driver_runner(self) -> Runner:
        """Where commands for this application run: this machine, or the edge node."""
        config = SparkCompute(ssh=self.spark.get("ssh"))
        return _driver_executor(config, Workspace(self.paths.dir.parent.parent)).runner()

    def release(self) -> None:
        self.driver.release()

    def collect(self, paths: RunPaths) -> None:
        self.driver.collect(paths)
        self._scan()


class SparkExecutor(Executor):
    kind = "spark"
    config_class = SparkCompute
    config: SparkCompute
    frameworks = ("pyspark",)  # it starts Spark applications, with spark-submit

    def __init__(self, config: SparkCompute, workspace: Workspace) -> None:
        super().__init__(config, workspace)
        self.settings = SparkSettings.from_config(config)  # a bad conf entry fails before a run is recorded
        self.driver = _driver_executor(config, workspace)
        self._checkout: tuple[str, str] | None = None
        self._interpreter = ""
        self._spark_submit = "spark-submit"
        self._asked: tuple[str, tuple[tuple[str, str], ...]] | None = None

    @property
    def on_edge_node(self) -> bool:
        return bool(self.config.ssh)

    def describe(self) -> str:
        via = f" from {self.driver.describe()}" if self.on_edge_node else ""
        return f"spark {self.settings.master} ({self.settings.deploy_mode} mode){via}"

    def runner(self) -> Runner:
        return self.driver.runner()  # environments are prepared where the driver runs

    def code_is_staged(self, snapshot_id: str) -> bool:
        return self.driver.code_is_staged(snapshot_id)

    def stage_code(self, snapshot_id: str) -> str:
        code = self.driver.stage_code(snapshot_id)
        self._checkout = (snapshot_id, code)
        return code

    def framework_argv(self, framework: str, spec: RunSpec, environment: PreparedEnvironment) -> list[str] | None:
        return self.spark_submit(spec, environment) if framework == "pyspark" else None

    def resources(self, spec: RunSpec) -> Resources:
        """The request as Spark's own settings (``--conf``): Spark places executors and tasks on GPUs itself."""
        conf = spark_resource_conf(spec.resources, self._discovery_script, local_master=self.settings.kind == "local")
        for key in conf:
            if key in self.settings.conf:
                raise ConfigError(f"compute.conf.{key} and resources set the same thing; keep one")
        own = {"spark.executor.cores": ("executor_cores", self.config.executor_cores),
               "spark.executor.memory": ("executor_memory", self.config.executor_memory)}
        for key, (name, value) in own.items():
            if key in conf and value not in (None, ""):
                raise ConfigError(f"compute.{name} and resources set {key}; keep one")
        return Resources(spec.resources, None, {}, tuple(f"--conf {k}={v}" for k, v in conf.items()), settings=conf)

    def _discovery_script(self) -> str:
        """Where Spark finds the GPU discovery script on the driver's machine (mltrain writes it there at launch)."""
        return posixpath.join(self.runner().env_root(self.workspace.cache), "spark", DISCOVERY_NAME)

    def _write_discovery_script(self) -> None:
        runner, path = self.runner(), self._discovery_script()
        if runner.read_text(path) == DISCOVERY_SCRIPT:
            return
        runner.makedirs(posixpath.dirname(path))
        runner.write_text(path, DISCOVERY_SCRIPT)
        done = runner.run(["chmod", "755", path], timeout=30)
        if done.returncode != 0:
            raise TargetError(f"could not make {path} executable on {runner.name}: {done.last_line()}")

    def spark_submit(self, spec: RunSpec, environment: PreparedEnvironment) -> list[str]:
        """The pyspark framework's argv on this target (``mltrain.frameworks.pyspark``)."""
        from mltrain.frameworks.pyspark import spark_submit_for

        asked = (environment.interpreter, tuple(spec.env_vars))
        if asked != self._asked:  # the plan and the launch ask alike: look once
            self._spark_submit = spark_submit_for(self.runner(), environment, self.config.spark_home,
                                                  dict(spec.env_vars))
            self._interpreter, self._asked = environment.interpreter, asked
        resources = [a for k, v in self.resources(spec).settings.items() for a in ("--conf", f"{k}={v}")]
        return [self._spark_submit, *self.settings.options, *resources,
                *self.settings.python_options(environment.interpreter), *self._pyfiles(spec.script),
                *spec.script_argv()]

    def _pyfiles(self, script: str) -> list[str]:
        if self._checkout is None or not os.path.isabs(self._interpreter):  # a plan: nothing staged yet
            return []
        snapshot_id, checkout = self._checkout
        runner = self.runner()
        key = digest([snapshot_id, str(PurePosixPath(script).parent)])[:32]
        target = posixpath.join(runner.env_root(self.workspace.cache), "spark", f"pyfiles-{key}.zip")
        archive = pyfiles_zip(runner, self._interpreter, checkout, script, target)
        return ["--py-files", archive] if archive else []

    def _run_options(self, request: LaunchRequest) -> list[str]:
        """Per-run options: the application's name, and for local masters here the event log (see spark_app)."""
        conf = self.settings.conf
        options = [] if "spark.app.name" in conf else ["--name", f"mltrain-{request.run_id}"]
        local_master = self.settings.kind == "local" and not self.on_edge_node
        if local_master and not any(k.startswith("spark.eventLog.") for k in conf):
            events = request.paths.dir / "spark-events"
            events.mkdir(parents=True, exist_ok=True)
            # one plain file (Spark 4 would roll and zstd-compress it, which costs a few tenths of a second)
            for setting in ("enabled=true", f"dir=file://{events}", "compress=false", "rolling.enabled=false"):
                options += ["--conf", f"spark.eventLog.{setting}"]
        return options

    def _connect_from_driver(self, host: str, port: int, timeout: float) -> str | None:
        result = self.runner().run([self._interpreter, "-c", CONNECT_SCRIPT, host, str(port), str(timeout)],
                                   timeout=timeout + 30)
        return None if result.returncode == 0 else result.last_line()

    def launch(self, request: LaunchRequest) -> Handle:
        timeout = float(self.config.connect_timeout)
        if self.on_edge_node:
            check_master(self.settings.master, timeout, self._connect_from_driver, f" from {self.driver.describe()}")
        else:
            check_master(self.settings.master, timeout)
        if request.resources is not None and request.resources.request.wants_gpus:
            self._write_discovery_script()
        argv = [request.argv[0], *self._run_options(request), *request.argv[1:]]
        with open(request.paths.log, "ab") as log_file:  # the exact command, for the record and to rerun by hand
            line = mask_text(f"[mltrain] $ {shlex.join(argv)}\n", list(request.secrets))  # a param may be one
            log_file.write(line.encode(errors="replace"))
        env = dict(request.env)
        if self.config.spark_home:  # spark-submit follows $SPARK_HOME over its own folder: make them agree
            env["SPARK_HOME"] = posixpath.dirname(posixpath.dirname(self._spark_submit))
        driver = self.driver.launch(dataclasses.replace(request, argv=argv, env=env))
        spark = {"master": self.settings.master, "deploy_mode": self.settings.deploy_mode,
                 "master_ui": master_ui(self.settings.master, self.config.master_ui),
                 "spark_submit": self._spark_submit, "ssh": self.config.ssh,
                 "name": self.settings.conf.get("spark.app.name") or f"mltrain-{request.run_id}"}
        return SparkHandle(request.paths, driver, spark, cancel_grace=driver.cancel_grace)

    @classmethod
    def handle_from_dict(cls, data: Mapping[str, Any], paths: RunPaths) -> Handle:
        return SparkHandle.from_dict(data, paths)
