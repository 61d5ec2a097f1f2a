from __future__ import annotations

from pathlib import Path

import pytest
from installs import MODES, build_wheel, make_venv


@pytest.fixture(scope="session")
def installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """mode -> the python of a venv where mltrain is installed that way (built once per session)."""
    root = tmp_path_factory.mktemp("installs")
    wheel = build_wheel(root / "dist")
    return {mode: make_venv(root / mode, mode, wheel) for mode in MODES}


collect_ignore = ["suite_local.py"]  # run by test_install_modes.py, in each install mode's venv
