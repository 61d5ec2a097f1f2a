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


def test_metric_points_are_each_metrics_points_in_logging_order(tmp_path: Path) -> None:
    """``metric_points`` groups by metric (the index's order, no sort of every row) and keeps each metric's
    logging order, steps or none, NaN included: the curves drawn from it are those of ``metrics``' rows."""
    import math

    from mltrain.tracking.sparkline import series

    with Store(tmp_path / "runs.db") as store:
        run_id, other = _new(store), _new(store)
        store.add_metrics(run_id, [("loss", 2.0, 5, 1.0), ("acc", 0.1, None, 1.0), ("loss", math.nan, 3, 2.0)])
        store.add_metrics(other, [("loss", 9.0, 1, 1.0)])
        store.add_metrics(run_id, [("acc", 0.2, None, 3.0), ("b", 1.0, 0, 3.0), ("loss", 1.0, 3, 4.0)])
        points = store.metric_points(run_id)
        assert [(n, s) for n, s, _ in points] == [("acc", None), ("acc", None), ("b", 0), ("loss", 5), ("loss", 3),
                                                  ("loss", 3)]
        assert [v for n, _, v in points if n == "acc"] == [0.1, 0.2] and math.isnan(points[4][2])
        drawn, logged = series(points), series((n, s, v) for n, s, v, _ in store.metrics(run_id))
        assert repr(sorted(drawn.items())) == repr(sorted(logged.items()))  # repr: NaN == NaN there
        assert drawn["loss"][:2] == [(3.0, drawn["loss"][0][1]), (3.0, 1.0)] and drawn["loss"][2] == (5.0, 2.0)
