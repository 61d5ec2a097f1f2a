"""compute=docker on a real engine: what only this target does (image caching, labels and confinement, the log
mirror, OOM, keep_container, copy vs mount, engine down, the engine socket, a tcp:// engine, masking). What every
target does (exit codes, argv and env, outputs and metrics, the outputs policy, detach/attach, cancel, reasons,
the client killed) is in tests/conformance/, which runs the docker target with the code mounted and copied."""

# ruff: noqa: F811  (the fixtures imported from dockertest are named as the test arguments)
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, assert_one_line_error, wait_for
from dockertest import BASE_IMAGE, LABEL, DockerProject, dproject, engine  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

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


def test_runs_as_the_caller_in_the_code_dir_and_leaves_no_container(dproject: DockerProject) -> None:
    dproject.write("ids.py", "import os\nprint('ids', os.getuid(), os.getgid(), os.getcwd(), os.environ['HOME'])\n")
    ids = dproject.submit("script=ids.py", check=True).stdout
    assert f"ids {os.getuid()} {os.getgid()} /mltrain/code /mltrain/home" in ids
    assert dproject.record()["status"] == "Completed"
    assert dproject.containers() == []  # removed once collected


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
    assert "mltrain.targets.docker.engine" in imported  # the probe saw the run path
    assert not imported & {"docker", "requests", "urllib3", "paramiko"}  # docker-py is for builds only
    assert {i.id for i in dproject.images()} == images
    first, last = dproject.runs()[1], dproject.runs()[0]
    assert first["env_fingerprint"] == last["env_fingerprint"]


def test_container_is_named_labelled_confined_and_removed_on_cancel(dproject: DockerProject) -> None:
    dproject.write("slow.py", SLOW)
    result = dproject.submit("script=slow.py", "compute.cancel_grace=1", "+env_vars.STEPS=100", build=False,
                             flags=("--detach",), check=True)
    run_id = result.stdout.strip()
    (container,) = wait_for(lambda: dproject.engine.containers.list(filters={"label": f"mltrain.run_id={run_id}"}))
    assert container.labels["mltrain.experiment"] == "proj"
    assert container.name == f"mltrain-{run_id}"
    assert container.attrs["HostConfig"]["Init"] is True
    assert container.attrs["HostConfig"]["Privileged"] is False
    assert "Canceled" in dproject.run("runs", "cancel", run_id, check=True).stdout
    assert dproject.containers() == []


COUNTER = """
import os, time
with open(os.path.join(os.environ['MLTRAIN_OUTPUT_DIR'], 'progress.txt'), 'a', buffering=1) as progress:
    for i in range(100000):
        print(f"line {i}", flush=True)
        progress.write(f"{i}\\n")
        time.sleep(0.1)
"""


def _mirror_gone(run_dir: Path) -> bool:
    """The run's log mirror process has ended (reaped, or a zombie waiting for init)."""
    pid = int((run_dir / "docker-log-mirror.pid").read_text())
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_detached_log_survives_container_removal(dproject: DockerProject) -> None:
    """Nobody follows a --detach run, yet its output reaches output.log while it runs: removing the container
    behind mltrain's back keeps the lines up to then, and the run fails saying the container vanished."""
    import subprocess

    dproject.write("count.py", COUNTER)
    run_id = dproject.submit("script=count.py", build=False, flags=("--detach",), check=True).stdout.strip()
    run_dir = dproject.workspace / "runs" / run_id
    wait_for(lambda: "line 20\n" in (run_dir / "output.log").read_text(), timeout=60)  # no client read it
    container = json.loads(dproject.run("runs", "list", "--json", check=True).stdout)[0]["handle"]["container_id"]
    subprocess.run(["docker", "rm", "-f", container], check=True, capture_output=True)
    printed = int((run_dir / "outputs" / "progress.txt").read_text().split()[-1]) + 1  # bind-mounted: it stays
    shown = dproject.show(run_id)
    assert shown["status"] == "Failed", shown
    assert "vanished" in str(shown["reason"]) and "removed outside mltrain" in str(shown["reason"])
    attached = dproject.run("runs", "attach", run_id)
    log = dproject.log(run_id)
    numbers = [int(line.split()[1]) for line in log.splitlines() if line.startswith("line ")]
    assert numbers == list(range(len(numbers))), log  # in order, none twice, none skipped
    assert len(numbers) > 20
    assert f"line {len(numbers) - 1}\n" in attached.stdout and "Failed" in attached.stderr
    print(f"printed {printed} lines, the log kept {len(numbers)}")  # the brief allows the last second lost
    wait_for(lambda: _mirror_gone(run_dir))  # the mirror ended with the container


def test_the_log_mirror_ends_with_the_run(dproject: DockerProject) -> None:
    dproject.write("slow.py", SLOW)
    dproject.submit("script=slow.py", "+env_vars.STEPS=6", "+env_vars.PAUSE=0.2", build=False, check=True)
    run_id = str(dproject.record()["id"])
    assert dproject.log(run_id).count("step 5\n") == 1
    wait_for(lambda: _mirror_gone(dproject.workspace / "runs" / run_id))


