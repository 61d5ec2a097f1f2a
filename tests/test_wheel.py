"""mltrain works installed from a built wheel in a clean venv, not only as an editable install."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest
from buildtest import checkout_build_lock

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_in_fresh_venv(tmp_path: Path, base_env: dict[str, str]) -> None:
    dist = tmp_path / "dist"
    with checkout_build_lock():
        subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
            check=True,
            capture_output=True,
            timeout=600,
        )
    (wheel,) = dist.glob("mltrain-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", str(wheel)], check=True, capture_output=True, timeout=900
    )
    project = tmp_path / "proj"
    project.mkdir()
    (project / "hello.py").write_text("print('hello from the wheel')\n")
    result = subprocess.run(
        [str(env_dir / "bin" / "mltrain"), "script=hello.py"],
        cwd=project,
        env=base_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "hello from the wheel" in result.stdout
    plan = subprocess.run(
        [str(env_dir / "bin" / "mltrain"), "plan", "script=hello.py", "compute=local"],
        cwd=project,
        env=base_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plan.returncode == 0 and "SNAPSHOT" in plan.stdout
