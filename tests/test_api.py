"""The Python API composes exactly as the CLI does (the seed's experiment.submit / wait_for_completion)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Project

import mltrain
from mltrain.errors import ConfigError, RunFailed, UsageError


def test_submit_wait_get(in_project: Project, capfd: pytest.CaptureFixture[str]) -> None:
    run = mltrain.submit(["script=train.py", "params.epochs=1"])
    record = run.wait(show_output=True)
    assert record.status == "Completed"
    assert "argv" in capfd.readouterr().out
    again = mltrain.Run.get(run.id)
    assert again.status == "Completed"
    assert "argv" in again.logs()
    assert again.metrics()[0][0] == "loss"


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