def test_out_of_memory_is_named_with_the_limit(dproject: DockerProject) -> None:
    dproject.write("hog.py", "x = bytearray(512 * 1024 * 1024)\nprint(len(x))\n")
    result = dproject.submit("script=hog.py", "compute.mem_limit=48m", build=False)
    assert result.returncode == 1
    record = dproject.record()
    assert record["status"] == "Failed"
    assert record["reason"] == "out of memory (limit 48m)"


def test_keep_container_keeps_a_failed_runs_container(dproject: DockerProject) -> None:
    dproject.write("die.py", "import os, signal\nprint('dying', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    result = dproject.submit("script=die.py", "compute.keep_container=true", build=False)
    assert result.returncode == 1
    record = dproject.record()
    assert record["status"] == "Failed"
    (kept,) = dproject.containers()  # a failed run's container is kept when asked
    assert kept.labels["mltrain.run_id"] == record["id"]
    assert "dying" in kept.logs().decode()


WRITER = """
import json, os
print(open('data/info.txt').read())
with open(os.path.join(os.environ['MLTRAIN_OUTPUT_DIR'], 'model.txt'), 'w') as fh:
    fh.write('weights')
with open(os.environ['MLTRAIN_METRICS_FILE'], 'a') as fh:
    fh.write(json.dumps({'name': 'acc', 'value': 0.9, 'step': 3}) + '\\n')
"""


@pytest.mark.parametrize("transfer", ["copy", "mount"])
def test_code_is_copied_in_every_time_or_mounted_once(dproject: DockerProject, transfer: str) -> None:
    """copy: what a remote engine gets (code copied in, results pulled back); mount: the local engine's way."""
    dproject.write("data/info.txt", "from the snapshot")
    dproject.write("writer.py", WRITER)
    overrides = ("script=writer.py", f"compute.code_transfer={transfer}")
    assert "from the snapshot" in dproject.submit(*overrides, build=False, check=True).stdout
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


@pytest.mark.parametrize("source", ["/var/run/docker.sock", "/var/run", "/run", "/", "/var", "LINK"])
def test_volumes_holding_the_engine_socket_are_refused(dproject: DockerProject, tmp_path: Path,
                                                        source: str) -> None:
    """The socket, a folder holding it (as written or through a link), is refused before anything starts."""
    if source == "LINK":
        (tmp_path / "links").mkdir()
        (tmp_path / "links" / "to-run").symlink_to("/run")
        source = str(tmp_path / "links" / "to-run")
    assert dproject.containers() == []
    result = dproject.submit("script=train.py", f"compute.volumes=[{source}:/host:ro]", build=False)
    assert_one_line_error(result, f"compute.volumes: '{source}:/host:ro' hands the job the Docker engine's socket",
                          "compute.allow_engine_socket=true")
    assert result.returncode == 2
    assert dproject.containers() == []  # nothing was created
    assert not (dproject.workspace / "runs.db").exists()  # refused before a run was recorded


def test_named_volume_binding_the_socket_folder_is_refused(dproject: DockerProject) -> None:
    """A local volume with o=bind is a bind mount of its device: the same rule, asked of the engine at launch."""
    name = f"mltrain-test-{dproject.label}"
    dproject.engine.volumes.create(name, driver="local", driver_opts={"type": "none", "o": "bind", "device": "/run"},
                                   labels={LABEL: dproject.label})
    try:
        result = dproject.submit("script=train.py", f"compute.volumes=[{name}:/host:ro]", build=False)
    finally:
        dproject.engine.volumes.get(name).remove()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"mltrain: error: compute.volumes: '{name}:/host:ro' (a bind of /run) hands the job "
                            "the Docker engine's socket"), error
    assert dproject.containers() == []
    assert dproject.record()["status"] == "Failed"


def test_a_checkout_that_leads_to_the_socket_is_never_mounted(dproject: DockerProject, tmp_path: Path) -> None:
    """mltrain's own mounts are checked as compute=ssh checks them: a checkout replaced by a link to /var/run
    (a job on compute=local can do that) does not hand a later container the engine, allowed or not."""
    dproject.write("d.py", "print('in the container')\n")
    assert "in the container" in dproject.submit("script=d.py", build=False, check=True).stdout
    checkout = dproject.workspace / "checkouts" / str(dproject.record()["snapshot_id"])
    checkout.rename(tmp_path / "aside")
    checkout.symlink_to("/var/run")
    try:
        result = dproject.submit("script=d.py", "compute.allow_engine_socket=true", build=False)
    finally:
        checkout.unlink()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"mltrain: error: compute=docker: the container's mount {checkout} (a link to "), error
    assert "would hand the job the Docker engine's socket" in error and "MLTRAIN_HOME" in error
    assert dproject.containers() == []  # nothing was created for it
    assert dproject.record()["status"] == "Failed"


