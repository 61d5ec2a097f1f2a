"""compute=ray against a real two-node Ray cluster on this machine (``tests/raytest.py``), through the CLI.

What every target does (streaming, cancel, detach/attach, failure reasons) is the conformance suite's; here:
what only Ray does -- its package store, its statuses and messages, runtime_env, its resource checks -- and
every bad-input line.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import Project, assert_one_line_error, wait_for
from raytest import RayCluster, free_port, ray_cluster_fixture  # noqa: F401 (the session fixture)

pytestmark = [pytest.mark.integration]

THREE_WAYS = """
import json, os, sys, time
import mltrain
print("::metric loss=0.5 step=1")
mltrain.log_metric("acc", 0.75, step=2)
with open(os.environ["MLTRAIN_METRICS_FILE"], "a") as fh:
    fh.write(json.dumps({"name": "f1", "value": 0.25, "step": 3, "time": time.time()}) + "\\n")
os.makedirs(os.path.join(os.environ["MLTRAIN_OUTPUT_DIR"], "sub"))
with open(os.path.join(os.environ["MLTRAIN_OUTPUT_DIR"], "sub", "model.txt"), "w") as fh:
    fh.write("weights")
print("argv", json.dumps(sys.argv[1:]), "run", os.environ["MLTRAIN_RUN_ID"])
"""


def ray(cluster: RayCluster, *extra: str) -> list[str]:
    return ["compute=ray", f"compute.address={cluster.url}", *extra]


def last(project: Project) -> dict[str, object]:
    run_id = str(project.runs()[0]["id"])
    return json.loads(project.run("runs", "show", run_id, "--json", check=True).stdout)  # type: ignore[no-any-return]


def test_a_run_on_ray_brings_back_outputs_metrics_and_its_job(project: Project, ray_cluster: RayCluster) -> None:
    project.write("train.py", THREE_WAYS)
    result = project.run("script=train.py", "args=[--lr,0.1]", *ray(ray_cluster), check=True)
    assert 'argv ["--lr", "0.1"]' in result.stdout  # streamed live, the same argv as local
    record = last(project)
    assert record["status"] == "Completed"
    assert record["metrics"] == {"loss": 0.5, "acc": 0.75, "f1": 0.25}
    run_id = str(record["id"])
    folder = project.workspace / "runs" / run_id
    assert (folder / "outputs" / "sub" / "model.txt").read_text() == "weights"
    log = (folder / "output.log").read_text()
    assert f"run {run_id}" in log and "--mltrain-" not in log and "Running entrypoint" not in log
    shown = project.run("runs", "show", run_id, check=True).stdout
    assert "ray job     mltrain-" in shown and f"{ray_cluster.url}/#/jobs/mltrain-" in shown


def test_an_unchanged_tree_is_not_uploaded_twice(project: Project, ray_cluster: RayCluster) -> None:
    project.write("unique.txt", str(project.root))  # a tree no other test sent
    project.run("script=train.py", *ray(ray_cluster), check=True)
    project.run("script=train.py", *ray(ray_cluster), check=True)
    plans = [json.loads((project.workspace / "runs" / str(r["id"]) / "plan.json").read_text())
             for r in reversed(project.runs())]
    staged = [next(s for s in plan["stages"] if s["name"] == "STAGE_CODE") for plan in plans]
    assert [s["cached"] for s in staged] == [False, True]


def test_a_one_file_change_sends_only_that_files_part(tmp_path: Path, ray_cluster: RayCluster) -> None:
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.take import take_snapshot
    from mltrain.store.workspace import Workspace
    from mltrain.targets.ray.config import RayCompute
    from mltrain.targets.ray.executor import RayExecutor

    tree = tmp_path / "tree"
    tree.mkdir()
    for number in range(150):
        (tree / f"m{number}.py").write_text(f"# {tmp_path} {number}\n" + "x = 1\n" * 500)
    workspace = Workspace.locate(str(tmp_path / "ws")).ensure()
    store = BlobStore(workspace.blobs)
    executor = RayExecutor(RayCompute(address=ray_cluster.url), workspace)

    def stage() -> tuple[int, int]:
        executor.stage_code(take_snapshot(tree, store).manifest.id)
        assert executor.upload is not None
        return executor.upload.bytes_sent, executor.upload.parts_sent

    first, parts = stage()
    assert parts > 2
    (tree / "m7.py").write_text((tree / "m7.py").read_text() + "y = 2\n")
    sent, parts = stage()
    assert parts == 2 and sent <= (tree / "m7.py").stat().st_size + 64 * 1024  # its part and the index
    assert sent * 5 < first


def test_secrets_are_masked_on_the_node(project: Project, ray_cluster: RayCluster) -> None:
    """The filter masks the output on the node, before Ray's log has it: the stream, the run's log, Ray's own log."""
    import urllib.request

    from maskcheck import JOB, SECRET, SECRET_ARGS, SECRET_ENV, assert_masked

    project.write("job.py", JOB)
    result = project.run(*SECRET_ARGS, *ray(ray_cluster), env=SECRET_ENV)
    assert result.returncode == 1
    assert_masked(result.stdout + result.stderr)
    record = last(project)
    assert record["status"] == "Failed" and record["exit_code"] == 1
    assert_masked((project.workspace / "runs" / str(record["id"]) / "output.log").read_text())
    job = str((record["handle"] or {})["job_id"])  # type: ignore[index]
    with urllib.request.urlopen(f"{ray_cluster.url}/api/jobs/{job}/logs", timeout=10) as resp:
        assert SECRET not in json.loads(resp.read())["logs"]


