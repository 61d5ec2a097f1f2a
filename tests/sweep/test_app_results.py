"""What a Hydra app's job hands back (``mltrain.sweep.app.read_result``) is hostile input: JSON only, bounded,
and only built-in exception types are rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.core.utils import JobStatus
from omegaconf import DictConfig

from hydra_plugins.mltrain_plugins.callback import RESULT_FILE, encode
from mltrain.sweep import app
from mltrain.sweep.app import JobError, read_result


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / RESULT_FILE
    path.write_text(json.dumps(data))
    return path


def test_the_names_agree() -> None:
    assert app.RESULT_FILE == RESULT_FILE


def test_values_round_trip(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    value = {"a": [1, 2.5, None, True], "cfg": OmegaConf.create({"x": {"y": 1}}), "obj": object}
    status, back = read_result(write(tmp_path, {"value": encode(value)}))  # type: ignore[misc]
    assert status == JobStatus.COMPLETED
    assert back["a"] == [1, 2.5, None, True]
    assert isinstance(back["cfg"], DictConfig) and back["cfg"].x.y == 1
    assert back["obj"] == repr(object)  # what JSON cannot hold comes back as its repr, never as code


def test_a_builtin_exception_is_rebuilt_and_others_are_not(tmp_path: Path) -> None:
    error = {"type": "ValueError", "module": "builtins", "message": "bad lr", "traceback": "Traceback ..."}
    status, exc = read_result(write(tmp_path, {"error": error}))  # type: ignore[misc]
    assert status == JobStatus.FAILED and type(exc) is ValueError and str(exc) == "bad lr"
    error = {"type": "Popen", "module": "subprocess", "message": "x"}
    _, exc = read_result(write(tmp_path, {"error": error}))  # type: ignore[misc]
    assert type(exc) is JobError and str(exc) == "Popen: x"


def test_bad_files_are_errors_not_crashes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert read_result(tmp_path / "missing.json") is None
    path = tmp_path / RESULT_FILE
    path.write_text("{not json")
    assert isinstance(read_result(path)[1], JobError)  # type: ignore[index]
    path.write_text("[1, 2]")
    assert isinstance(read_result(path)[1], JobError)  # type: ignore[index]
    monkeypatch.setattr(app, "MAX_RESULT_BYTES", 10)
    path.write_text(json.dumps({"value": "x" * 100}))
    status, exc = read_result(path)  # type: ignore[misc]
    assert status == JobStatus.FAILED and "over" in str(exc)
