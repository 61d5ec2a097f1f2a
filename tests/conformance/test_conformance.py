"""One suite every compute target passes, through the real CLI: what a user sees of a run, whatever the target.

Each test runs once per target in ``targets.TARGETS`` (local, docker, ssh, spark; a new target is one entry
there). What a target does differently is declared there with the reason, and checked here as declared.
"""

# ruff: noqa: F811  (the fixtures imported from targets are named as the test arguments)
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from conftest import wait_for
from targets import BEHAVIOURS, TARGETS, TargetProject, target, tproject  # noqa: F401 (fixtures)

import mltrain.tracking.metrics

pytestmark = pytest.mark.integration

HOSTILE = ["a b", "$(id)", ";", "x\ny", "-x", "--flag=1", "'single'", '"double"', "*", "", "\\"]

CONTRACT = """
import json, os, sys
print("argv", json.dumps(sys.argv[1:]), flush=True)
names = ("GREETING", "TRICKY", "MLTRAIN_RUN_ID", "MLTRAIN_OUTPUT_DIR", "MLTRAIN_METRICS_FILE")
print("env", json.dumps({name: os.environ.get(name) for name in names}), flush=True)
"""

EXIT = """
import os, signal, sys, traceback
how = sys.argv[1]
print("started", flush=True)
if how == "kill":
    try:
        raise KeyError("handled")  # a traceback the job printed and handled is not why it died
    except KeyError:
        traceback.print_exc()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(how))
"""

RESULTS = """
import json, os
try:
    from mltrain import log_metric
    print("log_metric from mltrain", flush=True)
except ImportError:  # no mltrain where the job runs: the module copied next to the script (README, Metrics)
    from mltrain_metrics import log_metric
    print("log_metric from the copy", flush=True)
log_metric("api", 0.25, step=1)
with open(os.environ["MLTRAIN_METRICS_FILE"], "a") as fh:
    fh.write(json.dumps({"name": "jsonl", "value": 0.5, "step": 2}) + "\\n")
print("::metric stdout=0.75 step=3", flush=True)
out = os.environ["MLTRAIN_OUTPUT_DIR"]
os.makedirs(os.path.join(out, "models"))
with open(os.path.join(out, "models", "best.txt"), "w") as fh:
    fh.write("weights")
with open(os.path.join(out, "result.txt"), "w") as fh:
    fh.write("done")
"""

LINES = """
import os, sys, time
n, pause = int(sys.argv[1]), float(sys.argv[2])
for i in range(n):
    print(f"line {i}", flush=True)
    time.sleep(pause)
with open(os.path.join(os.environ["MLTRAIN_OUTPUT_DIR"], "done.txt"), "w") as fh:
    fh.write("yes")
"""

STUBBORN = """
import signal, subprocess, sys, time
marker, job, child = sys.argv[1:4]
def term(*_):
    print("got TERM", flush=True)
    if job == "exits":
        sys.exit(143)
signal.signal(signal.SIGTERM, term)
# a child in the job's process group, which cancel's signals reach as well
subprocess.Popen([sys.executable, "-c", "import signal, sys, time\\n"
                  "if sys.argv[2] == 'ignores':\\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
                  "time.sleep(300)", marker + "-child", child])
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""

BAD = """
def check(value):
    try:
        {}["lr"]
    except KeyError:
        raise ValueError(f"bad value {value}")
check(3)
"""

HOSTILE_OUTPUTS = """
import os
out = os.environ["MLTRAIN_OUTPUT_DIR"]
os.symlink("/root/.ssh", os.path.join(out, "ssh"))
os.symlink("../../../../etc/passwd", os.path.join(out, "passwd"))
os.symlink("..", os.path.join(out, "up"))
os.makedirs(os.path.join(out, "models"))
with open(os.path.join(out, "models", "best.pt"), "w") as fh:
    fh.write("weights")
os.symlink("models/best.pt", os.path.join(out, "latest.pt"))
os.mkfifo(os.path.join(out, "pipe"))
print("planted", flush=True)
"""


def _numbered(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("line ")]


def _lines(n: int) -> list[str]:
    return [f"line {i}" for i in range(n)]


def _read_until(proc: object, wanted: str) -> str:
    """Lines of a running CLI's stdout up to (and with) the first that contains ``wanted``."""
    seen = ""
    stdout = proc.stdout  # type: ignore[attr-defined]
    while wanted not in seen:
        line = stdout.readline()
        assert line, f"the CLI ended before {wanted!r}: {seen}{proc.stderr.read()}"  # type: ignore[attr-defined]
        seen += line
    return seen