def test_a_failing_script_fails_with_its_error_and_ray_statuses_map(project: Project,
                                                                   ray_cluster: RayCluster) -> None:
    project.write("bad.py", "print('going')\nraise ValueError('the data is wrong')\n")
    result = project.run("script=bad.py", *ray(ray_cluster))
    assert result.returncode != 0
    record = last(project)
    assert record["status"] == "Failed" and record["exit_code"] == 1
    assert record["reason"] == "ValueError: the data is wrong"


def test_a_job_stopped_on_the_cluster_is_canceled_with_rays_word(project: Project, ray_cluster: RayCluster) -> None:
    import urllib.request

    project.write("slow.py", "import time\nprint('up', flush=True)\ntime.sleep(120)\n")
    project.run("script=slow.py", "--detach", *ray(ray_cluster), check=True)
    run_id = str(project.runs()[0]["id"])
    job = wait_for(lambda: (json.loads(project.run("runs", "show", run_id, "--json").stdout).get("handle") or {})
                   .get("job_id"))
    wait_for(lambda: "up" in project.run("runs", "logs", run_id).stdout, timeout=60, every=0.25)
    urllib.request.urlopen(urllib.request.Request(f"{ray_cluster.url}/api/jobs/{job}/stop", method="POST"),
                           timeout=10).close()
    attached = project.run("runs", "attach", run_id)
    assert "up" in attached.stdout
    record = last(project)
    assert record["status"] == "Canceled" and "stopped on the Ray cluster" in str(record["reason"])


def test_venv_becomes_the_jobs_runtime_env_pip(project: Project, ray_cluster: RayCluster) -> None:
    project.write("uses.py", "import sys, six\nprint('six', six.__version__, sys.prefix)\n")
    result = project.run("script=uses.py", "environment=venv", "environment.packages=[six]", *ray(ray_cluster),
                         timeout=300, check=True)
    assert "six 1." in result.stdout and "virtualenv" in result.stdout  # Ray's virtualenv on the node


def test_plan_names_the_environment_ray_makes_not_this_machines_python(project: Project) -> None:
    """The nodes make the environment: the plan's header must not name the client's interpreter."""
    address = f"compute.address=http://127.0.0.1:{free_port()}"
    plain = project.run("plan", "script=train.py", "compute=ray", address, "compute.timeout=2", check=True)
    header = plain.stdout.splitlines()[0]
    assert "with user_managed (the Ray nodes' python3)" in header and sys.executable not in header
    venv = project.run("plan", "script=train.py", "compute=ray", address, "compute.timeout=2", "environment=venv",
                       "environment.packages=[six]", check=True)
    assert "with venv (ray runtime_env pip: six)" in venv.stdout.splitlines()[0]


def test_resources_become_entrypoint_resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the job asks Ray for (the dashboard does not show it back: checked on the request sent)."""
    from mltrain.config.resources import ResourceRequest
    from mltrain.store.workspace import Workspace
    from mltrain.targets.base import LaunchRequest, Resources
    from mltrain.targets.ray.client import Cluster, Totals
    from mltrain.targets.ray.config import RayCompute
    from mltrain.targets.ray.executor import RayExecutor

    sent: list[dict[str, object]] = []
    monkeypatch.setattr(Cluster, "largest_node", lambda self: Totals(4, 2, 8 * 1024**3, 1))
    monkeypatch.setattr(Cluster, "submit", lambda self, payload: sent.append(payload) or payload["submission_id"])
    workspace = Workspace.locate(str(tmp_path / "ws")).ensure()
    executor = RayExecutor(RayCompute(address="http://127.0.0.1:9"), workspace)
    paths = workspace.run_paths("r1")
    paths.dir.mkdir(parents=True)
    def mapped(request: ResourceRequest) -> Resources:  # what execute hands launch: the target's own mapping
        from mltrain.frameworks.python import PythonFrameworkConfig

        spec = SimpleNamespace(resources=request, framework=PythonFrameworkConfig())
        return executor.resources(spec)  # type: ignore[arg-type]

    wanted = mapped(ResourceRequest(gpu_count=2, cpus=1.5, memory_bytes=1024**3))
    assert wanted.gpu_ids is None and "entrypoint_num_gpus=2" in wanted.mapping  # Ray picks the devices
    request = LaunchRequest(run_id="r1", argv=["python3", "train.py"], cwd="gcs://_ray_pkg_x.zip", env={},
                            paths=paths, resources=wanted)
    handle = executor.launch(request)
    assert sent[0]["entrypoint_num_gpus"] == 2 and sent[0]["entrypoint_num_cpus"] == 1.5
    assert sent[0]["entrypoint_memory"] == 1024**3
    assert sent[0]["runtime_env"]["working_dir"] == "gcs://_ray_pkg_x.zip"  # type: ignore[index]
    assert handle.to_dict()["job_id"] == sent[0]["submission_id"]
    sent.clear()
    executor.launch(LaunchRequest(run_id="r2", argv=["python3", "t.py"], cwd="gcs://p.zip", env={}, paths=paths,
                                  resources=mapped(ResourceRequest(all_gpus=True))))
    assert sent[0]["entrypoint_num_gpus"] == 2 and "entrypoint_num_cpus" not in sent[0]


SWEEP_TRIAL = """
import sys, time
bad = "--bad" in sys.argv and sys.argv[sys.argv.index("--bad") + 1] == "1"
for step in range(1, 201):
    print(f"::metric loss={100 if bad else 1} step={step}", flush=True)
    if bad:
        time.sleep(0.3)  # a minute of reports, unless the policy stops it
