"""The plan drives execution: ``execute`` carries out the compiled plan's stages, in its order, and records
each in plan.json; a caller hands in the stages it satisfied (a sweep's snapshot, a rerun's stored one);
``mltrain plan`` prints the plan a submit then executes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Project

STAGES = ["SNAPSHOT", "ENVIRONMENT", "STAGE_CODE", "LAUNCH", "MONITOR", "COLLECT", "FINALIZE"]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]


def _spec(*overrides: str) -> Any:
    from mltrain.config.compose import compose_validated
    from mltrain.config.spec import RunSpec

    cfg, job_yaml = compose_validated(overrides, None)
    return RunSpec.from_config(cfg, job_yaml, list(overrides))


def _stored_plan(project: Project, run_id: str) -> dict[str, Any]:
    return json.loads((project.workspace / "runs" / run_id / "plan.json").read_text())  # type: ignore[no-any-return]


def _stages(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in plan["stages"]}


def _git(project: Project, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=project.root, check=True, capture_output=True, text=True).stdout


def test_execute_carries_out_the_plans_stages_in_order_and_records_each(in_project: Project) -> None:
    from mltrain.plan.compile import compile
    from mltrain.plan.execute import execute
    from mltrain.plan.stages import Stage

    assert [s.value for s in Stage] == STAGES
    run = execute(compile(_spec("script=train.py", "params.lr=0.1")))
    record = run.wait()
    assert record.status == "Completed"
    stored = _stored_plan(in_project, run.id)
    assert [s["name"] for s in stored["stages"]] == STAGES
    states = {s["name"]: s["state"] for s in stored["stages"]}
    assert states == {"SNAPSHOT": "done", "ENVIRONMENT": "cached", "STAGE_CODE": "done", "LAUNCH": "done",
                      "MONITOR": "later", "COLLECT": "later", "FINALIZE": "later"}
    stages = _stages(stored)
    for name in STAGES[:4]:
        assert isinstance(stages[name]["seconds"], float), name
    assert stages["SNAPSHOT"]["fingerprint"] == stages["STAGE_CODE"]["fingerprint"] == record.snapshot_id
    assert stages["ENVIRONMENT"]["fingerprint"] == record.env_fingerprint
    assert stages["LAUNCH"]["details"]["argv"][1:] == ["train.py", "--lr", "0.1"]


def test_execute_follows_the_plan_it_is_given_not_a_fixed_sequence(in_project: Project) -> None:
    """A plan of the first four stages is carried out as those four: the loop is over the plan's stages."""
    from mltrain.plan.compile import compile
    from mltrain.plan.execute import execute

    plan = compile(_spec("script=train.py"))
    short = dataclasses.replace(plan, stages=plan.stages[:4])
    run = execute(short)
    assert run.wait().status == "Completed"
    assert [s["name"] for s in _stored_plan(in_project, run.id)["stages"]] == STAGES[:4]


def test_a_failing_stage_is_recorded_and_the_later_ones_stay_pending(project: Project) -> None:
    result = project.run("script=train.py", "environment.interpreter=/nonexistent/bin/python")
    assert result.returncode != 0
    (record,) = project.runs()
    assert record["status"] == "Failed"
    stages = _stages(_stored_plan(project, str(record["id"])))
    assert [stages[n]["state"] for n in STAGES] == ["done", "failed", *["pending"] * 5]


