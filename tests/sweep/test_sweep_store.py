"""The run history's sweep tables: the migration from schema 1, and the sweep and trial records."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mltrain.errors import SweepNotFound
from mltrain.store import db as store_module
from mltrain.store.db import COMPLETED, FAILED, RUNNING, Store, TrialRecord


def _schema_1_history(path: Path) -> None:
    """A run history exactly as schema-1 mltrain wrote it, with one finished run."""
    db = sqlite3.connect(path, isolation_level=None)
    for statement in store_module._SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT INTO runs (id, experiment, status, created, script, source_dir, compute, environment,"
               " overrides, sweep_id) VALUES ('abcd1234', 'exp', 'Completed', 1.0, 'train.py', '/p', 'local',"
               " 'user_managed', '[\"params.lr=0.1\"]', NULL)")
    db.execute("INSERT INTO metrics VALUES ('abcd1234', 'loss', 1, 0.5, 2.0)")
    db.execute("PRAGMA user_version = 1")
    db.close()


def test_schema_1_history_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    _schema_1_history(path)
    with Store(path, create=False) as store:
        assert store.get("abcd").status == COMPLETED
        assert store.metrics("abcd1234") == [("loss", 1, 0.5, 2.0)]
        assert store.find_sweeps() == []
        sweep = store.create_sweep(key="k", experiment="exp", command={"args": []}, settings={}, planned=1,
                                   controller=None)
        store.put_trial(TrialRecord(sweep.id, 0, ["params.lr=0.1"], "f" * 64, "abcd1234"))
        assert store.completed_run_with("f" * 64) == "abcd1234"
        assert store.integrity_check() == "ok"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION
    with Store(path, create=False) as again:  # a second open changes nothing
        assert [s.id for s in again.find_sweeps()] == [sweep.id]


def test_a_newer_history_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(Exception, match="newer mltrain"):
        Store(path)


def test_sweep_records(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        first = store.create_sweep(key="k1", experiment="e", command={"args": ["a=1"]},
                                   settings={"goal": "max"}, planned=3, controller={"pid": 1, "start_time": "9"})
        second = store.create_sweep(key="k1", experiment="e", command={}, settings={}, planned=None, controller=None)
        assert first.status == RUNNING and first.settings == {"goal": "max"} and first.controller == {
            "pid": 1, "start_time": "9"}
        assert [s.id for s in store.find_sweeps(key="k1")] == [second.id, first.id]
        assert store.get_sweep(first.id[:6]).id == first.id
        with pytest.raises(SweepNotFound):
            store.get_sweep("zzzz")
        store.update_sweep(first.id, cancel_requested=1)
        assert store.get_sweep(first.id).cancel_requested
        assert store.finish_sweep(first.id, FAILED, "2 trials failed")
        assert not store.finish_sweep(first.id, COMPLETED)  # ended already
        assert store.get_sweep(first.id).reason == "2 trials failed"

        run = store.create_run(experiment="e", script="s.py", source_dir="/p", compute="local",
                               environment="user_managed", sweep_id=first.id)
        store.put_trial(TrialRecord(first.id, 0, ["x=1"], "fp", run.id))
        store.put_trial(TrialRecord(first.id, 1, ["x=2"], "fp2", None, error="no such environment"))
        assert store.completed_run_with("fp") is None  # not Completed (yet)
        store.transition(run.id, RUNNING)
        store.transition(run.id, COMPLETED)
        assert store.completed_run_with("fp") == run.id
        store.delete_runs([run.id])
        trials = store.trials(first.id)
        assert [(t.idx, t.run_id, t.error) for t in trials] == [(0, None, "run deleted"),
                                                                (1, None, "no such environment")]
        store.delete_trial(first.id, 1)
        assert len(store.trials(first.id)) == 1
