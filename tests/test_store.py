"""The run history's rules, on a real SQLite file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mltrain.errors import RunNotFound, StoreError
from mltrain.store import Store


def _new(store: Store, **kw: str) -> str:
    return store.create_run(
        experiment="e", script="s.py", source_dir="/x", compute="local", environment="user_managed", **kw
    ).id


def test_status_moves_forward_only(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        run_id = _new(store)
        assert store.transition(run_id, "Running")
        assert not store.transition(run_id, "Preparing")  # backwards
        assert store.transition(run_id, "Failed", reason="boom")
        assert not store.transition(run_id, "Completed")  # terminal never changes
        assert not store.transition(run_id, "Canceled")
        record = store.get(run_id)
        assert (record.status, record.reason) == ("Failed", "boom")
        assert [s for s, _ in store.transitions(run_id)] == ["Queued", "Running", "Failed"]
        assert record.started is not None and record.ended is not None


def test_racing_terminal_writers_leave_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with Store(path) as store:
        run_id = _new(store)
    wins: list[str] = []

    def finish(status: str) -> None:
        with Store(path) as own:
            if own.transition(run_id, status):
                wins.append(status)

    threads = [threading.Thread(target=finish, args=(s,)) for s in ("Completed", "Failed", "Canceled") * 5]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    with Store(path) as store:
        assert store.get(run_id).status == wins[0]


def test_prefix_lookup(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        a = store.create_run(
            experiment="e", script="s", source_dir="/", compute="local", environment="u", run_id="abc12345"
        ).id
        store.create_run(
            experiment="e", script="s", source_dir="/", compute="local", environment="u", run_id="abd99999"
        )
        assert store.get("abc").id == a
        with pytest.raises(RunNotFound, match="several"):
            store.get("ab")
        with pytest.raises(RunNotFound, match="no run"):
            store.get("zz")
        with pytest.raises(RunNotFound):
            store.get("a%")  # LIKE wildcards are literal


def test_replace_metrics_is_idempotent(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        run_id = _new(store)
        rows = [("loss", 1.0, 0, None), ("loss", 0.5, 1, None), ("acc", 0.9, 1, None)]
        store.replace_metrics(run_id, rows)
        store.replace_metrics(run_id, rows)
        assert len(store.metrics(run_id)) == 3
        assert store.last_metrics(run_id) == {"acc": 0.9, "loss": 0.5}


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "runs.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE other (x)")
    conn.close()
    with pytest.raises(StoreError, match="not an mltrain run history"):
        Store(path)
