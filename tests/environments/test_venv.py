"""environment=venv: built once per content hash, reused; a failing build fails the run with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from buildtest import make_wheel
from conftest import Project, assert_one_line_error


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_venv_built_once_and_reused(project: Project, tmp_path: Path, installer: str) -> None:
    wheel = make_wheel(tmp_path)
    project.write("uses_pkg.py", "import sys, mltrain_probe_pkg\nprint('value', mltrain_probe_pkg.VALUE, sys.prefix)\n")
    args = [
        "script=uses_pkg.py",
        "environment=venv",
        f"environment.packages=[{wheel}]",
        f"environment.installer={installer}",
        # offline either way: uv and pip spell it differently
        "environment.pip_args=[--offline]" if installer == "uv" else "environment.pip_args=[--no-index]",
    ]
    first = project.run(*args, check=True)
    assert "value 42" in first.stdout
    assert "building venv" in first.stderr
    second = project.run(*args, check=True)
    assert "value 42" in second.stdout
    assert "building venv" not in second.stderr
    records = project.runs()
    assert records[0]["env_fingerprint"] == records[1]["env_fingerprint"]
    freeze = (project.workspace / "runs" / str(records[0]["id"]) / "environment.txt").read_text()
    assert "mltrain_probe_pkg==1.0" in freeze.replace("-", "_")
    plan = json.loads(project.run("plan", "--json", *args, check=True).stdout)
    assert next(s for s in plan["stages"] if s["name"] == "ENVIRONMENT")["cached"] is True


def test_failing_build_fails_the_run(project: Project) -> None:
    result = project.run(
        "script=train.py",
        "environment=venv",
        "environment.installer=pip",
        "environment.packages=['surely-not-a-package-mltrain-xyz==9.9']",
        "environment.pip_args=[--no-index]",
    )
    # the build's own output streams first; the error is the last line, and there is no traceback
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mltrain: error: environment build failed"), last
    assert "No matching distribution" in last
    (record,) = project.runs()
    assert record["status"] == "Failed"
    assert "environment build failed" in str(record["reason"])


def _environment_fingerprint(project: Project) -> str:
    plan = json.loads(
        project.run(
            "plan", "--json", "script=train.py", "environment=venv", "environment.requirements=requirements.txt",
            check=True,
        ).stdout
    )
    return str(next(s for s in plan["stages"] if s["name"] == "ENVIRONMENT")["fingerprint"])


def test_requirements_file_counts_in_fingerprint(project: Project) -> None:
    project.write("requirements.txt", "# nothing\n")
    one = _environment_fingerprint(project)
    project.write("requirements.txt", "# still nothing, but different\n")
    two = _environment_fingerprint(project)
    assert one != two
    assert_one_line_error(
        project.run("plan", "script=train.py", "environment=venv", "environment.requirements=nope.txt"),
        "environment.requirements",
        "nope.txt",
    )
