"""The real CLI on the local target: Ctrl-C, record listings, idempotency keys, logs. What every target does
(exit codes, argv and env, outputs and metrics, detach/attach, cancel, reasons) is in tests/conformance/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MLTRAIN, Project, wait_for


def test_invalid_env_var_name_is_refused(project: Project) -> None:
    project.write("conf/badenv.yaml", "defaults:\n  - config\n  - _self_\nenv_vars:\n  'A-B': x\n")
    result = project.run("-cn", "badenv", "script=train.py")
    from conftest import assert_one_line_error

    assert_one_line_error(result, "env_vars.A-B")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] != "Z"


SLOW = """
import os, sys, time
open("{pidfile}", "w").write(str(os.getpid()))
print("started", flush=True)
for i in range(600):
    time.sleep(0.1)
print("finished", flush=True)
"""


def test_ctrl_c_cancels_the_run(project: Project, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    project.write("slow.py", SLOW.format(pidfile=pidfile))
    proc = project.popen("script=slow.py", "compute.cancel_grace=2")
    wait_for(pidfile.exists)
    script_pid = int(pidfile.read_text())
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    (record,) = project.runs()
    assert record["status"] == "Canceled"
    assert "Ctrl-C" in str(record["reason"])
    wait_for(lambda: not _pid_alive(script_pid), timeout=5)


@pytest.mark.parametrize("where", ["as the follow begins", "in the follow, before its own catch"])
def test_ctrl_c_between_the_submit_and_the_follow_cancels_the_run(
        in_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The hand-off from submitting to following: a Ctrl-C there is the command's (or ``Run.wait``'s) to catch.
    Injected at those instants (a real signal cannot be aimed there), it cancels the run too."""
    import mltrain.results
    from mltrain.cli.main import main
    from mltrain.results import Run

    pidfile = tmp_path / "pid"
    in_project.write("slow.py", SLOW.format(pidfile=pidfile))

    def ctrl_c(*args: object, **kwargs: object) -> None:
        wait_for(pidfile.exists)
        raise KeyboardInterrupt

    if where == "as the follow begins":
        monkeypatch.setattr(Run, "wait", ctrl_c)
    else:  # wait() has opened the history and is about to follow
        monkeypatch.setattr(mltrain.results, "_live_mirror", ctrl_c)
    assert main(["--quiet", "script=slow.py", "compute.cancel_grace=2"]) == 130
    (record,) = in_project.runs()
    assert (record["status"], record["reason"]) == ("Canceled", "canceled by user (Ctrl-C)")
    wait_for(lambda: not _pid_alive(int(pidfile.read_text())), timeout=5)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell without job control starts `cmd &`


def test_ctrl_c_tests_pass_however_the_suite_was_started(tmp_path: Path) -> None:
    """The Ctrl-C tests, run by a pytest that was started with SIGINT ignored (`make test &`, nohup, some CI
    runners): each CLI they start still gets the signal (conftest's pytest_configure), and nothing leaks."""
    tests = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=120",
         f"{tests}/cli/test_cli_run.py::test_ctrl_c_cancels_the_run",
         f"{tests}/sweep/test_sweep_local.py::test_ctrl_c_cancels_the_running_trials"],
        cwd=tmp_path, env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, preexec_fn=_ignore_sigint,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 passed" in result.stdout


def test_started_with_sigint_ignored(project: Project, tmp_path: Path) -> None:
    """`nohup mltrain ... &`: mltrain keeps ignoring SIGINT (it was started not to die of one), and the script
    starts with SIGINT at its default, as it would from a terminal, not with the ignore mltrain inherited."""
    pidfile = tmp_path / "pid"
    project.write("slow.py", SLOW.format(pidfile=pidfile).replace(
        'print("started", flush=True)',
        'import signal; print("script SIGINT", signal.getsignal(signal.SIGINT), flush=True)'
    ).replace("range(600)", "range(20)"))
    proc = subprocess.Popen([MLTRAIN, "script=slow.py"], cwd=project.root, env=project.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=_ignore_sigint)
    try:
        wait_for(pidfile.exists)
        proc.send_signal(signal.SIGINT)  # ignored: the run goes on to its end
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "script SIGINT <built-in function default_int_handler>" in out
    (record,) = project.runs()
    assert record["status"] == "Completed"


