"""``hydra/launcher=mltrain_ssh``: each job of the tutorial app a run on an SSH host (sshd on this machine, a
session of its own, the job's folder brought back from the host)."""

# ruff: noqa: F811  (the fixture imported from test_ssh is named as the test argument)
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sshtest import SshHost

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "targets" / "ssh"))
from test_ssh import local_sshd  # noqa: F401 (fixture)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hydra_app"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tutorial_app_jobs_run_over_ssh(local_sshd: SshHost, tmp_path: Path, base_env: dict[str, str]) -> None:
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app)
    mltrain = [f"{key}={value}" for key, value in local_sshd.compute().items()]
    mltrain.append(f"environment.interpreter={sys.executable}")  # the host's Python, with Hydra and mltrain
    listed = ",".join(f"'compute.{item}'" if not item.startswith("environment.") else f"'{item}'" for item in mltrain)
    result = subprocess.run(
        [sys.executable, "my_app.py", "-m", "db=mysql,postgresql", "hydra/launcher=mltrain_ssh",
         "hydra.sweep.dir=multirun/ssh", f"hydra.launcher.overrides=[{listed}]"],
        cwd=app, env={**base_env, "MLTRAIN_HOME": str(tmp_path / "workspace"), "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for num, driver in ((0, "mysql"), (1, "postgresql")):
        job = app / "multirun" / "ssh" / str(num)
        assert f"driver: {driver}" in (job / ".hydra" / "config.yaml").read_text()
        assert f"connecting to {driver}" in (job / "my_app.log").read_text()
    runs = list((tmp_path / "workspace" / "runs").iterdir())
    assert len(runs) == 2
