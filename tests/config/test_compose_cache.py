"""The composition cache: a repeat skips Hydra, and never serves a config that is out of date."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error

PRIMARY = "defaults:\n  - config\n  - _self_\nexperiment: {name}\n"


def _settle(path: Path) -> None:
    """Age a file past the racy window, as if it had been written a minute ago."""
    old = time.time() - 60
    os.utime(path, (old, old))


def _experiment(project: Project, *overrides: str, env: dict[str, str] | None = None) -> str:
    plan = json.loads(project.run("plan", "--json", *overrides, env=env, check=True).stdout)
    return str(plan["experiment"])


def _entries(cache: Path) -> set[str]:
    folder = cache / "compose"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_a_repeat_is_served_without_importing_hydra(project: Project, tmp_path: Path) -> None:
    cache = tmp_path / "own-cache"
    env = {"MLTRAIN_CACHE_DIR": str(cache)}
    project.run("plan", "script=train.py", "params.lr=0.5", env=env, check=True)
    assert len(_entries(cache)) == 1
    probe = (
        "import sys\n"
        "from mltrain.config.compose import compose_validated\n"
        "cfg, job = compose_validated(['script=train.py', 'params.lr=0.5'])\n"
        "print(cfg.params['lr'], 'hydra' in sys.modules, 'omegaconf' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=project.root, env={**project.env, **env},
                          capture_output=True, text=True, check=True)
    # A config without interpolations comes back validated: neither Hydra nor OmegaConf is loaded.
    assert done.stdout.split() == ["0.5", "False", "False"]


def test_an_edited_conf_file_is_never_served_stale(project: Project, tmp_path: Path) -> None:
    env = {"MLTRAIN_CACHE_DIR": str(tmp_path / "own-cache")}
    primary = project.write("conf/mine.yaml", PRIMARY.format(name="alpha"))
    _settle(primary)
    assert _experiment(project, "-cn", "mine", "script=train.py", env=env) == "alpha"
    assert _experiment(project, "-cn", "mine", "script=train.py", env=env) == "alpha"  # a hit
    project.write("conf/mine.yaml", PRIMARY.format(name="bravo"))  # same size, new mtime
    assert _experiment(project, "-cn", "mine", "script=train.py", env=env) == "bravo"
    # Two same-size writes inside one mtime tick: the young file is never cached, so no stale hit.
    project.write("conf/mine.yaml", PRIMARY.format(name="gamma"))
    assert _experiment(project, "-cn", "mine", "script=train.py", env=env) == "gamma"
    project.write("conf/mine.yaml", PRIMARY.format(name="delta"))
    assert _experiment(project, "-cn", "mine", "script=train.py", env=env) == "delta"


def test_a_new_option_file_is_seen(project: Project, tmp_path: Path) -> None:
    env = {"MLTRAIN_CACHE_DIR": str(tmp_path / "own-cache")}
    _settle(project.write("conf/compute/box.yaml", "type: local\ncancel_grace: 1.0\n"))
    project.run("plan", "script=train.py", "compute=box", env=env, check=True)
    missing = project.run("plan", "script=train.py", "compute=crate", env=env)
    assert_one_line_error(missing, "unknown compute option 'crate'")
    _settle(project.write("conf/compute/crate.yaml", "type: local\n"))
    assert project.run("plan", "script=train.py", "compute=crate", env=env).returncode == 0


def test_interpolations_resolve_afresh_on_every_run(project: Project, tmp_path: Path) -> None:
    env = {"MLTRAIN_CACHE_DIR": str(tmp_path / "own-cache")}
    project.write("show.py", "import os\nprint('token=' + os.environ['TOKEN'][::-1])\n")  # as is, it shows ***
    for value in ("first", "second"):
        done = project.run("script=show.py", "+env_vars.TOKEN=${oc.env:MY_TOKEN}",
                           env={**env, "MY_TOKEN": value}, check=True)
        assert f"token={value[::-1]}" in done.stdout
    assert len(_entries(tmp_path / "own-cache")) == 1  # the second run was a hit


def test_hydra_only_resolvers_are_not_cached(project: Project, tmp_path: Path) -> None:
    cache = tmp_path / "own-cache"
    env = {"MLTRAIN_CACHE_DIR": str(cache)}
    assert _experiment(project, "script=train.py", "experiment=run-${now:%Y}", env=env) == time.strftime("run-%Y")
    assert _entries(cache) == set()


def test_errors_still_come_from_the_schema_after_a_hit(project: Project, tmp_path: Path) -> None:
    env = {"MLTRAIN_CACHE_DIR": str(tmp_path / "own-cache")}
    project.run("plan", "script=train.py", env=env, check=True)
    bad = project.run("plan", "script=train.py", "compute.cancel_grace=soon", env=env)
    assert_one_line_error(bad, "cancel_grace")


def test_switched_off_by_environment(project: Project, tmp_path: Path) -> None:
    cache = tmp_path / "own-cache"
    project.run("plan", "script=train.py", env={"MLTRAIN_CACHE_DIR": str(cache), "MLTRAIN_COMPOSE_CACHE": "0"},
                check=True)
    assert _entries(cache) == set()


def test_validated_values_survive_the_round_trip(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a literal hit rebuilds equals what validation made, for every group type."""
    from mltrain.config.compose import compose_validated
    from mltrain.config.schema import config_from_plain, config_to_plain

    monkeypatch.chdir(project.root)
    monkeypatch.setenv("MLTRAIN_COMPOSE_CACHE", "0")
    for overrides in (
        ["script=train.py", "params.lr=0.5", "params.layers=[1,2]", "args=[--x,'a b']", "+env_vars.A=1"],
        ["script=train.py", "compute=docker", "environment=docker_sklearn", "compute.gpus=all"],
        ["script=train.py", "compute=ssh", "compute.host=box", "environment=venv", "environment.packages=[rich]"],
        ["script=train.py", "compute=spark", "framework=pyspark", "+compute.conf.spark.executor.cores=2"],
    ):
        cfg, _ = compose_validated(overrides)
        plain = json.loads(json.dumps(config_to_plain(cfg)))  # as the cache file stores it
        assert config_from_plain(plain) == cfg, overrides