def test_vanished_process_is_reconciled_to_failed(project: Project, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    project.write("slow.py", SLOW.format(pidfile=pidfile))
    run_id = project.run("--detach", "script=slow.py", check=True).stdout.strip()
    wait_for(pidfile.exists)
    shown = json.loads(project.run("runs", "show", run_id, "--json", check=True).stdout)
    assert shown["status"] == "Running"
    os.killpg(int(shown["handle"]["pid"]), signal.SIGKILL)  # wrapper and script die, no exit code written
    wait_for(lambda: not _pid_alive(int(shown["handle"]["pid"])), timeout=5)
    (record,) = project.runs()
    assert record["status"] == "Failed"
    assert "disappeared" in str(record["reason"])


def test_logs_and_metrics_commands(project: Project) -> None:
    project.run("script=train.py", check=True)
    run_id = str(project.runs()[0]["id"])
    logs = project.run("runs", "logs", run_id[:5], check=True)
    assert "argv" in logs.stdout
    metrics = json.loads(project.run("runs", "metrics", run_id, "--json", check=True).stdout)
    assert [(m["name"], m["step"], m["value"]) for m in metrics] == [("loss", 1, 0.5)]
    listing = project.run("runs", "list", check=True).stdout
    assert run_id in listing and "Completed" in listing


def test_nan_and_infinite_metrics_are_kept_and_shown(project: Project) -> None:
    """A diverged loss is data, not a crash: the run completes, every point is kept, ``--json`` stays strict."""
    project.write("diverge.py", """
        print("::metric loss=0.5 step=1")
        print("::metric loss=nan acc=inf step=2")
        print("::metric loss=-inf step=3")
        print("::metric loss=nan step=4")
    """)
    project.run("script=diverge.py", check=True)
    run_id = str(project.runs()[0]["id"])
    strict = project.run("runs", "metrics", run_id, "--json", check=True).stdout
    points = json.loads(strict, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))
    assert [(m["name"], m["step"], m["value"]) for m in points] == [
        ("loss", 1, 0.5), ("loss", 2, "NaN"), ("acc", 2, "Infinity"), ("loss", 3, "-Infinity"), ("loss", 4, "NaN")]
    (listed,) = json.loads(project.run("runs", "list", "--json", check=True).stdout,
                           parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))
    assert listed["status"] == "Completed" and listed["metrics"] == {"loss": "NaN", "acc": "Infinity"}
    assert "nan" in project.run("runs", "metrics", run_id, check=True).stdout
    # a NaN compares with nothing: a filter on it matches no run, a sort puts the run last
    assert run_id not in project.run("runs", "list", "--where", "metrics.loss < 1", check=True).stdout
    project.run("script=train.py", check=True)
    ranked = project.run("runs", "list", "--sort", "metrics.loss", "--columns", "metrics.loss", check=True).stdout
    assert ranked.splitlines()[-1].startswith(run_id)


def test_list_filters(project: Project) -> None:
    project.run("script=train.py", "experiment=one", check=True)
    project.run("script=train.py", "experiment=two", env={"EXIT_WITH": "1"})
    assert [
        r["experiment"] for r in json.loads(project.run("runs", "list", "--json", "--experiment", "one").stdout)
    ] == ["one"]
    failed = json.loads(project.run("runs", "list", "--json", "--status", "Failed").stdout)
    assert [r["experiment"] for r in failed] == ["two"]


