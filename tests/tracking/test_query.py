"""The ``--where`` language: what it matches, how it sorts, and the one line a mistake gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from mltrain.store.db import Store
from mltrain.store.workspace import Workspace
from mltrain.tracking.query import QueryError, differing, find_runs, parse_columns, parse_sort

RUNS = [  # (params, acc, loss, status)
    ({"lr": 0.1, "opt": "sgd", "model.depth": 2}, 0.95, 0.2, "Completed"),
    ({"lr": 0.001, "opt": "adam", "model.depth": 4}, 0.91, 0.1, "Completed"),
    ({"lr": 0.001, "opt": "adam", "model.depth": 8, "note": "x"}, 0.5, 0.9, "Failed"),
    ({"lr": 0.01, "opt": "it's", "model.depth": 2}, None, 0.3, "Completed"),
]


@pytest.fixture
def history(tmp_path: Path) -> tuple[Store, Workspace, list[str]]:
    workspace = Workspace(tmp_path / ".mltrain").ensure()
    store = Store(workspace.db_path)
    ids = []
    for params, acc, loss, status in RUNS:
        run = store.create_run(experiment="e", script="s.py", source_dir="/x", compute="local",
                               environment="user_managed", params=params)
        store.transition(run.id, status)
        store.add_metrics(run.id, [("loss", loss, 1, 1.0), *([("acc", acc, 1, 1.0)] if acc is not None else [])])
        ids.append(run.id)
    yield store, workspace, ids
    store.close()


@pytest.mark.parametrize(("where", "expected"), [
    ("metrics.acc > 0.9", [0, 1]),
    ("metrics.acc > 0.9 and params.lr < 0.01", [1]),
    ("metrics.acc>0.9 and params.lr<0.01", [1]),
    ("params.opt == 'adam' or metrics.loss <= 0.2", [0, 1, 2]),
    ("not (params.opt = \"adam\")", [0, 3]),
    ("not metrics.acc > 0.9", [2, 3]),  # no acc: not a match, so its negation matches
    ("params.note != null", [2]),
    ("metrics.acc == null", [3]),
    ("params.opt == 'it\\'s'", [3]),
    ("params.model.depth >= 4 and status == 'Completed'", [1]),
    ("status != 'Completed'", [2]),
    ("params.`model.depth` == 2", [0, 3]),
    ("metrics.acc > 1e-1 and metrics.loss < 5E-1", [0, 1]),
])
def test_where_matches(history: tuple[Store, Workspace, list[str]], where: str, expected: list[int]) -> None:
    store, workspace, ids = history
    found = find_runs(store, workspace, where=where)
    assert sorted(r.id for r in found.runs) == sorted(ids[i] for i in expected)


def test_sort_and_columns(history: tuple[Store, Workspace, list[str]]) -> None:
    store, workspace, ids = history
    found = find_runs(store, workspace, sort="metrics.acc:desc")
    assert [r.id for r in found.runs] == [ids[0], ids[1], ids[2], ids[3]]  # a run without the metric last
    found = find_runs(store, workspace, sort="metrics.loss", limit=2)
    assert ([r.id for r in found.runs], found.total) == ([ids[1], ids[0]], 4)
    assert parse_sort("-params.lr").descending
    columns = parse_columns("params.lr,metrics.acc,status")
    assert [c.value(found.runs[0], found.metrics[found.runs[0].id]) for c in columns] == [0.001, 0.91, "Completed"]
    assert differing(found.runs) == ["lr", "model.depth", "opt"]


@pytest.mark.parametrize(("where", "message"), [
    ("metrics.acc > and params.lr < 1", "expected a value after '>', found 'and' at column 15"),
    ("metrics.acc 0.9", "expected a comparison after 'metrics.acc', found '0.9' at column 13"),
    ("(metrics.acc > 0.9", "missing ')' at column 19"),
    ("foo.bar > 1", "unknown field 'foo.bar' at column 1"),
    ("metrics.acc > 0.9 params.lr < 1", "unexpected 'params.lr' at column 19"),
    ("params.x == 'open", "unterminated string at column 13"),
    ("metrics.acc < null", "null compares only with == or !="),
    ("metrics.acc > 0.9; drop table runs", "unexpected ';' at column 18"),
    ("", "empty expression"),
])
def test_a_mistake_points_at_its_column(history: tuple[Store, Workspace, list[str]], where: str,
                                        message: str) -> None:
    store, workspace, _ = history
    with pytest.raises(QueryError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as info:
        find_runs(store, workspace, where=where)
    assert "\n" not in str(info.value)


def test_bad_sort_and_columns_name_the_fields() -> None:
    with pytest.raises(QueryError, match=r"unknown sort field 'acc'.*metrics\.NAME"):
        parse_sort("acc")
    with pytest.raises(QueryError, match="unknown column 'lr' at column 11"):
        parse_columns("params.x, lr")