def test_a_given_snapshot_is_not_taken_again(in_project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot handed in is run as it was: the tree, the stat cache and git are not consulted again."""
    import mltrain.snapshot.git
    import mltrain.snapshot.take
    from mltrain.plan.compile import compile
    from mltrain.plan.execute import execute
    from mltrain.plan.stages import SnapshotRef, Stage
    from mltrain.snapshot.cache import StatCache

    in_project.write("say.py", "print('version one')\n")
    first = execute(compile(_spec("script=say.py")))
    first_record = first.wait()
    in_project.write("say.py", "print('version two')\n")

    def consulted(*args: object, **kwargs: object) -> Any:
        raise AssertionError("a given snapshot was taken again")

    monkeypatch.setattr(mltrain.snapshot.take, "take_snapshot", consulted)
    monkeypatch.setattr(StatCache, "load", consulted)
    monkeypatch.setattr(mltrain.snapshot.git, "capture", consulted)
    given = {Stage.SNAPSHOT: SnapshotRef(str(first_record.snapshot_id), {"is_repo": False, "note": "handed in"})}
    second = execute(compile(_spec("script=say.py")), given=given)
    record = second.wait()
    assert record.status == "Completed"
    assert "version one" in second.logs() and "version two" not in second.logs()
    assert record.snapshot_id == first_record.snapshot_id
    assert record.git == {"is_repo": False, "note": "handed in"}
    snapshot = _stages(_stored_plan(in_project, second.id))["SNAPSHOT"]
    assert (snapshot["state"], snapshot["fingerprint"]) == ("given", first_record.snapshot_id)


def test_only_the_snapshot_can_be_given(in_project: Project) -> None:
    from mltrain.plan.compile import compile
    from mltrain.plan.execute import execute
    from mltrain.plan.stages import Stage

    with pytest.raises(ValueError, match="can be given"):
        execute(compile(_spec("script=train.py")), given={Stage.ENVIRONMENT: object()})
    assert not (in_project.workspace / "runs").exists() or not any((in_project.workspace / "runs").iterdir())


def test_a_sweeps_trials_are_given_its_snapshot(project: Project) -> None:
    _git(project, "init", "-q")
    _git(project, "add", "train.py")
    _git(project, "commit", "-qm", "first")
    project.write("train.py", (project.root / "train.py").read_text() + "# uncommitted\n")
    project.run("-m", "script=train.py", "params.lr=0.1,0.2", check=True)
    runs = project.runs()
    assert len(runs) == 2
    snapshots = set()
    for record in runs:
        stage = _stages(_stored_plan(project, str(record["id"])))["SNAPSHOT"]
        assert stage["state"] == "given"
        snapshots.add(stage["fingerprint"])
        assert "# uncommitted" in (project.workspace / "runs" / str(record["id"]) / "git.patch").read_text()
    assert len(snapshots) == 1


def test_rerun_is_given_the_stored_snapshot_git_state_and_patch(project: Project) -> None:
    _git(project, "init", "-q")
    project.write("say.py", "print('version one')\n")
    _git(project, "add", "say.py")
    _git(project, "commit", "-qm", "first")
    project.write("say.py", "print('version one, edited')\n")  # uncommitted when the first run is made
    project.run("script=say.py", check=True)
    parent = project.runs()[0]
    parent_id = str(parent["id"])
    project.write("say.py", "print('version two')\n")
    _git(project, "commit", "-qam", "second")
    rerun = project.run("runs", "rerun", parent_id, check=True)
    assert "version one, edited" in rerun.stdout and "version two" not in rerun.stdout
    child = project.runs()[0]
    child_id = str(child["id"])
    assert child["parent_id"] == parent_id and child["snapshot_id"] == parent["snapshot_id"]
    shown = [json.loads(project.run("runs", "show", i, "--json", check=True).stdout) for i in (parent_id, child_id)]
    assert shown[1]["git"] == shown[0]["git"]
    snapshot = _stages(_stored_plan(project, child_id))["SNAPSHOT"]
    assert (snapshot["state"], snapshot["fingerprint"]) == ("given", parent["snapshot_id"])
    runs = project.workspace / "runs"
    assert (runs / child_id / "git.patch").read_bytes() == (runs / parent_id / "git.patch").read_bytes()


def test_mltrain_plan_prints_the_plan_a_submit_executes(project: Project) -> None:
    overrides = ("script=train.py", "params.lr=0.1", "+env_vars.SEED=3")
    printed = json.loads(project.run("plan", "--json", *overrides, check=True).stdout)
    project.run(*overrides, check=True)
    stored = _stored_plan(project, str(project.runs()[0]["id"]))
    assert [s["name"] for s in printed["stages"]] == [s["name"] for s in stored["stages"]] == STAGES
    assert (printed["target"], printed["environment"]) == (stored["target"], stored["environment"])
    before, after = _stages(printed), _stages(stored)
    for name in ("SNAPSHOT", "ENVIRONMENT"):
        assert before[name]["fingerprint"] == after[name]["fingerprint"], name
    for name in STAGES:
        assert before[name]["inputs"] == after[name]["inputs"], name
    assert before["LAUNCH"]["details"]["argv"][1:] == after["LAUNCH"]["details"]["argv"][1:]


def test_compile_is_pure(in_project: Project, tmp_path: Path) -> None:
    """Compiling needs no file system and no network: a source folder that does not exist and an SSH host
    that cannot be reached compile all the same. The plan round-trips through JSON."""
    from mltrain.config.compose import compose_validated
    from mltrain.config.spec import RunSpec
    from mltrain.plan.compile import compile
    from mltrain.plan.stages import Plan, Stage

    overrides = ["script=train.py", f"source_dir={tmp_path / 'nowhere'}", "compute=ssh",
                 "compute.host=unreachable.invalid", "params.lr=0.1"]
    cfg, job_yaml = compose_validated(overrides, None)
    plan = compile(RunSpec.from_config(cfg, job_yaml, overrides))
    assert [s.name for s in plan.stages] == STAGES
    assert all(s.state == "pending" and s.fingerprint is None for s in plan.stages)
    assert plan.stage(Stage.SNAPSHOT).inputs["source_dir"] == str(tmp_path / "nowhere")
    assert plan.stage(Stage.LAUNCH).inputs["script_argv"] == ["train.py", "--lr", "0.1"]
    assert (plan.target, plan.environment) == ("ssh", "user_managed")
    assert Plan.from_dict(json.loads(plan.to_json())) == plan
    assert not (tmp_path / "nowhere").exists()


def test_a_secret_never_shows_in_the_printed_plan(project: Project) -> None:
    secret = "plan-s3cret-value"
    args = ("script=train.py", "+params.key=${oc.env:PLAN_KEY}")
    for flags in (("plan",), ("plan", "--json")):
        shown = project.run(*flags, *args, env={"PLAN_KEY": secret}, check=True).stdout
        assert secret not in shown and "***" in shown


SLOW_WITH_PID = """
import os, time
open({pidfile!r}, "w").write(str(os.getpid()))
time.sleep(60)
"""


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


@pytest.mark.parametrize("where", ["before the launch", "as the job starts", "as the run is handed back"])
def test_ctrl_c_anywhere_in_a_submit_cancels_the_run_and_stops_its_job(
        in_project: Project, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A Ctrl-C is a signal, so it lands at any instant. Injected here at three (a real one at these exact
    instants cannot be aimed): the run ends Canceled, saying Ctrl-C, and no job it started outlives it."""
    import time

    import mltrain.plan.execute as execute_module
    from mltrain.plan.compile import compile
    pidfile = in_project.root.parent / "started.pid"  # outside the snapshot: the job writes it by this path
    in_project.write("slow.py", SLOW_WITH_PID.format(pidfile=str(pidfile)))

    def ctrl_c(*args: object, **kwargs: object) -> Any:
        if where != "before the launch":  # the user saw the job start, then pressed Ctrl-C
            deadline = time.monotonic() + 30
            while not pidfile.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        raise KeyboardInterrupt

    if where == "before the launch":
        monkeypatch.setitem(execute_module._DO, execute_module.Stage.STAGE_CODE, ctrl_c)
    elif where == "as the job starts":  # launched, not yet recorded Running
        monkeypatch.setattr(execute_module, "_hardware", ctrl_c)
    else:  # every stage done, the history closed: as execute hands back the run
        monkeypatch.setattr(execute_module, "Run", ctrl_c)

    with pytest.raises(KeyboardInterrupt):
        execute_module.execute(compile(_spec("script=slow.py", "compute.cancel_grace=2")))
    (record,) = in_project.runs()
    assert record["status"] == "Canceled", record
    assert "Ctrl-C" in str(record["reason"])
    if where == "before the launch":
        assert not pidfile.exists()
    else:
        assert _stopped(int(pidfile.read_text()))