"""


def test_a_sweep_on_ray_keeps_its_record_stops_early_and_resumes(project: Project, ray_cluster: RayCluster) -> None:
    project.write("trial.py", SWEEP_TRIAL)
    command = ["-m", "script=trial.py", "params.bad=0,0,0,1", "sweep.max_concurrent=4", "sweep.primary_metric=loss",
               "sweep.early_termination.policy=bandit", "sweep.early_termination.slack_factor=0.1",
               *ray(ray_cluster)]
    result = project.run(*command, timeout=240)
    assert result.returncode == 0, result.stderr
    trials = [r for r in project.runs() if r.get("sweep_id")]
    assert sorted(str(r["status"]) for r in trials) == ["Canceled", "Completed", "Completed", "Completed"]
    stopped = next(r for r in trials if r["status"] == "Canceled")
    assert "early termination" in str(stopped["reason"])
    again = project.run(*command, timeout=240)  # the same command resumes the sweep: nothing runs again
    assert again.returncode == 0, again.stderr
    assert len([r for r in project.runs() if r.get("sweep_id")]) == 4


# ------------------------------------------------------------------ bad input, one line each, nothing started
@pytest.mark.parametrize(("extra", "fragment"), [
    (["resources.gpus=4"], "no node of the Ray cluster"),
    (["resources.gpus=[0,1]"], "Ray picks the devices"),
    (["resources.cpus=64"], "CPUs"),
    (["environment=docker_python"], "podman"),
    (["+compute.runtime_env.working_dir=/tmp"], "compute.runtime_env.working_dir"),
    (["+compute.runtime_env.pip=[six]"], "environment=venv"),
])
def test_refused_before_anything_runs(project: Project, ray_cluster: RayCluster, extra: list[str],
                                      fragment: str) -> None:
    assert_one_line_error(project.run("script=train.py", *ray(ray_cluster), *extra), fragment)


def test_an_unreachable_cluster_is_one_line_bounded_by_the_timeout(project: Project) -> None:
    result = project.run("script=train.py", "compute=ray", f"compute.address=http://127.0.0.1:{free_port()}",
                         "compute.timeout=2")
    assert_one_line_error(result, "cannot reach the Ray cluster", "ray start --head")


def test_a_ray_client_address_is_refused(project: Project) -> None:
    assert_one_line_error(project.run("script=train.py", "compute=ray", "compute.address=ray://head:10001"),
                          "not a Ray Client ray:// address")


class _Fake(http.server.BaseHTTPRequestHandler):
    answer: bytes = b""
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[type[_Fake]]:
    handler = type("Handler", (_Fake,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_an_address_that_answers_but_is_not_ray(project: Project, fake_server: type[_Fake]) -> None:
    fake_server.status, fake_server.answer = 404, b"<html>nginx</html>"
    result = project.run("script=train.py", "compute=ray", f"compute.address={fake_server.url}")  # type: ignore[attr-defined]
    assert_one_line_error(result, "is not a Ray dashboard", "compute.address")
    assert not (project.workspace / "runs").exists() or not any(r["status"] == "Running" for r in project.runs())


def test_a_ray_version_mismatch(project: Project, fake_server: type[_Fake]) -> None:
    fake_server.answer = json.dumps({"version": "1", "ray_version": "1.13.0"}).encode()
    result = project.run("script=train.py", "compute=ray", f"compute.address={fake_server.url}")  # type: ignore[attr-defined]
    assert_one_line_error(result, "Ray version mismatch", "1.13.0")


def test_ray_is_a_registered_target(project: Project) -> None:
    assert "ray" in project.run("--help", check=True).stdout
    assert Path(__file__).parent.name == "ray"