# ------------------------------------------------------------------------ exit codes
@pytest.mark.parametrize("how", ["0", "3", "kill"])
def test_exit_code_becomes_status_record_and_cli_exit(tproject: TargetProject, how: str) -> None:
    tproject.write("exit.py", EXIT)
    result = tproject.submit("script=exit.py", f"args=[{how}]", timeout=240)
    record = tproject.only_run()
    target = tproject.target
    expected = {
        "0": ("Completed", 0, None, 0),
        "3": ("Failed", 3, "script exited with code 3", 1),
        "kill": ("Failed", target.expect("killed_exit_code", 137),
                 target.expect("killed_reason", "killed by SIGKILL (exit code 137)"), 1),
    }[how]
    assert (record["status"], record["exit_code"], record["reason"], result.returncode) == expected, result.stderr
    assert "started" in result.stdout and "started" in tproject.log(record["id"])
    assert [t["status"] for t in record["transitions"]] == ["Queued", "Preparing", "Running", "Finalizing",
                                                            record["status"]]
    end = result.stderr.strip().splitlines()[-1]
    assert end.startswith(f"mltrain: run {record['id']} {record['status']} in "), end
    if record["reason"]:
        assert end.endswith(f": {record['reason']}"), end
    assert record["experiment"] == "proj" and record["env_fingerprint"]  # default: the project folder's name
    assert "script: exit.py" in (Path(record["folder"]) / "config.yaml").read_text()


# ------------------------------------------------------------------- argv and env
def test_argv_arrives_literally(tproject: TargetProject) -> None:
    tproject.write("conf/hostile.yaml", "defaults:\n  - config\n  - _self_\nargs: " + json.dumps(HOSTILE) + "\n")
    tproject.write("contract.py", CONTRACT)
    result = tproject.submit("script=contract.py", "params.lr=0.1", flags=("-cn", "hostile"), timeout=240)
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout.split("argv ", 1)[1].splitlines()[0])
    assert argv == [*HOSTILE, "--lr", "0.1"]


def test_env_vars_reach_the_job(tproject: TargetProject) -> None:
    tproject.write("contract.py", CONTRACT)
    result = tproject.submit("script=contract.py", "+env_vars.GREETING=hello world", "+env_vars.TRICKY='$(id) `x`;'",
                             timeout=240)
    assert result.returncode == 0, result.stderr
    env = json.loads(result.stdout.split("env ", 1)[1].splitlines()[0])
    record = tproject.only_run()
    assert env["GREETING"] == "hello world" and env["TRICKY"] == "$(id) `x`;"
    assert env["MLTRAIN_RUN_ID"] == record["id"]
    for name in ("MLTRAIN_OUTPUT_DIR", "MLTRAIN_METRICS_FILE"):  # paths where the job runs, not necessarily here
        assert env[name].startswith("/"), env


# ----------------------------------------------------------------- outputs and metrics
def test_outputs_and_metrics_of_all_three_protocols_come_back(tproject: TargetProject) -> None:
    tproject.write("results.py", RESULTS)
    tproject.write("mltrain_metrics.py", Path(mltrain.tracking.metrics.__file__).read_text())
    result = tproject.submit("script=results.py", timeout=240)
    assert result.returncode == 0, result.stderr
    source = "mltrain" if tproject.target.has_mltrain else "the copy"
    assert f"log_metric from {source}" in result.stdout
    record = tproject.only_run()
    assert record["metrics"] == {"api": 0.25, "jsonl": 0.5, "stdout": 0.75}
    metrics = json.loads(tproject.run("runs", "metrics", record["id"], "--json", check=True).stdout)
    assert sorted((m["name"], m["step"], m["value"]) for m in metrics) == [
        ("api", 1, 0.25), ("jsonl", 2, 0.5), ("stdout", 3, 0.75)]
    outputs = tproject.outputs(record["id"])
    assert (outputs / "result.txt").read_text() == "done"
    assert (outputs / "models" / "best.txt").read_text() == "weights"


