"""Hydra's LauncherTestSuite and IntegrationTestSuite against ``hydra/launcher=mltrain``, in each install mode.

Each mode's venv (see ``installs.py``) runs ``suite_local.py`` with pytest from outside the checkout, so
``import mltrain`` and Hydra's plugin scan see the installed package, as a user's app would.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from installs import MODES

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_hydras_suites_pass_on_the_local_target(installs: dict[str, Path], mode: str, tmp_path: Path,
                                               base_env: dict[str, str]) -> None:
    env = {**base_env, "MLTRAIN_HOME": str(tmp_path / "workspace"), "MLTRAIN_TEST_INSTALL": mode}
    result = subprocess.run(
        [str(installs[mode]), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t"),
         str(HERE / "suite_local.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " failed" not in summary and "passed" in summary, summary
    assert os.path.isdir(tmp_path / "workspace" / "runs")  # every job was an mltrain run
