"""Bad input through the CLI: one line saying what is wrong and how to fix it, no traceback, nothing lost."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["script=train.py", "compute=nowhere"], ["unknown compute option 'nowhere'", "local"]),
        (["script=train.py", "environment=condaa"], ["unknown environment option", "user_managed", "venv"]),
        (["scirpt=train.py"], ["scirpt"]),
        (["script=train.py", "compute.cancel_grce=3"], ["compute.cancel_grce"]),
        (["script=train.py", "+compute.cancel_grce=3"], ["compute.cancel_grce", "valid keys", "cancel_grace"]),
        (["script=train.py", "compute.cancel_grace=soon"], ["compute.cancel_grace", "soon"]),
        (["script=train.py", "snapshot.max_files=many"], ["snapshot.max_files"]),
        (["script=train.py", "snapshot.max_files=0"], ["snapshot.max_files=0: must be at least 1"]),
        (["script=train.py", "snapshot.max_bytes=-1"], ["snapshot.max_bytes=-1: must be at least 1"]),
        (["params.lr=0.1"], ["missing required value: script", "script=train.py"]),
        (["script=nothere.py"], ["nothere.py not found"]),
        (["script=../outside.py"], ["outside source_dir"]),
        (["script=train.py", "source_dir=missing"], ["does not exist"]),
        (["script=train.py", "source_dir=train.py"], ["is a file"]),
        (["script=train.py", "params.lr=[1,"], ["malformed override"]),
        (["script=train.py", "framework.args_style=weird"], ["args_style", "argparse", "hydra"]),
        (["script=train.py", "compute.type=cloud"], ["compute.type='cloud'", "local"]),
        (["--detatch", "script=train.py"], ["unrecognized arguments: --detatch", "mltrain --help"]),
        (["-cn"], ["--config-name", "expected one argument"]),
        (["runs", "shw"], ["runs:", "invalid choice: 'shw'", "mltrain runs --help"]),
        (["runs", "show"], ["runs show:", "run_id", "mltrain runs show --help"]),
        (["gc", "--older-than", "soon"], ["gc:", "--older-than", "'soon'"]),
        (["sweeps", "lst"], ["sweeps:", "invalid choice: 'lst'"]),
        (["-cd", "no-such-conf", "script=train.py"], ["no-such-conf", "is not a directory"]),
        (["plan", "script=train.py", "-cd", "x"], ["proj/x (-cd", "is not a directory"]),
    ],
)
def test_config_and_source_errors(project: Project, args: list[str], fragments: list[str]) -> None:
    (project.root.parent / "outside.py").write_text("print('x')\n")
    result = project.run(*args)
    assert_one_line_error(result, *fragments)
    assert not (project.workspace / "runs").exists() or not any((project.workspace / "runs").iterdir())


def test_plan_shares_the_errors(project: Project) -> None:
    assert_one_line_error(project.run("plan", "script=train.py", "compute=nowhere"), "unknown compute option")


def test_an_unknown_option_names_the_folder_its_yaml_belongs_in(project: Project) -> None:
    """The hint names where mltrain reads this project's groups: ./conf, or .mltrain/conf beside a Hydra app's."""
    assert_one_line_error(project.run("plan", "script=train.py", "compute=nowhere"),
                          "add conf/compute/nowhere.yaml to define it")
    project.write("conf/config.yaml", "db: mysql\n")  # a Hydra app's own config, not mltrain's
    assert_one_line_error(project.run("plan", "script=train.py", "compute=nowhere"),
                          "add .mltrain/conf/compute/nowhere.yaml to define it")
    project.write(".mltrain/conf/compute/box.yaml", "defaults:\n  - local\n")
    assert_one_line_error(project.run("plan", "script=train.py", "compute=nowhere"),
                          "add .mltrain/conf/compute/nowhere.yaml to define it")


def test_unwritable_workspace(project: Project, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = project.run("script=train.py", env={"MLTRAIN_HOME": str(blocker / "ws")})
    assert_one_line_error(result, "not writable", "MLTRAIN_HOME")


def test_unknown_run_id(project: Project) -> None:
    project.run("script=train.py", check=True)
    for command in (["show"], ["logs"], ["cancel"], ["attach"], ["metrics"]):
        assert_one_line_error(project.run("runs", *command, "zzzzzzzz"), "no run 'zzzzzzzz'", "runs list")


def test_no_history_yet(project: Project) -> None:
    assert_one_line_error(project.run("runs", "show", "abc"), "no run history")


def test_corrupt_database_is_left_untouched(project: Project) -> None:
    project.workspace.mkdir()
    db = project.workspace / "runs.db"
    garbage = b"this is not sqlite" * 100
    db.write_bytes(garbage)
    for args in (["runs", "list"], ["script=train.py"]):
        assert_one_line_error(project.run(*args), "runs.db", "not a usable run history")
    assert db.read_bytes() == garbage


def test_newer_schema_is_refused_and_untouched(project: Project) -> None:
    project.run("script=train.py", check=True)
    db = project.workspace / "runs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = db.read_bytes()
    assert_one_line_error(project.run("runs", "list"), "newer mltrain", "upgrade")
    assert_one_line_error(project.run("script=train.py"), "newer mltrain")
    assert db.read_bytes() == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    conn.close()


def test_full_error_shows_traceback(project: Project) -> None:
    result = project.run("script=train.py", "compute=nowhere", env={"MLTRAIN_FULL_ERROR": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_failing_environment_keeps_a_failed_record(project: Project) -> None:
    result = project.run("script=train.py", "environment.interpreter=/no/such/python")
    assert_one_line_error(result, "/no/such/python")
    (record,) = project.runs()
    assert record["status"] == "Failed"
    assert "/no/such/python" in str(record["reason"])


def test_a_whole_file_system_or_home_as_source_dir_is_refused(project: Project, tmp_path: Path) -> None:
    inside_root = str(project.root.relative_to("/") / "train.py")
    assert_one_line_error(project.run("script=" + inside_root, "source_dir=/"),
                          "source_dir / is the file system root", "snapshot.allow_large_root=true")
    home = tmp_path / "home"
    home.mkdir()
    (home / "train.py").write_text("print('from home')\n")
    as_home = {"HOME": str(home)}
    assert_one_line_error(project.run("script=train.py", f"source_dir={home}", env=as_home),
                          f"source_dir {home} is your home directory", "snapshot.allow_large_root=true")
    assert_one_line_error(project.run("script=" + str((home / "train.py").relative_to(tmp_path)),
                                      f"source_dir={tmp_path}", env=as_home),
                          "a folder that holds your home directory")
    # a mount point: its st_dev differs from its parent's (/proc is its own file system on Linux)
    assert_one_line_error(project.run("script=version", "source_dir=/proc"), "the root of a mounted file system")
    assert_one_line_error(project.run("plan", "script=version", "source_dir=/proc"), "mounted file system")
    assert_one_line_error(project.run("-m", "script=version", "source_dir=/proc", "params.a=1,2"),
                          "mounted file system")
    # asked for on purpose, it runs
    result = project.run("script=train.py", f"source_dir={home}", "snapshot.allow_large_root=true", env=as_home)
    assert result.returncode == 0, result.stderr
    assert "from home" in result.stdout


def test_a_mounted_project_folder_is_not_a_large_root(project: Project, tmp_path: Path) -> None:
    """A dev container's /workspace is a mount point too: with a project marker in it, it runs as is."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted = tmp_path / "workspace"
    mounted.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mounted)], check=True)
    try:
        (mounted / "train.py").write_text("print('from the mount')\n")
        refused = project.run("script=train.py", f"source_dir={mounted}")
        assert_one_line_error(refused, "the root of a mounted file system", "snapshot.allow_large_root=true")
        (mounted / "pyproject.toml").write_text("[project]\nname = 'p'\n")
        result = project.run("script=train.py", f"source_dir={mounted}")
        assert result.returncode == 0, result.stderr
        assert "from the mount" in result.stdout
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
