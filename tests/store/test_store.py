"""The run history's rules, on a real SQLite file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import errors_in_threads

from mltrain.errors import RunNotFound, StoreError
from mltrain.store.db import Store


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


def test_a_run_created_preparing_with_fields_reads_back_as_if_written_one_by_one(tmp_path: Path) -> None:
    git = {"commit": "abc", "dirty": False}
    with Store(tmp_path / "runs.db") as store:
        made = store.create_run(experiment="e", script="s.py", source_dir="/x", compute="local",
                                environment="user_managed", preparing=True,
                                fields={"snapshot_id": "f" * 64, "git": git})
        record = store.get(made.id)
        assert record == made  # what create_run returned is the row as stored
        assert (record.status, record.snapshot_id, record.git) == ("Preparing", "f" * 64, git)
        assert [s for s, _ in store.transitions(made.id)] == ["Queued", "Preparing"]
        assert not store.transition(made.id, "Preparing")  # already there
        with pytest.raises(ValueError, match="not settable at creation"):
            store.create_run(experiment="e", script="s.py", source_dir="/x", compute="local",
                             environment="user_managed", fields={"status": "Completed"})


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


def test_threads_sharing_one_store_never_mix_their_transactions(tmp_path: Path) -> None:
    """A sweep's workers share one Store: each method's statements run whole, so sixteen threads creating,
    moving and reading runs through one connection leave every run as its own thread left it."""
    with Store(tmp_path / "runs.db") as store:

        def work(n: int) -> None:
            for i in range(20):
                run_id = _new(store)
                store.update(run_id, env_fingerprint=f"{n}-{i}")
                assert store.transition(run_id, "Running", handle={"pid": n})
                store.add_metrics(run_id, [("loss", float(i), i, None)])
                assert store.transition(run_id, "Completed", exit_code=0, metrics=[("loss", float(n), 0, None)])
                record = store.get(run_id)
                assert (record.status, record.env_fingerprint, record.handle) == ("Completed", f"{n}-{i}",
                                                                                 {"pid": n})
                assert store.metrics(run_id) == [("loss", 0, float(n), None)]

        errors = errors_in_threads(work, 16)
        assert not errors, errors[:3]
        assert store.count() == 16 * 20
        assert {r.status for r in store.find()} == {"Completed"}
        assert store.integrity_check() == "ok"


def test_create_run_returns_the_row_as_stored(tmp_path: Path) -> None:
    """``create_run`` builds its record from what it inserted instead of reading it back: the same record."""
    with Store(tmp_path / "runs.db") as store:
        record = store.create_run(
            experiment="e", script="s.py", source_dir="/x", compute="local", environment="user_managed",
            overrides=("params.lr=0.1", "params.n=3"), parent_id="p1", sweep_id="s1", run_id="abcd1234",
            client={"pid": 1, "host": "h"}, idempotency_key="k", params={"lr": 0.1, "n": 3, "flag": True},
        )
        assert record == store.get("abcd1234")
        plain = store.create_run(experiment="e", script="s.py", source_dir="/x", compute="local",
                                 environment="user_managed")
        assert plain == store.get(plain.id)
        assert (plain.overrides, plain.client, plain.params, plain.idempotency_key) == ([], None, {}, None)


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


def test_a_transition_with_metrics_sets_them_and_the_status_in_one_write(tmp_path: Path) -> None:
    """What ``finalize`` does: a run's metrics and its end in one transaction, the same records as the two
    writes it replaces (metrics replaced even when the move is refused, as ``replace_metrics`` then would)."""
    import sqlite3

    statements: list[str] = []
    with Store(tmp_path / "runs.db") as store:
        run_id = _new(store)
        store.add_metrics(run_id, [("loss", 9.0, 0, None)])
        store._db.set_trace_callback(statements.append)
        assert store.transition(run_id, "Completed", exit_code=0,
                                metrics=[("loss", 1.0, 0, None), ("loss", 0.5, 1, None), ("acc", 0.9, 1, None)])
        store._db.set_trace_callback(None)
        assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
        record = store.get(run_id)
        assert (record.status, record.exit_code) == ("Completed", 0)
        assert [s for s, _ in store.transitions(run_id)] == ["Queued", "Completed"]
        assert len(store.metrics(run_id)) == 3 and store.last_metrics(run_id) == {"acc": 0.9, "loss": 0.5}
        assert not store.transition(run_id, "Failed", metrics=[("loss", 2.0, 0, None)])  # terminal: refused
        assert store.get(run_id).status == "Completed" and store.last_metrics(run_id) == {"loss": 2.0}
        with pytest.raises(sqlite3.Error):  # a failing write leaves neither the metrics nor the status
            store.transition(run_id, "Completed", metrics=[("loss", object(), 0, None)])  # type: ignore[list-item]
        assert store.last_metrics(run_id) == {"loss": 2.0}


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "runs.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE other (x)")
    conn.close()
    with pytest.raises(StoreError, match="not an mltrain run history"):
        Store(path)


def test_idempotency_key_gives_one_run_to_racing_submitters(tmp_path: Path) -> None:
    """Each key: exactly one creator; every other submitter gets that run (threads with their own connections)."""
    from mltrain.store.db import IdempotencyHit

    path = tmp_path / "runs.db"
    Store(path).close()
    got: dict[str, list[tuple[str, bool]]] = {f"k{i}": [] for i in range(10)}
    barrier = threading.Barrier(4)

    def submit() -> None:
        with Store(path) as own:
            barrier.wait()
            for key in got:
                try:
                    got[key].append((_new(own, idempotency_key=key), True))
                except IdempotencyHit as hit:
                    got[key].append((hit.record.id, False))

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for answers in got.values():
        assert len({run_id for run_id, _ in answers}) == 1
        assert sum(created for _, created in answers) == 1
    with Store(path) as store:
        assert store.count() == 10
        _new(store)  # runs without a key do not collide with each other
        _new(store)
        assert store.count() == 12


def test_unlaunched_transition_never_overtakes_a_launch(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        preparing, launched = _new(store), _new(store)
        for run_id in (preparing, launched):
            store.transition(run_id, "Preparing")
        store.transition(launched, "Running", handle={"kind": "local", "pid": 1})
        assert store.transition(preparing, "Failed", reason="client gone", unlaunched=True)
        assert not store.transition(launched, "Failed", reason="client gone", unlaunched=True)
        assert store.get(launched).status == "Running"


def test_reasons_are_stored_without_terminal_codes(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        run_id = _new(store)
        store.transition(run_id, "Failed", reason="\x1b[31mValueError\x1b[0m: bad value 3")
        assert store.get(run_id).reason == "ValueError: bad value 3"


def test_schema_2_history_is_migrated_and_its_runs_left_as_they_were(tmp_path: Path) -> None:
    """A workspace written before runs recorded their client: it opens, and its unlaunched run is not judged."""
    import sqlite3

    from mltrain.store import db as store_module
    from mltrain.store.workspace import Workspace
    from mltrain.targets.base import reconcile

    workspace = Workspace(tmp_path / ".mltrain").ensure()
    db = sqlite3.connect(workspace.db_path, isolation_level=None)
    for script in (store_module._SCHEMA, store_module._MIGRATIONS[1]):
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("INSERT INTO runs (id, experiment, status, created, script, source_dir, compute, environment)"
               " VALUES ('old00001', 'e', 'Preparing', 1.0, 's.py', '/p', 'local', 'venv')")
    db.execute("PRAGMA user_version = 2")
    db.close()
    with Store(workspace.db_path, create=False) as store:
        old = store.get("old00001")
        assert (old.client, old.idempotency_key) == (None, None)
        assert reconcile(store, workspace, old).status == "Preparing"  # no client recorded: cannot tell
        run_id = _new(store, idempotency_key="k")
        assert store.get(run_id).idempotency_key == "k"
        assert store.integrity_check() == "ok"
        assert (old.hardware, old.params, old.mlflow) == (None, None, None)  # columns of version 4, empty
    version = sqlite3.connect(workspace.db_path).execute("PRAGMA user_version").fetchone()[0]
    assert version == store_module.SCHEMA_VERSION


def test_schema_4_history_gains_nan_metrics_and_keeps_its_points_in_order(tmp_path: Path) -> None:
    """SQLite stores a NaN as NULL, which schema 4's ``value REAL NOT NULL`` refused (a diverged loss failed the
    run's finalising). The migration rebuilds both metric tables, row ids and thus the points' order kept."""
    import math
    import sqlite3

    from mltrain.store import db as store_module

    path = tmp_path / "runs.db"
    db = sqlite3.connect(path, isolation_level=None)
    for script in (store_module._SCHEMA, *(store_module._MIGRATIONS[v] for v in (1, 2, 3))):
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("INSERT INTO runs (id, experiment, status, created, script, source_dir, compute, environment)"
               " VALUES ('old00001', 'e', 'Completed', 1.0, 's.py', '/p', 'local', 'venv')")
    db.executemany("INSERT INTO metrics VALUES ('old00001', ?, ?, ?, NULL)",
                   [("loss", 1, 0.9), ("acc", 1, 0.1), ("loss", 2, 0.4)])
    db.execute("INSERT INTO metric_last VALUES ('old00001', 'loss', 2, 0.4, NULL)")
    db.execute("PRAGMA user_version = 4")
    db.close()
    with Store(path, create=False) as store:
        assert store.metrics("old00001") == [("loss", 1, 0.9, None), ("acc", 1, 0.1, None), ("loss", 2, 0.4, None)]
        assert store.last_metrics_of(["old00001"]) == {"old00001": {"loss": 0.4}}
        run_id = _new(store)
        store.add_metrics(run_id, [("loss", 0.5, 1, None), ("loss", math.nan, 2, None), ("acc", -math.inf, 2, None)])
        (first, nan, low) = store.metrics(run_id)
        assert first == ("loss", 1, 0.5, None) and low == ("acc", 2, -math.inf, None)
        assert nan[:2] == ("loss", 2) and math.isnan(nan[2])
        assert math.isnan(store.last_metrics(run_id)["loss"])
        assert math.isnan(store.last_metrics_of([run_id])[run_id]["loss"])
        assert store.integrity_check() == "ok"
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION
