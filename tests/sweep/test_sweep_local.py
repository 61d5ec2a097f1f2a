"""``mltrain -m`` on the local target, through the real CLI: concurrency, the sweep record, failures,
validation before anything starts, reuse, detach/kill/resume, cancel, Ctrl-C, samplers, early termination."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from typing import Any

import pytest
from conftest import Project, assert_one_line_error, need_optuna, wait_for

pytestmark = pytest.mark.integration

SLEEPY = """
import json, os, sys, time
print("argv", json.dumps(sys.argv[1:]), flush=True)
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
time.sleep(float(os.environ.get("PAUSE", "0.4")))
print(f"::metric loss={args.get('--lr', '1')}", flush=True)
sys.exit(1 if args.get("--fail") == "yes" or int(args.get("--x", "0")) % 2 else 0)
"""

SLOW = """
import sys, time
for i in range(int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 6):
    print(f"::metric loss={1.0 / (i + 1)}", flush=True)
    time.sleep(0.3)
"""

CURVES = """
import sys, time
quality = float(sys.argv[sys.argv.index("--quality") + 1])
for i in range(12):
    print(f"::metric loss={quality + 1.0 / (i + 1)}", flush=True)
    time.sleep(0.15)
"""


def _sweeps(project: Project) -> list[dict[str, Any]]:
    return json.loads(project.run("sweeps", "list", "--json", "--limit", "0", check=True).stdout)  # type: ignore[no-any-return]


def _show(project: Project, sweep_id: str) -> dict[str, Any]:
    return json.loads(project.run("sweeps", "show", sweep_id, "--json", check=True).stdout)  # type: ignore[no-any-return]


def _runs_of(project: Project, sweep_id: str) -> list[dict[str, Any]]:
    return [r for r in project.runs() if r["sweep_id"] == sweep_id]



def _max_overlap(runs: list[dict[str, Any]]) -> int:
    events = sorted([(r["started"], 1) for r in runs] + [(r["ended"], -1) for r in runs], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_grid_sweep_runs_concurrently_within_the_limit(project: Project) -> None:
    project.write("sleepy.py", SLEEPY)
    result = project.run("-m", "script=sleepy.py", "params.lr=0.3,0.1,0.2", "params.batch=32,64",
                         "sweep.max_concurrent=2", "sweep.primary_metric=loss", check=True)
    sweep = _sweeps(project)[0]
    assert f"sweep {sweep['id']}  Completed" in result.stdout and "* best by loss (min)" in result.stdout
    data = _show(project, sweep["id"])
    trials = data["trials"]
    assert [t["params"] for t in trials][:2] == [["params.lr=0.3", "params.batch=32"],
                                                 ["params.lr=0.3", "params.batch=64"]]
    assert all(t["status"] == "Completed" for t in trials) and len(trials) == 6
    assert data["best_trial"] == 2 and trials[2]["metric"] == pytest.approx(0.1) and trials[2]["best"]
    runs = _runs_of(project, sweep["id"])
    assert len(runs) == 6 and {r["id"] for r in runs} == {t["run_id"] for t in trials}
    assert _max_overlap(runs) == 2  # concurrent, never above the limit
    log = (project.workspace / "runs" / trials[1]["run_id"] / "output.log").read_text()
    assert 'argv ["--lr", "0.3", "--batch", "64"]' in log
    folder = project.workspace / "sweeps" / sweep["id"]  # the sweep id names Hydra's sweep dir
    assert (folder / "multirun.yaml").exists() and (folder / "controller.log").exists()
    listing = project.run("sweeps", "list", check=True).stdout
    assert sweep["id"] in listing and "6/6" in listing and "loss=0.1" in listing
    table = project.run("sweeps", "show", sweep["id"][:5], check=True).stdout
    assert "TRIAL" in table and "params.lr=0.1 params.batch=32" in table


def test_hydra_args_style_and_a_failed_trial_does_not_stop_the_sweep(project: Project) -> None:
    project.write("sleepy.py", SLEEPY)
    result = project.run("-m", "script=sleepy.py", "framework.args_style=hydra", "params.lr=0.5,0.25",
                         "sweep.max_concurrent=2", env={"PAUSE": "0"})
    runs = _runs_of(project, _sweeps(project)[0]["id"])
    logs = [(project.workspace / "runs" / r["id"] / "output.log").read_text() for r in runs]
    kept = '"hydra.run.dir=${oc.env:MLTRAIN_OUTPUT_DIR}/hydra"'  # a Hydra app's .hydra/ and log come back
    assert any(f'argv ["lr=0.5", {kept}]' in log for log in logs)
    assert any(f'argv ["lr=0.25", {kept}]' in log for log in logs)
    assert result.returncode == 0

    result = project.run("-m", "script=sleepy.py", "params.x=1,2,4", "sweep.max_concurrent=1", env={"PAUSE": "0"})
    assert result.returncode == 1, result.stderr
    trials = _show(project, _sweeps(project)[0]["id"])["trials"]
    assert [t["status"] for t in trials] == ["Failed", "Completed", "Completed"]
    assert "Failed" in result.stdout and "trial 0 Failed" in result.stderr


def test_max_failures_starts_no_more_trials(project: Project) -> None:
    project.write("sleepy.py", SLEEPY)
    result = project.run("-m", "script=sleepy.py", "params.x=1,2,3,4,5", "sweep.max_concurrent=1",
                         "sweep.max_failures=2", env={"PAUSE": "0"})
    assert result.returncode == 1
    data = _show(project, _sweeps(project)[0]["id"])
    assert [t["status"] for t in data["trials"]] == ["Failed", "Completed", "Failed"]
    assert data["status"] == "Failed" and "sweep.max_failures=2" in data["reason"]


def test_every_trial_is_validated_before_the_first_starts(project: Project) -> None:
    project.write("sleepy.py", SLEEPY)
    result = project.run("-m", "script=sleepy.py", "params.lr=0.1,0.2", "compute.cancel_grace=5,soon")
    assert_one_line_error(result, "compute.cancel_grace=soon", "cancel_grace")
    assert_one_line_error(project.run("-m", "script=missing.py", "params.lr=0.1,0.2"), "missing.py not found")
    assert_one_line_error(project.run("-m", "script=sleepy.py", "params.lr=0.1,0.2", "hydra.job.chdir=true"),
                          "hydra.job.chdir=true")
    db = project.workspace / "runs.db"
    assert not db.exists() or sqlite3.connect(db).execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def test_running_the_same_sweep_again_reuses_completed_trials(project: Project) -> None:
    project.write("sleepy.py", SLEEPY)
    args = ("-m", "script=sleepy.py", "params.lr=0.1,0.2", "sweep.primary_metric=loss")
    project.run(*args, check=True, env={"PAUSE": "0"})
    again = project.run(*args, check=True, env={"PAUSE": "0"})
    assert again.stderr.count("already completed") == 2
    assert len(project.runs()) == 2
    second = _show(project, _sweeps(project)[0]["id"])
    assert [t["reused"] for t in second["trials"]] == [True, True] and second["best_trial"] == 0
    project.write("sleepy.py", SLEEPY + "\n# changed\n")  # a new snapshot: a new fingerprint
    project.run(*args, check=True, env={"PAUSE": "0"})
    assert len(project.runs()) == 4


def test_detach_kill_the_controller_then_resume(project: Project) -> None:
    project.write("slow.py", SLOW)
    args = ("-m", "script=slow.py", "params.steps=5,6,7,8", "sweep.max_concurrent=2")
    detached = project.run("--detach", *args, check=True)
    sweep_id = detached.stdout.strip()
    assert _sweeps(project)[0]["id"] == sweep_id
    wait_for(lambda: sum(t["status"] == "Running" for t in _show(project, sweep_id)["trials"]) == 2)
    controller = _show(project, sweep_id)["controller"]
    os.kill(controller["pid"], signal.SIGKILL)
    wait_for(lambda: _sweeps(project)[0]["status"] == "Interrupted")
    resumed = project.run(*args, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"sweep {sweep_id} resumed" in resumed.stderr
    data = _show(project, sweep_id)
    assert data["status"] == "Completed" and len(data["trials"]) == 4
    assert all(t["status"] == "Completed" for t in data["trials"])
    assert len(_runs_of(project, sweep_id)) == 4  # the trials that were running were followed, not run again


def test_cancel_and_attach(project: Project) -> None:
    project.write("slow.py", SLOW)
    sweep_id = project.run("--detach", "-m", "script=slow.py", "params.steps=20,21,22",
                           "sweep.max_concurrent=1", check=True).stdout.strip()
    wait_for(lambda: any(t["status"] == "Running" for t in _show(project, sweep_id)["trials"]))
    result = project.run("sweeps", "cancel", sweep_id, check=True)
    assert f"sweep {sweep_id} Canceled" in result.stdout
    data = _show(project, sweep_id)
    assert [t["status"] for t in data["trials"]] == ["Canceled"]  # the rest never started
    assert project.run("sweeps", "attach", sweep_id).returncode == 130

    quick = project.run("--detach", "-m", "script=slow.py", "params.steps=1,2", check=True).stdout.strip()
    attached = project.run("sweeps", "attach", quick, check=True)
    assert f"sweep {quick} Completed" in attached.stdout


def test_ctrl_c_cancels_the_running_trials(project: Project) -> None:
    project.write("slow.py", SLOW)
    process = project.popen("-m", "script=slow.py", "params.steps=30,31,32", "sweep.max_concurrent=2")
    db = project.workspace / "runs.db"

    def running() -> bool:
        if not db.exists():
            return False
        conn = sqlite3.connect(db)
        try:
            count = conn.execute("SELECT count(*) FROM runs WHERE status = 'Running'").fetchone()[0]
        except sqlite3.OperationalError:  # the file is there, its tables not yet
            return False
        finally:
            conn.close()
        return bool(count == 2)

    wait_for(running)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    data = _show(project, _sweeps(project)[0]["id"])
    assert data["status"] == "Canceled" and [t["status"] for t in data["trials"]] == ["Canceled", "Canceled"]
    assert "canceled by user (Ctrl-C)" in out


def test_random_and_tpe(project: Project) -> None:
    project.write("sleepy.py", SLEEPY)
    project.run("-m", "script=sleepy.py", "params.lr=tag(log,interval(1e-3,1e-1))", "params.opt=adam,sgd",
                "sweep.sampler=random", "sweep.n_trials=3", "sweep.seed=5", check=True, env={"PAUSE": "0"})
    trials = _show(project, _sweeps(project)[0]["id"])["trials"]
    values = [float(t["params"][0].split("=")[1]) for t in trials]
    assert len(trials) == 3 and all(1e-3 <= v <= 0.1 for v in values) and len(set(values)) == 3
    need_optuna()
    project.run("-m", "script=sleepy.py", "params.lr=interval(0,1)", "sweep.sampler=tpe", "sweep.n_trials=6",
                "sweep.primary_metric=loss", "sweep.max_concurrent=2", check=True, env={"PAUSE": "0"})
    data = _show(project, _sweeps(project)[0]["id"])
    assert data["settings"]["sampler"] == "tpe" and len(data["trials"]) == 6
    assert data["best_trial"] is not None


def test_early_termination_stops_the_bad_trials(project: Project) -> None:
    project.write("curves.py", CURVES)
    result = project.run("-m", "script=curves.py", "params.quality=0,0.01,5,6", "sweep.max_concurrent=4",
                         "sweep.primary_metric=loss", "sweep.early_termination.policy=bandit",
                         "sweep.early_termination.slack_factor=0.5", "sweep.early_termination.delay_evaluation=3",
                         "sweep.early_termination.min_trials=2", check=True)
    data = _show(project, _sweeps(project)[0]["id"])
    status = {t["params"][0]: (t["status"], t["reason"]) for t in data["trials"]}
    assert status["params.quality=0"] == ("Completed", None)
    assert status["params.quality=0.01"] == ("Completed", None)
    assert status["params.quality=5"] == ("Canceled", "early termination")
    assert status["params.quality=6"] == ("Canceled", "early termination")
    assert data["status"] == "Completed" and "stopped early: bandit" in result.stderr
    stopped = next(t for t in data["trials"] if t["params"] == ["params.quality=5"])
    assert stopped["duration"] < 1.5  # a full curve takes 1.8 s


def test_a_trial_stopped_early_is_reused_like_a_completed_one(project: Project) -> None:
    project.write("curves.py", CURVES)
    args = ("-m", "script=curves.py", "params.quality=0,0.01,5,6", "sweep.max_concurrent=4",
            "sweep.primary_metric=loss")
    policy = ("sweep.early_termination.policy=bandit", "sweep.early_termination.slack_factor=0.5",
              "sweep.early_termination.delay_evaluation=3", "sweep.early_termination.min_trials=2")
    project.run(*args, *policy, check=True)
    first = _show(project, _sweeps(project)[0]["id"])
    stopped = [t["params"] for t in first["trials"] if t["reason"] == "early termination"]
    assert stopped  # (the test above pins which)
    again = project.run(*args, *policy, check=True)
    assert again.stderr.count("already stopped early as run") == len(stopped)
    assert again.stderr.count("already completed as run") == 4 - len(stopped)
    assert len(project.runs()) == 4  # nothing ran again
    second = _show(project, _sweeps(project)[0]["id"])
    assert second["id"] != first["id"] and second["status"] == "Completed"
    assert all(t["reused"] for t in second["trials"]) and second["best_trial"] == first["best_trial"]
    # Without the policy that stopped them, they run to the end this time
    project.run(*args, check=True)
    assert len(project.runs()) == 4 + len(stopped)


GATED = """
import os, sys, time
gate = sys.argv[sys.argv.index("--gate") + 1]
while not os.path.exists(gate):  # held open until the test lets it end (no race with the resuming controller)
    time.sleep(0.05)
