"""What queries read is kept on write: ``runs.params`` at create, ``metric_last`` with every metric write."""

from __future__ import annotations

from pathlib import Path

from mltrain.store.db import Store
from mltrain.store.workspace import Workspace
from mltrain.tracking.query import ensure_indexed


def _new(store: Store, **params: object) -> str:
    return store.create_run(experiment="e", script="s.py", source_dir="/x", compute="local",
                            environment="user_managed", params=dict(params)).id


def _last(store: Store, run_id: str) -> list[tuple[str, int, float]]:
    rows = store._db.execute("SELECT name, step, value FROM metric_last WHERE run_id = ? ORDER BY name", (run_id,))
    return [tuple(row) for row in rows]


def test_metric_last_follows_add_and_replace(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        run_id = _new(store, lr=0.1)
        assert store.get(run_id).params == {"lr": 0.1}
        store.add_metrics(run_id, [("acc", 0.5, 1, 1.0), ("acc", 0.7, 2, 2.0), ("loss", 3.0, 2, 2.0)])
        store.add_metrics(run_id, [("acc", 0.6, 3, 3.0)])
        assert _last(store, run_id) == [("acc", 3, 0.6), ("loss", 2, 3.0)]
        assert store.last_metrics_of([run_id]) == {run_id: store.last_metrics(run_id)}
        store.replace_metrics(run_id, [("acc", 0.9, 5, 5.0)])
        assert _last(store, run_id) == [("acc", 5, 0.9)]
        store.delete_runs([run_id])
        assert _last(store, run_id) == []


def test_older_runs_are_indexed_once_from_their_config(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / ".mltrain").ensure()
    with Store(workspace.db_path) as store:
        run_id = _new(store)
        store.add_metrics(run_id, [("acc", 0.5, 1, 1.0), ("acc", 0.8, 2, 2.0)])
        # as a run recorded before params and metric_last were kept on write
        store._db.execute("UPDATE runs SET params = NULL WHERE id = ?", (run_id,))
        store._db.execute("DELETE FROM metric_last")
        paths = workspace.run_paths(run_id)
        paths.dir.mkdir(parents=True)
        paths.config.write_text("script: s.py\nparams:\n  lr: 0.01\n  model:\n    depth: 4\n")
        assert ensure_indexed(store, workspace) == 1
        assert store.get(run_id).params == {"lr": 0.01, "model.depth": 4}
        assert _last(store, run_id) == [("acc", 2, 0.8)]
        assert ensure_indexed(store, workspace) == 0
