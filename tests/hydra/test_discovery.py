"""Any Hydra app finds mltrain's plugins, however mltrain was installed (issue 15)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from installs import MODES

APP = """import hydra

@hydra.main(version_base=None, config_path=None)
def main(cfg):
    pass

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_a_plain_hydra_app_lists_mltrains_plugins(installs: dict[str, Path], mode: str, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    result = subprocess.run([str(installs[mode]), "app.py", "--info", "plugins"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "MltrainLauncher" in result.stdout
    assert "MltrainSweeper" in result.stdout
