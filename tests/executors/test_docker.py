"""compute=docker on a real engine: literal args, outputs and metrics back, caching, detach/attach,
cancel, OOM and kill reasons, keep-on-failure, engine down. Plus the safe extraction of pulled archives."""

# ruff: noqa: F811  (the fixtures imported from dockertest are named as the test arguments)
from __future__ import annotations

import io
import json
import signal
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, assert_one_line_error
from dockertest import BASE_IMAGE, LABEL, DockerProject, dproject, engine  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

HOSTILE = ["a b", "$(id)", ";", "x\ny", "-x", "--flag=1", "'single'", '"double"', "*", "", "\\"]

SLOW = """
import os, signal, sys, time
def term(*_):
    print("got TERM", flush=True)
    if os.environ.get("IGNORE_TERM"):
        return
    sys.exit(143)
signal.signal(signal.SIGTERM, term)
for i in range(int(os.environ.get("STEPS", "5"))):
    print(f"step {i}", flush=True)
    time.sleep(float(os.environ.get("PAUSE", "0.4")))
print("done", flush=True)
"""


def _argv(stdout: str) -> list[str]:
    return json.loads(stdout.split("argv ", 1)[1].splitlines()[0])  # type: ignore[no-any-return]


def _wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def test_literal_args_outputs_metrics_and_cleanup(dproject: DockerProject) -> None:
    dproject.write("conf/hostile.yaml", "defaults:\n  - config\n  - _self_\nargs: " + json.dumps(HOSTILE) + "\n")
    dproject.write("ids.py", "import os\nprint('ids', os.getuid(), os.getgid(), os.getcwd(), os.environ['HOME'])\n")
    result = dproject.submit("script=train.py", flags=("-cn", "hostile"), check=True)
    assert _argv(result.stdout) == HOSTILE
    record = dproject.record()
    assert record["status"] == "Completed" and record["compute"] == "docker"
    run_dir = dproject.workspace / "runs" / str(record["id"])
    assert (run_dir / "outputs" / "result.txt").read_text() == "done"
    assert dproject.show(str(record["id"]))["metrics"] == {"loss": 0.5}
    assert dproject.containers() == []  # removed once collected
    ids = dproject.submit("script=ids.py", check=True).stdout
    import os

    assert f"ids {os.getuid()} {os.getgid()} /mltrain/code /mltrain/home" in ids


def test_second_run_builds_nothing_and_plan_says_cached(dproject: DockerProject) -> None:
    dproject.submit("script=train.py", check=True)
    images = {i.id for i in dproject.images()}
    assert len(images) == 1
    plan = json.loads(dproject.run("plan", "--json", *dproject.overrides("script=train.py"), check=True).stdout)
    stages = {s["name"]: s for s in plan["stages"]}
    assert stages["ENVIRONMENT"]["cached"] is True
    assert stages["STAGE_CODE"]["cached"] is True
    second = dproject.submit("script=train.py", check=True, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert "(cached)" in second.stderr and "Step " not in second.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in second.stderr.splitlines()
                if line.startswith("import time:")}
    assert "mltrain.docker_api" in imported  # the probe saw the run path
    assert not imported & {"docker", "requests", "urllib3", "paramiko"}  # docker-py is for builds only
    assert {i.id for i in dproject.images()} == images
    first, last = dproject.runs()[1], dproject.runs()[0]
    assert first["env_fingerprint"] == last["env_fingerprint"]


def test_detach_labels_and_cancel_graceful_then_kill(dproject: DockerProject) -> None:
    dproject.write("slow.py", SLOW)
    result = dproject.submit("script=slow.py", "compute.cancel_grace=1", "+env_vars.IGNORE_TERM=1",
                             "+env_vars.STEPS=100", build=False, flags=("--detach",), check=True)
    run_id = result.stdout.strip()
    (container,) = _wait_for(lambda: dproject.engine.containers.list(filters={"label": f"mltrain.run_id={run_id}"}))
    assert container.labels["mltrain.experiment"] == "proj"
    assert container.name == f"mltrain-{run_id}"
    assert container.attrs["HostConfig"]["Init"] is True
    assert container.attrs["HostConfig"]["Privileged"] is False
    _wait_for(lambda: "step 1" in dproject.run("runs", "logs", run_id).stdout)
    started = time.monotonic()
    cancel = dproject.run("runs", "cancel", run_id, check=True)
    assert time.monotonic() - started >= 1.0  # the grace period was given
    assert "Canceled" in cancel.stdout
    record = dproject.record(run_id)
    assert record["status"] == "Canceled"
    assert "got TERM" in dproject.log(run_id)
    assert dproject.containers() == []