def test_runs_from_snapshot_not_live_tree(project: Project, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    project.write("helper.py", "VALUE = 'original'\n")
    project.write(
        "edit.py",
        f"""
        import os, time
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.05)
        import helper
        print("value", helper.VALUE)
        """,
    )
    run_id = project.run("--detach", "script=edit.py", check=True).stdout.strip()
    project.write("helper.py", "VALUE = 'edited'\n")
    gate.touch()
    attached = project.run("runs", "attach", run_id, check=True)
    assert "value original" in attached.stdout


def test_list_survives_an_unreachable_target(project: Project) -> None:
    """A run on an engine that has gone away is shown as last recorded, with a warning; the rest still list."""
    from mltrain.store.db import RUNNING, Store

    project.run("script=train.py", check=True)
    with Store(project.workspace / "runs.db") as store:
        run_id = store.create_run(experiment="proj", script="train.py", source_dir=str(project.root),
                                  compute="docker", environment="docker").id
        store.transition(run_id, RUNNING, handle={"kind": "docker", "container_id": "0" * 64,
                                                   "engine": {"base_url": "unix:///nonexistent/docker.sock"}})
    result = project.run("runs", "list", check=True)
    assert run_id in result.stdout and "Running" in result.stdout and "Completed" in result.stdout
    assert f"run {run_id}: status not refreshed" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------ idempotency key
def test_idempotency_key_returns_the_existing_run(project: Project) -> None:
    first = project.run("--detach", "--idempotency-key", "ci-42", "script=train.py", "params.lr=0.1", check=True)
    run_id = first.stdout.strip()
    again = project.run("--detach", "--idempotency-key=ci-42", "script=train.py", "params.lr=0.1", check=True)
    assert again.stdout.strip() == run_id
    followed = project.run("--idempotency-key", "ci-42", "script=train.py", "params.lr=0.1", check=True)
    assert f"run {run_id} was submitted before with idempotency key ci-42" in followed.stderr
    assert f"run {run_id}" in followed.stdout  # its output streamed, as a new run's would be
    assert f"run {run_id} Completed" in followed.stderr
    other = project.run("--detach", "--idempotency-key", "ci-43", "script=train.py", "params.lr=0.1", check=True)
    assert other.stdout.strip() != run_id
    assert len(project.runs()) == 2


def test_idempotency_key_with_other_overrides_is_refused(project: Project) -> None:
    from conftest import assert_one_line_error

    run_id = project.run("--detach", "--idempotency-key", "k1", "script=train.py", "params.lr=0.1",
                         check=True).stdout.strip()
    result = project.run("--idempotency-key", "k1", "script=train.py", "params.lr=0.2")
    assert_one_line_error(result, "idempotency key 'k1'", run_id, "params.lr=0.1", "other overrides")
    assert len(project.runs()) == 1
    assert_one_line_error(project.run("--idempotency-key=", "script=train.py"), "--idempotency-key must be")
    assert_one_line_error(project.run("-m", "--idempotency-key", "k2", "script=train.py", "params.lr=1,2"),
                          "--idempotency-key is for single runs")


def test_concurrent_submits_with_one_key_make_one_run(project: Project, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    project.write("wait.py", f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.05)\n")
    args = ("--detach", "--idempotency-key", "same", "script=wait.py")
    procs = [project.popen(*args) for _ in range(3)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        gate.touch()
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    ids = {out.strip() for out, _ in outs}
    assert len(ids) == 1
    (record,) = project.runs()
    assert record["id"] in ids and record["idempotency_key"] == "same"
    assert project.run("runs", "attach", str(record["id"])).returncode == 0


# ------------------------------------------------------------ reasons and logs
def test_terminal_codes_stream_but_are_not_stored(project: Project) -> None:
    project.write("colour.py", r"""
        import sys
        print("\x1b[32mgreen\x1b[0m \x1b]0;title\x07plain", flush=True)
        raise SystemExit("\x1b[31mError: \x1b[1mbad value 3\x1b[0m")
        """)
    result = project.run("script=colour.py")
    assert "\x1b[32mgreen" in result.stdout  # the stream is the job's, codes and all
    (record,) = project.runs()
    assert record["reason"] == "Error: bad value 3"
    stored = (project.workspace / "runs" / str(record["id"]) / "output.log").read_bytes()
    assert b"\x1b" not in stored and b"green plain\n" in stored
    logs = project.run("runs", "logs", str(record["id"]), check=True).stdout
    assert "green plain" in logs and "\x1b" not in logs


def test_a_fifo_left_as_the_metrics_file_does_not_hang_the_client(project: Project) -> None:
    """The metrics file is the job's: a fifo (or a link) in its place is not read, the run still ends."""
    project.write(
        "fifo.py",
        "import os\npath = os.environ['MLTRAIN_METRICS_FILE']\n"
        "if os.path.exists(path):\n    os.remove(path)\nos.mkfifo(path)\nprint('::metric ok=1')\n",
    )
    result = project.run("script=fifo.py", timeout=60)
    assert result.returncode == 0, result.stderr
    (record,) = project.runs()
    assert record["status"] == "Completed"
    shown = json.loads(project.run("runs", "show", str(record["id"]), "--json", check=True).stdout)
    assert shown["metrics"] == {"ok": 1.0}


def test_ctrl_c_as_the_api_starts_following_cancels_the_run(
        in_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mltrain.submit(detach=False)`` has no command around it: ``Run.wait`` itself catches a Ctrl-C that lands
    before its follow does (injected there), and the run ends Canceled like any other Ctrl-C."""
    import mltrain.results
    from mltrain.api import submit

    pidfile = tmp_path / "pid"
    in_project.write("slow.py", SLOW.format(pidfile=pidfile))

    def ctrl_c(*args: object, **kwargs: object) -> None:
        wait_for(pidfile.exists)
        raise KeyboardInterrupt

    monkeypatch.setattr(mltrain.results, "_live_mirror", ctrl_c)
    run = submit(script="slow.py", compute={"cancel_grace": 2}, detach=False)
    assert (run.record.status, run.record.reason) == ("Canceled", "canceled by user (Ctrl-C)")
    wait_for(lambda: not _pid_alive(int(pidfile.read_text())), timeout=5)
