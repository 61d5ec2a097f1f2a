"""compute=spark / framework=pyspark with real Spark (the pyspark package): local[*] and a standalone master +
worker on loopback, started here from the package's spark-class and stopped by pid. Plus the pieces that need
no JVM: the spark-submit options, log scanning, the Python error, the clear errors."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, assert_one_line_error, wait_for

from mltrain.errors import ConfigError, EnvironmentBuildError, TargetError
from mltrain.hosts.runner import LOCAL
from mltrain.targets.spark.app import AppInfo, LogScanner, cluster_kill_argv
from mltrain.targets.spark.config import SparkCompute
from mltrain.targets.spark.submit import SparkSettings, check_master, find_spark_submit, flatten_conf, pyfiles_zip
from mltrain.tracking.joblog import error_line as python_error

HELPER = """
def double(x):
    return 2 * x
"""

# Reads a data file beside the script, runs a UDF that imports a module of the source dir, writes outputs.
JOB = """
import os, sys
from pyspark.sql import SparkSession
from pyspark.sql.functions import udf

spark = SparkSession.builder.getOrCreate()

@udf("long")
def doubled(x):
    from lib.helper import double  # a module of the source dir, imported on the executor
    return double(x)

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "data", "numbers.txt")) as fh:
    numbers = [int(line) for line in fh if line.strip()]
total = spark.createDataFrame([(n,) for n in numbers], "n long").select(doubled("n").alias("d")).groupBy().sum("d")
value = total.collect()[0][0]
print(f"::metric total={value}")
with open(os.path.join(os.environ["MLTRAIN_OUTPUT_DIR"], "total.txt"), "w") as fh:
    fh.write(str(value))
print("app", spark.sparkContext.applicationId)
spark.stop()
"""

FAILING = """
from pyspark.sql import SparkSession
from pyspark.sql.functions import udf

spark = SparkSession.builder.getOrCreate()

@udf("long")
def broken(x):
    raise ValueError(f"bad value {x}")

