"""The Python API composes exactly as the CLI does (the seed's experiment.submit / wait_for_completion)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIT, Project

import mltrain
from mltrain.errors import ConfigError, MltrainError, RunFailed, UsageError


def test_submit_wait_get(in_project: Project, capfd: pytest.CaptureFixture[str]) -> None:
    run = mltrain.submit(["script=train.py", "params.epochs=1"])
    record = run.wait(show_output=True)
    assert record.status == "Completed"
    assert "argv" in capfd.readouterr().out
    again = mltrain.Run.get(run.id)
    assert again.status == "Completed"
    assert "argv" in again.logs()
    assert list(again.metrics()) == ["loss"]


def test_submit_compose_errors_are_mltrain_errors(in_project: Project) -> None:
    with pytest.raises(ConfigError, match="unknown compute option"):
        mltrain.submit(["script=train.py", "compute=nowhere"])


def test_wait_raise_on_failure(in_project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXIT_WITH", "2")
    run = mltrain.submit(["script=train.py"])
    with pytest.raises(RunFailed, match="exited with code 2"):
        run.wait(raise_on_failure=True)


def test_cancel_from_api(in_project: Project, tmp_path: Path) -> None:
    in_project.write("sleepy.py", "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    run = mltrain.submit(["script=sleepy.py", "compute.cancel_grace=1"])
    record = run.cancel()
    assert record.status == "Canceled"
    assert mltrain.Run.get(run.id).status == "Canceled"


def test_log_metric_without_mltrain_file(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLTRAIN_METRICS_FILE", raising=False)
    mltrain.log_metric("acc", 0.9, step=2)
    assert capsys.readouterr().out.strip() == "::metric acc=0.9 step=2"


def test_submit_with_an_idempotency_key(in_project: Project) -> None:
    first = mltrain.submit(["script=train.py", "params.lr=0.1"], idempotency_key="nightly-1")
    assert first.existing is False
    again = mltrain.submit(["script=train.py", "params.lr=0.1"], idempotency_key="nightly-1")
    assert (again.id, again.existing) == (first.id, True)
    assert again.wait().status == "Completed"
    assert first.wait().status == "Completed"
    with pytest.raises(UsageError, match="other overrides"):
        mltrain.submit(["script=train.py", "params.lr=0.2"], idempotency_key="nightly-1")
    other = mltrain.submit(["script=train.py"], idempotency_key="nightly-2")
    assert other.id != first.id
    assert other.wait().status == "Completed"




def test_keyword_submit_and_what_a_run_gives_back(in_project: Project, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    in_project.write("fit.py", FIT)
    run = mltrain.submit(script="fit.py", params={"lr": 0.5, "opt": {"name": "it's 1.0"}}, detach=False,
                         compute={"cancel_grace": 2})
    assert isinstance(run, mltrain.Run) and run.status == "Completed"
    assert run.params == {"lr": 0.5, "opt.name": "it's 1.0"}
    assert run.config["params"] == {"lr": 0.5, "opt": {"name": "it's 1.0"}}
    assert run.config["compute"]["cancel_grace"] == 2
    metrics = run.metrics()
    assert [(step, value) for step, value, _ in metrics["acc"]] == [(0, 0.5), (1, 1.0), (2, 1.5), (3, 2.0)]
    assert all(isinstance(when, float) for _, _, when in metrics["acc"])
    assert metrics["loss"] == [(3, 0.5, None)]  # a stdout line has no timestamp
    frame = run.metrics_frame()
    assert list(frame.columns) == ["name", "step", "value", "time"] and len(frame) == 5
    assert run.outputs() == ["model.txt"]
    assert run.outputs(download_to=tmp_path / "got") == ["model.txt"]
    assert "--opt.name" in (tmp_path / "got" / "model.txt").read_text()
    assert "::metric loss" in run.logs(follow=True)

    again = run.rerun(params={"lr": 0.25}, detach=False)
    assert again.record.parent_id == run.id and again.params["lr"] == 0.25
    assert again.metrics()["acc"][-1][1] == 1.0

    assert [r.id for r in mltrain.runs(where="metrics.acc > 1", sort="metrics.acc:desc")] == [run.id]
    assert [r.id for r in mltrain.runs(sort="metrics.acc")] == [again.id, run.id]
    assert mltrain.runs(status="Failed") == []


def test_keyword_values_stay_what_they_were() -> None:
    from mltrain.api import to_overrides

    assert to_overrides(script="t.py", params={"lr": 0.1, "tag": "0.1", "on": True, "n": None, "xs": [1, "a"]},
                        compute="docker", args=["--x", "1"]) == [
        "script='t.py'", "params.lr=0.1", "params.tag='0.1'", "params.on=true", "params.n=null",
        "params.xs=[1,'a']", "compute=docker", "args=['--x','1']"]
    with pytest.raises(UsageError, match="not an option name"):
        to_overrides(compute="docker; rm -rf /")
    with pytest.raises(UsageError, match="list of strings"):
        mltrain.submit("script=train.py")  # type: ignore[arg-type]


def test_sweeps_trials_best(in_project: Project) -> None:
    in_project.write("fit.py", FIT)
    result = in_project.run("-m", "script=fit.py", "params.lr=0.1,0.3,0.2", "sweep.primary_metric=acc",
                            "sweep.goal=max", check=True)
    assert result.returncode == 0
    sweeps = mltrain.sweeps()
    assert len(sweeps) == 1
    sweep = sweeps[0]
    assert sweep.status == "Completed" and sweep.settings["primary_metric"] == "acc"
    trials = sweep.trials()
    assert sorted(t.params["lr"] for t in trials) == [0.1, 0.2, 0.3]
    best = sweep.best()
    assert best is not None and best.params["lr"] == 0.3
    assert {r.id for r in mltrain.runs(sweep=sweep.id[:5])} == {t.id for t in trials}
    assert mltrain.Sweep.get(sweep.id).id == sweep.id
    with pytest.raises(MltrainError, match="sweep report"):
        sweep.report("report.html")


def test_a_secret_param_is_kept_as_stars(in_project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_TOKEN", "s3cr3t-value")
    run = mltrain.submit(["script=train.py", "params.token=${oc.env:MY_TOKEN}", "params.lr=0.1"], detach=False)
    assert run.status == "Completed" and "s3cr3t-value" not in run.logs()
    assert run.params == {"token": "***", "lr": 0.1}
    assert [r.id for r in mltrain.runs(where="params.token == '***'")] == [run.id]
