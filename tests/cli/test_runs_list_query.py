"""``mltrain runs list`` with --where/--sort/--columns/--sweep, and --json/--csv, on a real history."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from mltrain.cli.main import main
from mltrain.store.db import Store, TrialRecord


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    root = tmp_path / ".mltrain"
    root.mkdir()
    monkeypatch.setenv("MLTRAIN_HOME", str(root))
    ids: dict[str, str] = {}
    with Store(root / "runs.db") as store:
        sweep = store.create_sweep(key="k", experiment="e", command={}, settings={"primary_metric": "acc",
                                   "goal": "max"}, planned=3, controller=None)
        ids["sweep"] = sweep.id
        for i, lr in enumerate((0.1, 0.01, 0.001)):
            run = store.create_run(experiment="e", script="train.py", source_dir="/p", compute="local",
                                   environment="user_managed", sweep_id=sweep.id,
                                   params={"lr": lr, "epochs": 3})
            store.transition(run.id, "Running")
            store.transition(run.id, "Completed")
            store.add_metrics(run.id, [("acc", 0.8 + i / 20, 3, 1.0), ("loss", 1.0 - i / 10, 3, 1.0)])
            ids[str(lr)] = run.id
            store.put_trial(TrialRecord(sweep.id, i, [f"params.lr={lr}"], f"f{i}", run.id))
        other = store.create_run(experiment="other", script="eval.py", source_dir="/p", compute="local",
                                 environment="user_managed")
        store.transition(other.id, "Failed", reason="boom")
        ids["other"] = other.id
    return ids


def _lines(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(["runs", "list", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_where_sort_columns(home: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    lines = _lines(capsys, "--where", "metrics.acc > 0.82 and params.lr < 0.05", "--sort", "metrics.acc:desc",
                   "--columns", "params.lr,metrics.acc")
    assert lines[0].split() == ["ID", "PARAMS.LR", "METRICS.ACC"]
    assert [line.split() for line in lines[1:]] == [[home["0.001"], "0.001", "0.9"], [home["0.01"], "0.01", "0.85"]]
    assert _lines(capsys, "--sort=-metrics.loss", "--columns", "metrics.loss", "--limit", "1")[1:] == [
        f"{home['0.1']}  1", "(first 1 of 4; --limit 0 shows all)"]
    assert _lines(capsys, "--experiment", "other", "--status", "Failed")[1].split()[:3] == [home["other"], "other",
                                                                                             "Failed"]


def test_a_sweeps_trials_show_the_primary_metric_and_differing_params(
        home: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    lines = _lines(capsys, "--sweep", home["sweep"][:4], "--sort", "params.lr")
    assert lines[0].split() == ["ID", "STATUS", "METRICS.ACC", "DURATION", "PARAMS.LR"]  # epochs is the same
    assert lines[1].split()[0::2] == [home["0.001"], "0.9", "0.001"]


def test_json_and_csv(home: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads("\n".join(_lines(capsys, "--json", "--where", "params.lr == 0.1")))
    assert [(d["id"], d["params"]["lr"], d["metrics"]["acc"]) for d in data] == [(home["0.1"], 0.1, 0.8)]
    rows = list(csv.reader(io.StringIO("\n".join(_lines(capsys, "--csv", "--columns", "params.lr,metrics.loss",
                                                         "--sort", "params.lr")))))
    assert rows[0] == ["id", "params.lr", "metrics.loss"]
    assert rows[1:] == [[home["0.001"], "0.001", "0.8"], [home["0.01"], "0.01", "0.9"], [home["0.1"], "0.1", "1.0"],
                        [home["other"], "", ""]]


def test_bad_where_is_one_line(home: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "list", "--where", "metrics.acc >> 1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "column 14" in err
    assert main(["runs", "list", "--columns", "params.lr,,x"]) == 2
    assert "empty column name at column 11" in capsys.readouterr().err


def test_every_listing_has_csv(home: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "metrics", home["0.1"], "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["name,step,value,time", "acc,3,0.8,1.0", "loss,3,1.0,1.0"]
    assert main(["sweeps", "list", "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:7] == ["id", "status", "created", "trials", "planned", "best_trial", "best_metric"]
    assert (rows[1][0], rows[1][3:7]) == (home["sweep"], ["3", "3", "2", "0.9"])
    assert main(["sweeps", "show", home["sweep"], "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["trial", "run", "status", "acc", "duration", "reused", "best", "params"]
    assert [row[1] for row in rows[1:] if row[6] == "True"] == [home["0.001"]]