spark.range(2).select(broken("id")).collect()
"""

SLOW = """
import time
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
print("count", spark.range(10).count(), flush=True)
time.sleep(600)
"""


def _pyspark_bin() -> Path:
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        pytest.skip("pyspark is not installed: pip install -e '.[dev,spark]'")
    return Path(spec.origin).parent / "bin"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


@dataclass
class Cluster:
    master: str
    ui: str

    def status(self) -> dict[str, Any]:
        return _get_json(f"{self.ui}/json/")

    def app(self, app_id: str) -> dict[str, Any] | None:
        status = self.status()
        for state in ("activeapps", "completedapps"):
            for app in status[state]:
                if app["id"] == app_id:
                    return {**app, "active": state == "activeapps"}
        return None


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A standalone master + one worker (2 cores) on loopback, on free ports; stopped by pid afterwards."""
    spark_class = str(_pyspark_bin() / "spark-class")
    folder = tmp_path_factory.mktemp("spark-cluster")
    env = {k: v for k, v in os.environ.items() if k != "SPARK_HOME"} | {"SPARK_LOCAL_IP": "127.0.0.1"}
    port, ui_port, worker_ui = _free_port(), _free_port(), _free_port()
    master = f"spark://127.0.0.1:{port}"
    processes = [_start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                         "--port", str(port), "--webui-port", str(ui_port)], folder / "master.log", env)]
    try:
        cluster = Cluster(master, f"http://127.0.0.1:{ui_port}")

        def answers(key: str, value: object) -> bool:
            try:  # while the master starts, its UI may answer with an empty page: not up yet
                return cluster.status()[key] == value
            except (OSError, ValueError, KeyError):
                return False

        wait_for(lambda: answers("status", "ALIVE"), 90, every=0.25)
        processes.append(_start([spark_class, "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1",
                                 "--cores", "2", "--memory", "1g", "--webui-port", str(worker_ui),
                                 "--work-dir", str(folder / "work")], folder / "worker.log", env))
        wait_for(lambda: answers("aliveworkers", 1), 90, every=0.25)
        yield cluster
    finally:
        for process in reversed(processes):
            _stop(process)


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {folder}/host_key
AuthorizedKeysFile {folder}/authorized_keys
PidFile {folder}/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel ERROR
SetEnv HOME={folder}/home
"""


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An "edge node": this machine's sshd on a free loopback port, with its own keys; stopped by pid afterwards.

    Being this machine, it has Java, the venv's pyspark and the module's standalone master at hand.
    """
    from sshtest import keygen

    if os.geteuid() != 0 or not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("the edge-node test runs sshd as root: needs root and openssh-server (make provision)")
    folder = tmp_path_factory.mktemp("edge")
    keygen(folder / "host_key")
    client = keygen(folder / "id_ed25519")
    (folder / "authorized_keys").write_text(Path(f"{client}.pub").read_text())
    port = _free_port()
    (folder / "sshd_config").write_text(SSHD_CONFIG.format(port=port, folder=folder))
    (folder / "home").mkdir()  # the helper and remote_dir land here, not in this machine's /root
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    sshd = _start(["/usr/sbin/sshd", "-D", "-e", "-f", str(folder / "sshd_config")], folder / "sshd.log",
                  dict(os.environ))
    try:
        def ready() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    return sock.recv(8).startswith(b"SSH-")
            except OSError:
                return False

        wait_for(ready, 20, every=0.25)
        host_key = " ".join((folder / "host_key.pub").read_text().split()[:2])
        (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
        (folder / "ssh_config").write_text("")
        yield {"host": "127.0.0.1", "port": port, "user": "root", "key_file": str(client),
               "known_hosts": str(folder / "known_hosts"), "ssh_config": str(folder / "ssh_config"),
               "remote_dir": str(folder / "remote"), "python": sys.executable}
    finally:
        _stop(sshd)


class SparkProject(Project):
    def submit(self, *overrides: str, detach: bool = False, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        flags = ["--detach"] if detach else []
        return self.run(*flags, "framework=pyspark", *overrides, **kwargs)

    def record(self, run_id: str | None = None) -> dict[str, Any]:
        run_id = run_id or str(self.runs()[0]["id"])
        return json.loads(self.run("runs", "show", "--json", run_id, check=True).stdout)  # type: ignore[no-any-return]


@pytest.fixture
def sproject(project: Project) -> SparkProject:
    _pyspark_bin()
    env = {k: v for k, v in project.env.items() if k != "SPARK_HOME"}
    proj = SparkProject(project.root, env)
    proj.write("jobs/lib/__init__.py", "")
    proj.write("jobs/lib/helper.py", HELPER)
    proj.write("jobs/data/numbers.txt", "1\n2\n3\n4\n")
    proj.write("jobs/job.py", JOB)
    return proj


# ------------------------------------------------------------- real Spark
@pytest.mark.integration
def test_local_master_reads_snapshot_data_and_records_the_application(sproject: SparkProject) -> None:
    result = sproject.submit("compute=spark", "script=jobs/job.py", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    record = sproject.record()
    assert record["status"] == "Completed" and record["compute"] == "spark"
    assert record["metrics"] == {"total": 20.0}
    run_dir = Path(record["folder"])
    assert (run_dir / "outputs" / "total.txt").read_text() == "20"
    spark = record["handle"]["spark"]
    assert spark["master"] == "local[*]"
    assert spark["app_id"].startswith("local-") and f"app {spark['app_id']}" in result.stdout
    assert spark["ui_url"].startswith("http://")
    assert list((run_dir / "spark-events").iterdir())  # the event log, for spark-history-server
    plan = json.loads((run_dir / "plan.json").read_text())
    argv = next(s for s in plan["stages"] if s["name"] == "LAUNCH")["details"]["argv"]
    assert argv[0].endswith("spark-submit") and argv[1:5] == ["--master", "local[*]", "--deploy-mode", "client"]
    assert f"spark.pyspark.python={sys.executable}" in argv
    command = next(ln for ln in result.stdout.splitlines() if ln.startswith("[mltrain] $ "))
    assert f"--name mltrain-{record['id']}" in command and "--py-files " in command


@pytest.mark.integration
def test_standalone_cluster_runs_a_udf_importing_a_source_module(sproject: SparkProject, cluster: Cluster) -> None:
    result = sproject.submit("compute=spark", f"compute.master={cluster.master}", f"compute.master_ui={cluster.ui}",
                             "script=jobs/job.py", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    record = sproject.record()
    assert record["status"] == "Completed" and record["metrics"] == {"total": 20.0}
    spark = record["handle"]["spark"]
    assert spark["app_id"].startswith("app-")
    assert spark["ui_url"] == f"{cluster.ui}/app/?appId={spark['app_id']}"
    app = cluster.app(spark["app_id"])
    assert app is not None and app["name"] == f"mltrain-{record['id']}" and app["state"] == "FINISHED"


@pytest.mark.integration
def test_edge_node_submits_over_ssh_and_cancel_kills_the_application(
        sproject: SparkProject, cluster: Cluster, edge: dict[str, Any]) -> None:
    """The HDInsight pattern: the snapshot goes to the edge node, spark-submit runs there detached (here against
    the standalone master), the log comes back (the application id is read from it), cancel ends it there."""
    sproject.write("slow.py", SLOW)
    ssh = [f"+compute.ssh.{key}={value}" for key, value in edge.items()]
    run_id = sproject.submit("compute=spark", f"compute.master={cluster.master}", f"compute.master_ui={cluster.ui}",
                             f"environment.interpreter={sys.executable}", "script=slow.py", *ssh, detach=True,
                             check=True).stdout.strip()

    def app_running() -> str | None:
        app_id = sproject.record(run_id)["handle"]["spark"].get("app_id")
        app = cluster.app(app_id) if app_id else None
        return app_id if app and app["active"] and "count 10" in sproject.run("runs", "logs", run_id).stdout else None

    try:
        app_id = wait_for(app_running, 180, every=0.25)
        handle = sproject.record(run_id)["handle"]
        assert handle["driver"]["kind"] == "ssh" and handle["driver"]["run_dir"].startswith(edge["remote_dir"])
        log = sproject.run("runs", "logs", run_id).stdout
        command = next(ln for ln in log.splitlines() if ln.startswith("[mltrain] $ "))
        assert f"--py-files {edge['remote_dir']}/cache/spark/pyfiles-" in command  # zipped on the edge node
        started = time.monotonic()
        result = sproject.run("runs", "cancel", run_id, check=True)
        assert "Canceled" in result.stdout and time.monotonic() - started < 30
        assert sproject.record(run_id)["status"] == "Canceled"
        wait_for(lambda: not cluster.app(app_id)["active"], 30, every=0.25)  # type: ignore[index]
    finally:
        sproject.run("runs", "cancel", run_id)  # never leave a driver behind
    plan = sproject.run("plan", "--json", "framework=pyspark", "compute=spark", "script=slow.py", *ssh, check=True)
    assert "from ssh (root@127.0.0.1" in json.loads(plan.stdout)["target"]


@pytest.mark.integration
def test_failing_job_fails_with_the_python_error(sproject: SparkProject) -> None:
    sproject.write("failing.py", FAILING)
    result = sproject.submit("compute=spark", "compute.master='local[1]'", "script=failing.py", timeout=240)
    assert result.returncode != 0
    record = sproject.record()
    assert record["status"] == "Failed"
    assert record["reason"] == "ValueError: bad value 0", record["reason"]


@pytest.mark.integration
def test_a_secret_in_the_error_and_the_arguments_is_masked_in_the_reason(sproject: SparkProject) -> None:
    """The reason is read from the log, which was masked as it was written; the spark-submit line mltrain
    writes itself (a param may hold a secret) is masked too, as is the stored plan."""
    secret = "spark-s3cret-value"
    sproject.write("leak.py", "import sys\nraise ValueError('bad key ' + sys.argv[-1])\n")
    result = sproject.submit("compute=spark", "compute.master='local[1]'", "script=leak.py",
                             "+params.key=${oc.env:SPARK_KEY}", env={"SPARK_KEY": secret}, timeout=240)
    assert result.returncode != 0 and secret not in result.stdout + result.stderr
    record = sproject.record()
    assert record["status"] == "Failed"
    assert record["reason"] == "ValueError: bad key ***", record["reason"]
    log = (Path(record["folder"]) / "output.log").read_text()
    command = next(ln for ln in log.splitlines() if ln.startswith("[mltrain] $ "))
    assert command.endswith("leak.py --key ***") and secret not in log
    assert secret not in (Path(record["folder"]) / "plan.json").read_text()


@pytest.mark.integration
def test_pyspark_on_compute_local_is_spark_submit_in_local_mode(sproject: SparkProject) -> None:
    sproject.write("count.py", "from pyspark.sql import SparkSession\n"
                               "print('rows', SparkSession.builder.getOrCreate().range(7).count())\n")
    result = sproject.submit("compute=local", "script=count.py", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rows 7" in result.stdout
    record = sproject.record()
    assert record["status"] == "Completed" and record["handle"]["kind"] == "local"


# ------------------------------------------------------------ clear errors
def test_java_missing_is_one_line_with_the_install_command(sproject: SparkProject, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git",):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {k: v for k, v in sproject.env.items() if k != "JAVA_HOME"} | {"PATH": str(bin_dir)}
    result = sproject.run("framework=pyspark", "compute=spark", "script=jobs/job.py", env=env)
    assert_one_line_error(result, "Java not found on PATH", "apt-get install openjdk-17-jre-headless")
    result = sproject.submit("compute=spark", "script=jobs/job.py", "+env_vars.JAVA_HOME=/nowhere")
    assert_one_line_error(result, "JAVA_HOME=/nowhere has no bin/java")


def test_spark_submit_missing_says_how_to_get_it(sproject: SparkProject, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    result = sproject.submit("compute=spark", "script=jobs/job.py",
                             f"environment.interpreter={tmp_path / 'bare' / 'bin' / 'python'}")
    assert_one_line_error(result, "spark-submit not found", "pip install 'mltrain[spark]'", "SPARK_HOME")


def test_unreachable_master_fails_within_the_deadline(sproject: SparkProject) -> None:
    started = time.monotonic()
    result = sproject.submit("compute=spark", f"compute.master=spark://127.0.0.1:{_free_port()}",
                             "compute.connect_timeout=2", "script=jobs/job.py")
    assert_one_line_error(result, "Spark master spark://127.0.0.1:", "unreachable")
    assert time.monotonic() - started < 20
    assert sproject.runs()[0]["status"] == "Failed"


def test_unanswering_master_is_a_deadline_not_a_hang() -> None:
    with socket.socket() as server:  # a listener whose queue is full: further connects hang, unanswered
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            started = time.monotonic()
            with pytest.raises(TargetError, match="unreachable \\(timed out; gave up after 1s\\)"):
                check_master(f"spark://127.0.0.1:{port}", 1.0)
            assert time.monotonic() - started < 3


@pytest.mark.parametrize(("overrides", "fragments"), [
    (["+compute.conf.foo=1"], ["compute.conf.foo", "did you mean spark.foo?"]),
    (["+compute.conf={spark.x: [1, 2]}"], ["compute.conf.spark.x", "one string"]),
    (["+compute.conf.spark.executor.memory=2g", "compute.executor_memory=4g"], ["set the same thing"]),
    (["compute.master=spark://h:7077", "compute.deploy_mode=cluster"], ["cluster mode", "deploy_mode=client"]),
    (["compute.deploy_mode=remote"], ["compute.deploy_mode", "client, cluster"]),
    (["+compute.ssh.hots=edge1"], ["compute.ssh.hots: unknown key", "host"]),
    (["+compute.ssh.user=me"], ["compute.ssh.host is missing"]),
])
def test_bad_spark_settings_are_one_line_errors(sproject: SparkProject, overrides: list[str],
                                               fragments: list[str]) -> None:
    result = sproject.submit("compute=spark", "script=jobs/job.py", *overrides)
    assert_one_line_error(result, *fragments)
    assert not sproject.workspace.joinpath("runs.db").exists() or sproject.runs() == []  # refused before a run


def test_framework_and_compute_must_fit(sproject: SparkProject) -> None:
    assert_one_line_error(sproject.run("compute=spark", "script=jobs/job.py"), "add framework=pyspark")
    assert_one_line_error(sproject.submit("compute=docker", "script=jobs/job.py"),
                          "framework=pyspark cannot run on compute=docker")


def test_plan_shows_the_spark_submit_command(sproject: SparkProject) -> None:
    result = sproject.run("plan", "--json", "framework=pyspark", "compute=spark", "compute.master=yarn",
                          "compute.executor_memory=2g", "+compute.conf.spark.sql.shuffle.partitions=8",
                          "script=jobs/job.py", check=True)
    stages = {s["name"]: s for s in json.loads(result.stdout)["stages"]}
    argv = stages["LAUNCH"]["details"]["argv"]
    assert argv[:5] == ["spark-submit", "--master", "yarn", "--deploy-mode", "client"]
    assert argv[argv.index("--executor-memory") + 1] == "2g"
    assert "spark.sql.shuffle.partitions=8" in argv and argv[-1] == "jobs/job.py"


# ------------------------------------------------------------- no JVM needed
def test_settings_flatten_nested_conf_and_render_values() -> None:
    assert flatten_conf({"spark": {"sql": {"shuffle": {"partitions": 4}}}, "spark.speculation": True}) == {
        "spark.sql.shuffle.partitions": "4", "spark.speculation": "true"}
    with pytest.raises(ConfigError, match="has no value"):
        flatten_conf({"spark.x": None})
    with pytest.raises(ConfigError, match="no spaces"):
        flatten_conf({"spark.a b": "1"})
    config = SparkCompute(master="spark://a:7077,b:7077", executor_cores=2, packages=["g:a:1", "g:b:2"],
                          archives=["env.tar.gz#env"], conf={"spark.pyspark.python": "./env/bin/python"})
    settings = SparkSettings.from_config(config)
    assert settings.options == ("--master", "spark://a:7077,b:7077", "--deploy-mode", "client",
                                "--executor-cores", "2", "--packages", "g:a:1,g:b:2", "--archives", "env.tar.gz#env",
                                "--conf", "spark.pyspark.python=./env/bin/python")
    assert settings.python_options("/py") == ["--conf", "spark.pyspark.driver.python=/py"]  # the user's wins
    cluster = SparkSettings.from_config(SparkCompute(master="yarn", deploy_mode="cluster"))
    assert cluster.python_options("/py") == []  # our path means nothing on the cluster


def _install(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_spark_submit_search_order_and_java(tmp_path: Path) -> None:
    java = _install(tmp_path / "jdk" / "bin" / "java")
    site = tmp_path / "site"
    in_env = _install(site / "pyspark" / "bin" / "spark-submit")
    home = _install(tmp_path / "home" / "bin" / "spark-submit")
    own = _install(tmp_path / "own" / "bin" / "spark-submit")
    on_path = _install(tmp_path / "path" / "spark-submit")
    base = {"PATH": f"{java.parent}:{on_path.parent}", "SPARK_HOME": "", "JAVA_HOME": ""}

    def find(spark_home: str | None = None, dirs: tuple[str, ...] = (str(site),), **env: str) -> str:
        return find_spark_submit(LOCAL, "/py", spark_home, dirs, {**base, **env})

    assert find() == str(in_env)
    assert find(SPARK_HOME=str(tmp_path / "home")) == str(home)
    assert find(str(tmp_path / "own"), SPARK_HOME=str(tmp_path / "home")) == str(own)
    assert find(dirs=()) == str(on_path)
    assert find(JAVA_HOME=str(tmp_path / "jdk"), PATH=str(on_path.parent)) == str(in_env)
    with pytest.raises(EnvironmentBuildError, match="pip install 'mltrain\\[spark\\]'"):
        find(dirs=(), PATH=str(java.parent))
    with pytest.raises(TargetError, match=r"Java not found on PATH .*openjdk-17-jre-headless"):
        find(PATH=str(on_path.parent))
    with pytest.raises(TargetError, match="JAVA_HOME=/nowhere has no bin/java"):
        find(JAVA_HOME="/nowhere")
    with pytest.raises(ConfigError, match=r"compute\.spark_home=/nowhere has no bin/spark-submit"):
        find("/nowhere")


UDF_FAILURE_LOG = """\
26/11/27 20:41:43 INFO DAGScheduler: Job 0 failed: collect at /tmp/udffail.py:7, took 1628.1 ms
Traceback (most recent call last):
  File "/tmp/udffail.py", line 7, in <module>
    spark.range(3).select(bad("id")).collect()
  File "/venv/pyspark/errors/exceptions/captured.py", line 262, in deco
pyspark.errors.exceptions.captured.PythonException26/11/27 20:41:43 INFO Executor: Executor killed task 1.0
  File "/tmp/udffail.py", line 6, in bad
    raise ValueError(f"bad value {x}")
ValueError: bad value 0
 SQLSTATE: 38000
: An exception was thrown from the Python worker:
Traceback (most recent call last):
  File "/tmp/udffail.py", line 6, in bad
    raise ValueError(f"bad value {x}")
ValueError: bad value 0
26/11/27 20:41:43 WARN TaskSetManager: Lost task 1.0 in stage 0.0 (TID 1): TaskKilled (Stage cancelled)
\tat org.apache.spark.scheduler.Task.run(Task.scala:147)
26/11/27 20:41:43 INFO SparkContext: Successfully stopped SparkContext (Uptime: 8434 ms)
"""


def test_python_error_is_the_last_tracebacks_last_line() -> None:
    assert python_error(UDF_FAILURE_LOG) == "ValueError: bad value 0"
    driver = "Traceback (most recent call last):\n  File \"job.py\", line 12, in <module>\n    1/0\n    ~^~\n" \
             "ZeroDivisionError: division by zero\n26/11/27 20:41:22 INFO ShutdownHookManager: Shutdown hook called\n"
    assert python_error(driver) == "ZeroDivisionError: division by zero"
    refused = 'Exception in thread "main" org.apache.spark.SparkException: Cluster deploy mode is not supported\n' \
              "\tat org.apache.spark.deploy.SparkSubmit.error(SparkSubmit.scala:1)\n"
    assert python_error(refused) == "org.apache.spark.SparkException: Cluster deploy mode is not supported"
    assert python_error("all fine\n") is None


def test_log_scanner_finds_ids_and_ui_across_chunks() -> None:
    info = AppInfo()
    scanner = LogScanner("standalone", info, "http://m:8080")
    line = (b"26/11/27 20:39:27 INFO StandaloneSchedulerBackend: Connected to Spark cluster with app ID "
            b"app-20261127203926-0000\n")
    assert not scanner.feed(line[:50])
    assert scanner.feed(line[50:])
    assert info.app_id == "app-20261127203926-0000"
    assert info.ui_url == "http://m:8080/app/?appId=app-20261127203926-0000"
    scanner.feed(b"INFO Utils: Successfully started service 'SparkUI' on port 4041.\n"
                 b"INFO NettyBlockTransferService: Server created on 10.0.0.5:45491\n")
    assert info.driver_ui == "http://10.0.0.5:4041" and info.complete
    local = AppInfo()
    LogScanner("local", local, None).feed(
        b"INFO RollingEventLogFilesWriter: Logging events to file:/r/eventlog_v2_local-1795812075316/events_1\n")
    assert local.app_id == "local-1795812075316"


def test_cluster_mode_kill_commands() -> None:
    k8s = AppInfo(app_id="spark-" + "a" * 32, submission_id="ns:driver-pod")
    assert cluster_kill_argv("k8s", k8s, "/s/spark-submit", "k8s://https://api:6443") == [
        "/s/spark-submit", "--kill", "ns:driver-pod", "--master", "k8s://https://api:6443"]
    assert cluster_kill_argv("standalone", AppInfo(app_id="app-1"), "s", "spark://m:7077") is None


def test_pyfiles_zip_holds_the_modules_below_the_script(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    for rel in ("jobs/job.py", "jobs/lib/__init__.py", "jobs/lib/helper.py", "jobs/.hidden/x.py",
                "jobs/data/numbers.txt", "other.py"):
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text("")
    target = str(tmp_path / "cache" / "k1.zip")
    assert pyfiles_zip(LOCAL, sys.executable, str(checkout), "jobs/job.py", target) == target
    assert zipfile.ZipFile(target).namelist() == ["lib/__init__.py", "lib/helper.py"]
    made = os.stat(target).st_mtime_ns
    assert pyfiles_zip(LOCAL, sys.executable, str(checkout), "jobs/job.py", target) == target
    assert os.stat(target).st_mtime_ns == made  # reused, not rebuilt
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "job.py").write_text("")
    assert pyfiles_zip(LOCAL, sys.executable, str(alone), "job.py", str(tmp_path / "cache" / "k2.zip")) is None
