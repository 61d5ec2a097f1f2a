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
