"""``mltrain gc --envs DAYS``: built venvs and images nobody used lately go; what is in use stays."""

# ruff: noqa: F811  (the fixtures imported from dockertest are named as the test arguments)
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error
from dockertest import DockerProject, dproject, engine  # noqa: F401 (fixtures)

DAY = 86400


def _age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def _marks(cache: Path) -> list[Path]:
    return sorted((cache / "used").iterdir())


def test_a_venv_unused_for_days_is_removed_and_rebuilt_on_demand(project: Project, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"MLTRAIN_CACHE_DIR": str(cache)}
    run = ["script=train.py", "environment=venv"]
    project.run(*run, env=env, check=True)
    (venv,) = (cache / "envs").glob("venv-*[!k]")  # not the .lock file
    (mark,) = _marks(cache)

    fresh = project.run("gc", "--envs", "30", env=env, check=True)
    assert "removed 0 venvs" in fresh.stdout and venv.is_dir()

    _age(mark, 40)
    _age(venv, 40)
    dry = project.run("gc", "--envs", "30", "--dry-run", env=env, check=True)
    assert "would remove 1 venvs" in dry.stdout and venv.name in dry.stdout and venv.is_dir()
    done = project.run("gc", "--envs", "30", env=env, check=True)
    assert "removed 1 venvs" in done.stdout and not venv.exists()
    assert venv.with_name(venv.name + ".lock").exists()  # a builder waiting on it must keep the same lock

    again = project.run(*run, env=env, check=True)  # the next run builds it again
    assert venv.is_dir() and "Completed" in again.stderr


def test_the_mark_of_any_project_keeps_an_environment(project: Project, tmp_path: Path) -> None:
    """A venv built long ago but used lately (by this or another project) stays."""
    cache = tmp_path / "cache"
    env = {"MLTRAIN_CACHE_DIR": str(cache)}
    project.run("script=train.py", "environment=venv", env=env, check=True)
    (venv,) = (cache / "envs").glob("venv-*[!k]")
    _age(venv, 400)  # built a year ago; the mark is from today
    kept = project.run("gc", "--envs", "30", env=env, check=True)
    assert "removed 0 venvs" in kept.stdout and venv.is_dir()


def test_an_image_unused_for_days_is_removed(dproject: DockerProject, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"MLTRAIN_CACHE_DIR": str(cache)}
    try:
        dproject.submit("script=train.py", env=env, check=True)
        assert len(dproject.images()) == 1
        for mark in _marks(cache):
            _age(mark, 40)
        done = dproject.run("gc", "--envs", "30", env=env, check=True)
        assert "removed 0 venvs" in done.stdout and "1 images" in done.stdout, done.stdout
        assert dproject.images() == []
    finally:
        dproject.cleanup()


def test_an_explicit_engine_that_does_not_answer_is_an_error(project: Project, tmp_path: Path) -> None:
    env = {"MLTRAIN_CACHE_DIR": str(tmp_path / "cache")}
    project.run("script=train.py", env=env, check=True)
    missing = project.run("gc", "--envs", "30", "--engine", f"unix://{tmp_path}/no.sock", env=env)
    assert_one_line_error(missing, "no.sock")
    quiet = project.run("gc", "--envs", "30", env={**env, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}, check=True)
    assert "images not checked" in quiet.stdout


pytestmark = pytest.mark.integration


def test_bad_gc_arguments_are_one_line_and_delete_nothing(project: Project, tmp_path: Path) -> None:
    env = {"MLTRAIN_CACHE_DIR": str(tmp_path / "cache")}
    project.write("failing.py", "raise SystemExit(3)\n")
    project.run("script=failing.py", env=env)  # a failed run: what `gc --failed` would delete
    before = project.runs()
    assert [r["status"] for r in before] == ["Failed"]
    for args, fragment in (
        (["--envs", "-5"], "'-5' must be a number >= 0"),
        (["--envs", "nan"], "'nan' must be a number >= 0"),
        (["--older-than", "-1"], "'-1' must be a number >= 0"),
        (["--engine", "tcp://127.0.0.1:9"], "--engine says whose images --envs prunes"),
        (["--failed", "--envs", "1", "--engine", "bogus://x"], "gc --engine bogus://x: use unix://"),
        (["--failed", "--envs", "1", "--engine", "tcp://127.0.0.1:9"], "cannot reach the Docker engine"),
    ):
        assert_one_line_error(project.run("gc", *args, env=env), fragment)
    assert project.runs() == before