print("::metric loss=1.0", flush=True)
"""


def test_attach_resumes_a_sweep_whose_controller_died(project: Project) -> None:
    project.write("gated.py", GATED)
    gate = project.root / "gate"
    sweep_id = project.run("--detach", "-m", "script=gated.py", f"params.gate={gate}", "params.n=1,2",
                           "sweep.max_concurrent=1", check=True).stdout.strip()
    wait_for(lambda: any(t["status"] == "Running" for t in _show(project, sweep_id)["trials"]))
    os.kill(_show(project, sweep_id)["controller"]["pid"], signal.SIGKILL)
    attach = project.popen("sweeps", "attach", sweep_id)
    log = project.workspace / "sweeps" / sweep_id / "controller.log"
    wait_for(lambda: log.exists() and "still running as run" in log.read_text())
    gate.touch()
    out, err = attach.communicate(timeout=120)
    attached = subprocess.CompletedProcess(attach.args, attach.returncode, out, err)
    assert attached.returncode == 0, attached.stderr
    assert "resuming it" in attached.stderr and f"sweep {sweep_id} Completed" in attached.stdout
    assert "still running as run" in attached.stdout  # the trial the dead controller started was followed
    assert [t["status"] for t in _show(project, sweep_id)["trials"]] == ["Completed", "Completed"]
    assert len(_runs_of(project, sweep_id)) == 2


def test_each_trial_gets_its_own_output_folder_from_the_sweep_subdir(project: Project) -> None:
    """The trial's folder is hydra.sweep.dir/subdir joined for that trial (mltrain joins the job's own
    ${hydra.job.num}/${hydra.job.override_dirname} itself, without OmegaConf: see hydra_compat.SweepDirs)."""
    project.write("noop.py", "pass\n")
    project.run("-m", "script=noop.py", "params.a=1,2", "experiment=plain", check=True)
    project.run("-m", "script=noop.py", "params.a=1,2", "params.b=x", "experiment=named",
                "hydra.sweep.subdir=t${hydra.job.num}_${hydra.job.override_dirname}", check=True)
    by_experiment = {s["experiment"]: s["id"] for s in _sweeps(project)}

    def folders(experiment: str) -> set[str]:
        folder = project.workspace / "sweeps" / by_experiment[experiment]
        return {p.name for p in folder.iterdir() if p.is_dir()}

    assert folders("plain") == {"0", "1"}
    assert folders("named") == {f"t{n}_experiment=named,params.a={n + 1},params.b=x,script=noop.py" for n in (0, 1)}