def test_outputs_keep_files_and_links_inside_and_drop_the_rest_with_a_warning(tproject: TargetProject) -> None:
    """The policy of mltrain/util/outputs.py on every target: links out and a fifo dropped, each named in the log."""
    tproject.write("hostile.py", HOSTILE_OUTPUTS)
    result = tproject.submit("script=hostile.py", timeout=240)
    assert result.returncode == 0, result.stderr
    record = tproject.only_run()
    assert record["status"] == "Completed"
    outputs = tproject.outputs(record["id"])
    assert sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*")) == ["latest.pt", "models",
                                                                               "models/best.pt"]
    assert (outputs / "latest.pt").readlink() == Path("models/best.pt")
    assert (outputs / "models" / "best.pt").read_text() == "weights"
    notes = [line for line in tproject.log(record["id"]).splitlines() if line.startswith("[mltrain] outputs: ")]
    for name in ("ssh", "passwd", "up", "pipe"):
        assert any(name in note for note in notes), (name, notes)


# ----------------------------------------------------------------- the stream
def test_stream_shows_every_line_once(tproject: TargetProject) -> None:
    tproject.write("lines.py", LINES)
    result = tproject.submit("script=lines.py", "args=[25,0.02]", timeout=240)
    assert result.returncode == 0, result.stderr
    assert _numbered(result.stdout) == _lines(25)
    record = tproject.only_run()
    assert _numbered(tproject.log(record["id"])) == _lines(25)
    assert (tproject.outputs(record["id"]) / "done.txt").read_text() == "yes"


def test_detach_then_attach_twice_shows_every_line_once(tproject: TargetProject) -> None:
    """Detached, then followed by an attach that is killed half-way, then by another to the end."""
    tproject.write("lines.py", LINES)
    detached = tproject.submit("script=lines.py", "args=[40,0.1]", flags=("--detach",), timeout=240)
    assert detached.returncode == 0, detached.stderr
    run_id = detached.stdout.strip()  # --detach prints the id alone, for scripts
    assert len(run_id) == 8 and [r["id"] for r in tproject.runs()] == [run_id]
    first = tproject.popen("runs", "attach", run_id)
    seen = _numbered(_read_until(first, "line 5"))
    assert seen == _lines(len(seen))
    first.send_signal(signal.SIGKILL)  # not Ctrl-C: that would cancel the run
    first.communicate()
    attached = tproject.run("runs", "attach", run_id, timeout=240)
    assert attached.returncode == 0, attached.stderr
    assert _numbered(attached.stdout) == _lines(40)
    assert f"run {run_id} Completed" in attached.stderr
    assert _numbered(tproject.log(run_id)) == _lines(40)


def test_client_killed_then_attach_completes_with_the_full_log(tproject: TargetProject) -> None:
    tproject.write("lines.py", LINES)
    client = tproject.start("script=lines.py", "args=[30,0.1]")
    _read_until(client, "line 3")
    client.send_signal(signal.SIGKILL)
    client.communicate()
    (record,) = tproject.runs()
    assert record["status"] in ("Running", "Completed")  # the job outlived its client (and may have ended since)
    run_id = str(record["id"])
    attached = tproject.run("runs", "attach", run_id, timeout=240)
    assert attached.returncode == 0, attached.stderr
    assert f"run {run_id} Completed" in attached.stderr
    assert _numbered(tproject.log(run_id)) == _lines(30)
    assert (tproject.outputs(run_id) / "done.txt").read_text() == "yes"
    assert tproject.show(run_id)["status"] == "Completed"


# ----------------------------------------------------------------- cancel
def _start_stubborn(tproject: TargetProject, job: str, child: str, grace: float) -> tuple[str, str]:
    """A detached job (and its child) that ``ignores`` TERM or ``exits``/``dies`` on it, once it is running."""
    marker = f"conformance-{tproject.tag}"
    tproject.write("stubborn.py", STUBBORN)
    detached = tproject.submit("script=stubborn.py", f"args=[{marker},{job},{child}]", f"compute.cancel_grace={grace}",
                               flags=("--detach",), timeout=240)
    assert detached.returncode == 0, detached.stderr
    run_id = detached.stdout.strip()
    wait_for(lambda: "ready" in tproject.run("runs", "logs", run_id).stdout, timeout=120, every=0.25)
    assert f"{marker}-child" in tproject.target.processes(), tproject.run("runs", "logs", run_id).stdout
    return run_id, marker