def test_a_damaged_entry_is_composed_afresh_not_an_internal_error(project: Project, tmp_path: Path) -> None:
    cache = tmp_path / "own-cache"
    env = {"MLTRAIN_CACHE_DIR": str(cache)}
    project.run("plan", "script=train.py", env=env, check=True)
    (entry,) = (cache / "compose").iterdir()
    data = json.loads(entry.read_text())
    data["validated"] = {"compute": {"type": "cloud"}}  # right key, values no config can be rebuilt from
    entry.write_text(json.dumps(data))
    assert _experiment(project, "script=train.py", env=env) == project.root.name
    assert "cloud" not in entry.read_text()  # replaced by a good entry


def test_a_symlinked_conf_folder_is_covered_by_the_key(project: Project, tmp_path: Path) -> None:
    """Hydra follows a group folder that is a symlink (``conf/exp -> ../shared/exp``); so does the key."""
    env = {"MLTRAIN_CACHE_DIR": str(tmp_path / "own-cache")}
    shared = project.root / "shared" / "exp"
    shared.mkdir(parents=True)
    (project.root / "conf").mkdir(exist_ok=True)
    (project.root / "conf" / "exp").symlink_to("../shared/exp")
    option = shared / "a.yaml"
    for name in ("alpha", "bravo"):
        option.write_text(f"# @package _global_\nexperiment: {name}\n")  # same size both times
        _settle(option)
        assert _experiment(project, "script=train.py", "+exp=a", env=env) == name


def test_the_packaged_conf_is_in_the_key_in_every_install() -> None:
    from mltrain.config import cache as compose_cache

    covered = {f[0] for folder in compose_cache._packaged_conf_dirs() for f in compose_cache._files(folder)}
    assert {"config.yaml", "compute/local.yaml", "environment/user_managed.yaml"} <= covered
