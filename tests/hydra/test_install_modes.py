"""mltrain as a Hydra plugin in each install mode (wheel, editable): any Hydra app finds its launcher and
sweeper, and Hydra's LauncherTestSuite and IntegrationTestSuite pass against ``hydra/launcher=mltrain`` on the
local and the Docker target.

Each mode's venv (see ``installs.py``) runs ``suite_local.py`` and ``suite_docker.py`` with pytest from outside
the checkout, so ``import mltrain`` and Hydra's plugin scan see the installed package, as a user's app would.
The two modes run side by side (their jobs mostly wait on processes and containers).
"""

# ruff: noqa: F811  (the fixture imported from dockertest is named as the test argument)
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from dockertest import BASE_IMAGE, engine  # noqa: F401 (fixture)
from installs import MODES, build_wheel, job_image, make_venv

HERE = Path(__file__).resolve().parent
APP = """import hydra

@hydra.main(version_base=None, config_path=None)
def main(cfg):
    pass

if __name__ == "__main__":
    main()
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """mode -> the python of a venv where mltrain is installed that way (built once)."""
    root = tmp_path_factory.mktemp("installs")
    wheel = build_wheel(root / "dist")
    return {mode: make_venv(root / mode, mode, wheel) for mode in MODES}


@pytest.mark.parametrize("mode", MODES)
def test_a_plain_hydra_app_lists_mltrains_plugins(installs: dict[str, Path], mode: str, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    result = subprocess.run([str(installs[mode]), "app.py", "--info", "plugins"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "MltrainLauncher" in result.stdout and "MltrainSweeper" in result.stdout
    presets = subprocess.run([str(installs[mode]), "app.py", "--info", "defaults-tree", "hydra/launcher=mltrain_ssh"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "hydra/launcher: mltrain_ssh" in presets.stdout, presets.stdout + presets.stderr


@pytest.fixture(scope="module")
def job_image_tag(installs: dict[str, Path], engine: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    wheel = installs["wheel"].parents[2] / "dist"
    (built,) = wheel.glob("mltrain-*.whl")
    return job_image(BASE_IMAGE, built, tmp_path_factory.mktemp("job-image"))


@pytest.mark.integration
def test_hydras_suites_pass_on_local_and_docker_in_every_install_mode(
        installs: dict[str, Path], job_image_tag: str, tmp_path: Path, base_env: dict[str, str]) -> None:
    started = {}
    for mode in MODES:
        folder = tmp_path / mode
        shared = folder / "t"
        shared.mkdir(parents=True)
        env = {**base_env, "MLTRAIN_HOME": str(folder / "workspace"), "MLTRAIN_TEST_INSTALL": mode,
               "MLTRAIN_TEST_JOB_IMAGE": job_image_tag, "MLTRAIN_TEST_SHARED": str(shared)}
        started[mode] = subprocess.Popen(
            [str(installs[mode]), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(shared),
             str(HERE / "suite_local.py"), str(HERE / "suite_docker.py")],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {mode: process.communicate(timeout=1200)[0] for mode, process in started.items()}
    for mode, process in started.items():
        output = outputs[mode]
        summary = output.strip().splitlines()[-1] if output.strip() else ""
        assert process.returncode == 0, f"{mode}:\n{output[-8000:]}"
        assert " failed" not in summary and " passed" in summary and "3 xfailed" in summary, (mode, summary)
        assert (tmp_path / mode / "workspace" / "runs").is_dir()  # every job was an mltrain run


@pytest.mark.integration
def test_a_docker_job_without_shared_paths_brings_its_folder_back(job_image_tag: str, tmp_path: Path,
                                                                 base_env: dict[str, str]) -> None:
    """The tutorial app (examples/hydra_app) on docker, nothing mounted: each job writes under
    $MLTRAIN_OUTPUT_DIR/hydra in its container, and its folder comes back into the sweep dir."""
    import shutil
    import sys

    app = tmp_path / "app"
    shutil.copytree(HERE.parents[1] / "examples" / "hydra_app", app)
    env = {**base_env, "MLTRAIN_HOME": str(tmp_path / "workspace")}
    result = subprocess.run(
        [sys.executable, "my_app.py", "-m", "db=mysql,postgresql", "hydra/launcher=mltrain_docker",
         "hydra.sweep.dir=multirun/x",
         f"hydra.launcher.overrides=['environment.image={job_image_tag}','environment.python=/opt/app/bin/python']"],
        cwd=app, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for num, driver in ((0, "mysql"), (1, "postgresql")):
        job = app / "multirun" / "x" / str(num)
        assert f"driver: {driver}" in (job / ".hydra" / "config.yaml").read_text()
        assert f"connecting to {driver}" in (job / "my_app.log").read_text()
    assert len(list((tmp_path / "workspace" / "runs").iterdir())) == 2


OPTUNA_APP = """import hydra
from hydra.core.config_store import ConfigStore

ConfigStore.instance().store(name="cfg", node={"x": 0.0})


@hydra.main(version_base=None, config_path=None, config_name="cfg")
def main(cfg):
    return (cfg.x - 2) ** 2


if __name__ == "__main__":
    main()
"""


@pytest.mark.integration
def test_hydras_optuna_sweeper_drives_mltrains_launcher(installs: dict[str, Path], tmp_path: Path,
                                                        base_env: dict[str, str]) -> None:
    """A third-party sweeper: each trial is an mltrain run, its objective the task's return value (JSON back).

    hydra-optuna-sweeper 1.3.0 pins optuna<3, so it gets a venv of its own: the wheel plus the plugin, from
    the index (pip's cache)."""
    import venv

    (wheel,) = (installs["wheel"].parents[2] / "dist").glob("mltrain-*.whl")
    folder = tmp_path / "optuna-venv"
    venv.EnvBuilder(with_pip=True).create(folder)
    python = str(folder / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel),
                    "hydra-optuna-sweeper"], check=True, capture_output=True, timeout=900)
    (tmp_path / "app.py").write_text(OPTUNA_APP)
    result = subprocess.run(
        [python, "app.py", "-m", "hydra/sweeper=optuna", "hydra/launcher=mltrain_local", "hydra.sweeper.n_trials=4",
         "hydra.sweeper.n_jobs=2", "x=interval(-5,5)"],
        cwd=tmp_path, env={**base_env, "MLTRAIN_HOME": str(tmp_path / "workspace")},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Best value:" in result.stdout + result.stderr
    assert len(list((tmp_path / "workspace" / "runs").iterdir())) == 4