def test_allow_engine_socket_mounts_it_and_warns_every_run(dproject: DockerProject) -> None:
    import os

    dproject.write("sock.py", "import os\nprint('socket seen', os.path.exists('/host/docker.sock'))\n")
    overrides = ("script=sock.py", "compute.volumes=[/run:/host:ro]", "compute.allow_engine_socket=true",
                 f"compute.user={os.getuid()}:{os.getgid()}")
    for _ in range(2):
        result = dproject.submit(*overrides, build=False, check=True)
        assert "socket seen True" in result.stdout
        warning = ("[mltrain] warning: compute.allow_engine_socket=true: '/run:/host:ro' hands the job the Docker "
                   "engine's socket (/run holds /run/docker.sock); the job can take root on the engine's host")
        assert result.stdout.count(warning) == 1, result.stdout
        assert dproject.log(str(dproject.record()["id"])).count(warning) == 1
        assert "runs as root" not in result.stdout  # compute.user is set


def test_running_as_root_warns_once_unless_compute_user_is_set(dproject: DockerProject) -> None:
    import os

    dproject.write("who.py", "import os\nprint('uid', os.getuid())\n")
    result = dproject.submit("script=who.py", build=False, check=True)
    log = dproject.log(str(dproject.record()["id"]))
    warning = "[mltrain] warning: the job runs as root in the container"
    if os.getuid() == 0:
        assert "uid 0" in result.stdout
        assert result.stdout.count(warning) == 1 and log.count(warning) == 1, result.stdout
        assert "set compute.user=UID:GID" in result.stdout
    else:  # the caller's own uid: nothing to warn about
        assert warning not in result.stdout + log
    named = dproject.submit("script=who.py", "compute.user=1000:1000", build=False, check=True)
    assert "uid 1000" in named.stdout
    assert warning not in named.stdout + named.stderr + dproject.log(str(dproject.record()["id"]))


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


def test_copied_back_outputs_past_the_entry_limit_stop_cleanly(dproject: DockerProject) -> None:
    dproject.write("many.py", "import os\nfor i in range(50):\n"
                   "    open(os.path.join(os.environ['MLTRAIN_OUTPUT_DIR'], f'f{i:02}'), 'w').write('x')\n")
    dproject.submit("script=many.py", "compute.code_transfer=copy", build=False, check=True,
                    env={"MLTRAIN_OUTPUTS_MAX_FILES": "10"})
    run_id = str(dproject.record()["id"])
    outputs = dproject.workspace / "runs" / run_id / "outputs"
    assert len(list(outputs.iterdir())) < 10  # the first entries are the folders run/ and run/outputs/
    assert "[mltrain] outputs: extraction stopped: more than 10 entries" in dproject.log(run_id)
    assert dproject.containers() == []  # the engine's stream was closed and the container removed all the same


def test_extract_refuses_escapes(tmp_path: Path) -> None:
    from mltrain.util.archive import extract

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
    refused = extract(chunks, folders={"run/outputs": outputs}, files={"run/metrics.jsonl": metrics}).refused
    assert (outputs / "ok.txt").read_text() == "fine"
    assert (outputs / "sub" / "deep.txt").read_text() == "deep"
    assert not (outputs / "sub" / "through.txt").exists()  # never written through a link, even one inside
    assert os.readlink(outputs / "inside") == "sub"
    assert metrics.read_text().startswith('{"name"')
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert not (outputs / "up").is_symlink() and not (outputs / "hard").exists()
    assert not (outputs / "ok.txt").stat().st_mode & 0o4000  # no setuid survives
    assert len(refused) == 5, refused


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
    wait_for(lambda: "ready" in dproject.run("runs", "logs", run_id).stdout)
    assert "Canceled" in dproject.run("runs", "cancel", run_id, check=True).stdout
    assert "got TERM ***" in dproject.log(run_id)  # the job's own handler ran, long before the 60 s grace
    record = dproject.record(run_id)
    assert record["status"] == "Canceled" and record["exit_code"] == 143


def test_ctrl_c_right_after_the_container_starts_leaves_no_container(dproject: DockerProject,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C between the container's start and its handle (the log mirror starting): the container goes too.

    The interrupt is injected where the mirror starts (a real Ctrl-C cannot be aimed at that moment);
    the container and the engine are real.
    """
    from mltrain.run import submit
    from mltrain.targets.docker import logs

    def interrupted(*_: Any, **__: Any) -> None:
        assert dproject.containers(), "the container should have been started by now"
        raise KeyboardInterrupt

    monkeypatch.setattr(logs, "start_mirror", interrupted)
    monkeypatch.chdir(dproject.root)
    for name, value in dproject.env.items():
        monkeypatch.setenv(name, value)
    dproject.write("slow.py", SLOW)
    with pytest.raises(KeyboardInterrupt):
        submit(dproject.overrides("script=slow.py", "+env_vars.STEPS=100", build=False))
    assert dproject.containers() == []
    assert dproject.record()["status"] == "Canceled"