def test_client_killed_then_attach_sees_the_end(dproject: DockerProject) -> None:
    dproject.write("slow.py", SLOW)
    proc = dproject.popen(*dproject.overrides("script=slow.py", "+env_vars.STEPS=8", build=False))
    assert proc.stdout is not None
    while "step 1" not in proc.stdout.readline():
        pass
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    (record,) = dproject.runs()
    assert record["status"] == "Running"
    attached = dproject.run("runs", "attach", str(record["id"]), check=True)
    assert "done" in attached.stdout and "step 7" in attached.stdout
    assert "Completed" in attached.stderr
    log = dproject.log(str(record["id"]))
    for i in range(8):
        assert log.count(f"step {i}\n") == 1, log


def test_out_of_memory_is_named_with_the_limit(dproject: DockerProject) -> None:
    dproject.write("hog.py", "x = bytearray(512 * 1024 * 1024)\nprint(len(x))\n")
    result = dproject.submit("script=hog.py", "compute.mem_limit=48m", build=False)
    assert result.returncode == 1
    record = dproject.record()
    assert record["status"] == "Failed"
    assert record["reason"] == "out of memory (limit 48m)"


def test_exit_137_without_oom_and_keep_container(dproject: DockerProject) -> None:
    dproject.write("die.py", "import os, signal\nprint('dying', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    result = dproject.submit("script=die.py", "compute.keep_container=true", build=False)
    assert result.returncode == 1
    record = dproject.record()
    assert record["exit_code"] == 137
    assert record["reason"] == "killed (possibly out of memory)"
    (kept,) = dproject.containers()  # a failed run's container is kept when asked
    assert kept.labels["mltrain.run_id"] == record["id"]
    assert "dying" in dproject.log(str(record["id"]))


WRITER = """
import json, os
print(open('data/info.txt').read())
with open(os.path.join(os.environ['MLTRAIN_OUTPUT_DIR'], 'model.txt'), 'w') as fh:
    fh.write('weights')
with open(os.environ['MLTRAIN_METRICS_FILE'], 'a') as fh:
    fh.write(json.dumps({'name': 'acc', 'value': 0.9, 'step': 3}) + '\\n')
"""


@pytest.mark.parametrize("transfer", ["copy", "mount"])
def test_code_in_outputs_and_metrics_back(dproject: DockerProject, transfer: str) -> None:
    """copy: what a remote engine gets (code copied in, results pulled back); mount: the local engine's way."""
    dproject.write("data/info.txt", "from the snapshot")
    dproject.write("writer.py", WRITER)
    overrides = ("script=writer.py", f"compute.code_transfer={transfer}")
    result = dproject.submit(*overrides, build=False, check=True)
    assert "from the snapshot" in result.stdout
    run_id = str(dproject.record()["id"])
    assert (dproject.workspace / "runs" / run_id / "outputs" / "model.txt").read_text() == "weights"
    assert dproject.show(run_id)["metrics"] == {"acc": 0.9}
    plan = json.loads(dproject.run("plan", "--json", *dproject.overrides(*overrides, build=False), check=True).stdout)
    assert plan["stages"][2]["cached"] is (transfer == "mount")  # copied in every time


def test_engine_down_is_one_line_saying_how_to_start_one(project: Project) -> None:
    result = project.run("script=train.py", "compute=docker", "compute.base_url=unix:///tmp/nonexistent.sock",
                         "environment=docker", f"environment.image={BASE_IMAGE}")
    assert_one_line_error(result, "cannot reach the Docker engine at unix:///tmp/nonexistent.sock",
                          "dockerd", "compute.base_url")


def test_host_environment_is_refused_on_docker(project: Project) -> None:
    result = project.run("script=train.py", "compute=docker", "environment=venv")
    assert_one_line_error(result, "environment=venv", "environment=docker")


def test_docker_socket_is_never_mounted(project: Project) -> None:
    result = project.run("script=train.py", "compute=docker", "environment=docker", f"environment.image={BASE_IMAGE}",
                         "compute.volumes=[/var/run/docker.sock:/var/run/docker.sock]")
    assert_one_line_error(result, "compute.volumes", "socket")


# ------------------------------------------------------------------ extraction
def _tar(members: list[tuple[str, str, str]]) -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, value
                tar.addfile(info)
            else:
                data = value.encode()
                info.size, info.mode = len(data), 0o4755
                tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    return [data[i:i + 333] for i in range(0, len(data), 333)]


def test_safe_extract_refuses_escapes(tmp_path: Path) -> None:
    from mltrain.dockerutil import safe_extract

    outputs, metrics = tmp_path / "outputs", tmp_path / "metrics.jsonl"
    chunks = _tar([
        ("run", "dir", ""), ("run/outputs", "dir", ""),
        ("run/outputs/ok.txt", "file", "fine"),
        ("run/outputs/sub/deep.txt", "file", "deep"),
        ("run/outputs/../../evil.txt", "file", "x"),
        ("/abs.txt", "file", "x"),
        ("run/outputs/up", "sym", "../.."),
        ("run/outputs/up/evil2.txt", "file", "x"),
        ("run/outputs/inside", "sym", "sub"),
        ("run/outputs/inside/through.txt", "file", "ok"),
        ("run/outputs/hard", "hard", "/etc/passwd"),
        ("run/metrics.jsonl", "file", '{"name": "a", "value": 1}\n'),
        ("run/other.txt", "file", "ignored"),
    ])
    refused = safe_extract(chunks, {"run/outputs": outputs, "run/metrics.jsonl": metrics})
    assert (outputs / "ok.txt").read_text() == "fine"
    assert (outputs / "sub" / "deep.txt").read_text() == "deep"
    assert (outputs / "sub" / "through.txt").read_text() == "ok"
    assert metrics.read_text().startswith('{"name"')
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert not (outputs / "up").is_symlink() and not (outputs / "hard").exists()
    assert not (outputs / "ok.txt").stat().st_mode & 0o4000  # no setuid survives
    assert len(refused) == 3, refused


# ------------------------------------------------------------- a tcp:// engine
@pytest.fixture
def tcp_engine() -> Any:
    """The local engine seen through tcp://127.0.0.1:PORT: to mltrain, a remote engine (code copied in)."""
    import socket
    import socketserver
    import threading

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    class Forward(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.socket(socket.AF_UNIX) as upstream:
                upstream.connect("/var/run/docker.sock")
                back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
                back.start()
                pump(self.request, upstream)
                back.join()

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Forward)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_tcp_engine_gets_the_code_copied_in(dproject: DockerProject, tcp_engine: str) -> None:
    dproject.write("data/info.txt", "from the snapshot")
    dproject.write("writer.py", WRITER)
    result = dproject.submit("script=writer.py", f"compute.base_url={tcp_engine}", build=False, check=True)
    assert "from the snapshot" in result.stdout
    run_id = str(dproject.record()["id"])
    assert (dproject.workspace / "runs" / run_id / "outputs" / "model.txt").read_text() == "weights"
    handle = dproject.show(run_id)["handle"]
    assert handle["engine"]["base_url"] == tcp_engine and handle["mounted"] is False


# ----------------------------------------------------------------- secrets
def test_secrets_are_masked_inside_the_container(dproject: DockerProject) -> None:
    """The image's Python masks the output before the engine keeps it: the stream, the run log, the engine's own
    log (read from the kept container) and a later attach show *** only."""
    from maskcheck import JOB, SECRET, SECRET_ARGS, SECRET_ENV, assert_masked

    dproject.write("job.py", JOB)
    result = dproject.submit(*SECRET_ARGS, "compute.keep_container=true", build=False, env=SECRET_ENV)
    assert result.returncode == 1
    assert_masked(result.stdout + result.stderr)
    record = dproject.record()
    assert record["status"] == "Failed" and record["exit_code"] == 1
    assert_masked(dproject.log(str(record["id"])))
    (kept,) = dproject.containers()
    assert_masked(kept.logs().decode())  # what the engine stored
    assert SECRET not in json.dumps(dproject.show(str(record["id"])))
    run_id = dproject.submit(*SECRET_ARGS, build=False, env=SECRET_ENV, flags=("--detach",), check=True).stdout.strip()
    attached = dproject.run("runs", "attach", run_id)
    assert attached.returncode == 1
    assert_masked(attached.stdout + attached.stderr)


def test_cancel_reaches_the_job_behind_the_filter(dproject: DockerProject) -> None:
    """In a container only the filter hears init's TERM: it passes it on, so the job ends gracefully."""
    from maskcheck import SECRET_ENV, TRAP

    dproject.write("trap.py", TRAP)
    run_id = dproject.submit("script=trap.py", "+env_vars.TOK=${oc.env:MY_TOKEN}", "compute.cancel_grace=60",
                             build=False, env=SECRET_ENV, flags=("--detach",), check=True).stdout.strip()
    _wait_for(lambda: "ready" in dproject.run("runs", "logs", run_id).stdout)
    assert "Canceled" in dproject.run("runs", "cancel", run_id, check=True).stdout
    assert "got TERM ***" in dproject.log(run_id)  # the job's own handler ran, long before the 60 s grace
    record = dproject.record(run_id)
    assert record["status"] == "Canceled" and record["exit_code"] == 143