def test_cancel_kills_a_job_that_ignores_term_after_the_grace(tproject: TargetProject) -> None:
    target = tproject.target
    run_id, marker = _start_stubborn(tproject, "ignores", "ignores", grace=1.0)
    cancel = tproject.run("runs", "cancel", run_id, timeout=120)
    assert cancel.returncode == 0 and f"run {run_id} Canceled" in cancel.stdout, cancel.stdout + cancel.stderr
    record = tproject.show(run_id)
    assert (record["status"], record["reason"]) == ("Canceled", "canceled by user")
    assert record["exit_code"] == target.expect("cancel_kill_exit_code", None)
    assert "got TERM" in tproject.log(run_id)  # TERM came first, and reached the job itself
    wait_for(lambda: marker not in target.processes(), timeout=10)  # then KILL: the job and its child are gone
    again = tproject.run("runs", "cancel", run_id, check=True)
    assert "already Canceled" in again.stdout


def test_cancel_ends_a_job_that_exits_on_term_without_waiting_for_the_grace(tproject: TargetProject) -> None:
    """A grace of 10 minutes, a cancel given 2: the job's own TERM handler ended it (a bound, not a timing)."""
    run_id, marker = _start_stubborn(tproject, "exits", "dies", grace=600)
    cancel = tproject.run("runs", "cancel", run_id, timeout=120)
    assert cancel.returncode == 0 and f"run {run_id} Canceled" in cancel.stdout, cancel.stdout + cancel.stderr
    record = tproject.show(run_id)
    assert (record["status"], record["exit_code"], record["reason"]) == ("Canceled", 143, "canceled by user")
    assert "got TERM" in tproject.log(run_id)
    wait_for(lambda: marker not in tproject.target.processes(), timeout=10)


def test_a_run_read_while_its_cancel_waits_out_the_grace_ends_canceled(tproject: TargetProject) -> None:
    """`runs cancel` in one terminal, `runs show` in another: the job exited on TERM but its child ignores it, so
    the cancel waits out the grace; the reader must not record the job's exit as a failure meanwhile."""
    target = tproject.target
    run_id, marker = _start_stubborn(tproject, "exits", "ignores", grace=600)
    cancel = tproject.popen("runs", "cancel", run_id)
    if target.expect("children_outlive_job", True):
        wait_for(lambda: "got TERM" in tproject.run("runs", "logs", run_id).stdout, timeout=60, every=0.25)
        assert f"{marker}-child" in target.processes()  # the child holds the cancel in its grace ...
        assert tproject.show(run_id)["status"] in ("Running", "Canceled")  # ... while someone reads the run
        target.kill(f"{marker}-child")  # the child gone, the cancel ends at once
    out, err = cancel.communicate(timeout=120)
    assert cancel.returncode == 0, err
    record = tproject.show(run_id)
    assert (record["status"], record["exit_code"], record["reason"]) == ("Canceled", 143, "canceled by user"), out
    wait_for(lambda: marker not in target.processes(), timeout=10)


# ----------------------------------------------------------------- why it failed
def test_failure_reason_is_the_scripts_last_error_line(tproject: TargetProject) -> None:
    tproject.write("bad.py", BAD)
    result = tproject.submit("script=bad.py", timeout=240)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert " Failed in " in last and last.endswith(": ValueError: bad value 3"), last
    record = tproject.only_run()
    assert (record["status"], record["exit_code"], record["reason"]) == ("Failed", 1, "ValueError: bad value 3")


# ----------------------------------------------------------------- the adapters themselves
def test_differences_are_declared_with_a_reason() -> None:
    """A target that differs names a known behaviour and says why; a new target cannot skip a test silently."""
    for adapter in TARGETS:
        assert adapter.name and adapter.name == adapter.name.lower()
        for behaviour, declared in adapter.differs.items():
            assert behaviour in BEHAVIOURS, (adapter.name, behaviour)
            assert len(declared.why) > 20, (adapter.name, behaviour)
    assert len({t.name for t in TARGETS}) == len(TARGETS)


def test_every_target_is_in_the_suite() -> None:
    """Each compute target mltrain ships (conf/compute/*.yaml) has an adapter here."""
    shipped = {p.stem for p in (Path(__file__).parents[2] / "conf" / "compute").glob("*.yaml")}
    assert shipped == {t.compute for t in TARGETS}
