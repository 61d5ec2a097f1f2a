"""A target is one folder plus one registry line: ``nearby`` (tests/targets/nearby/) is defined only in this folder.

The CLI is run with that one registry line added in front of it (``LAUNCH``) and the target's yaml in the
test project's own ``conf/compute/``; every other place a target used to be written down by hand -- the
config schema, ``--help``, the valid-choices messages, which frameworks it runs, a sweep's concurrency --
must follow from the registry, or these fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error

HERE = Path(__file__).resolve().parent
REGISTRY_LINE = 'register("nearby", "nearby", config="NearbyCompute", executor="NearbyExecutor")'
LAUNCH = f"import sys; from mltrain.targets import register; {REGISTRY_LINE}; " \
         "from mltrain.cli.main import main; sys.exit(main())"

GREET = """
import os
print("greeting:", os.environ.get("NEARBY_GREETING"))
"""


def mltrain(project: Project, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``mltrain ARGS`` in ``project``, in a process whose target registry has the ``nearby`` line too."""
    env = {**project.env, "PYTHONPATH": str(HERE)}
    return subprocess.run([sys.executable, "-c", LAUNCH, *args], cwd=project.root, env=env, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def nearby(project: Project) -> Project:
    project.write("conf/compute/nearby.yaml", """\
        # a target defined outside mltrain: tests/targets/nearby
        type: nearby
        greeting: hi from the registry
        cancel_grace: 5.0
        """)
    project.write("greet.py", GREET)
    return project


def test_a_job_runs_on_a_target_defined_in_a_test_folder(nearby: Project) -> None:
    result = mltrain(nearby, "script=greet.py", "compute=nearby")
    assert result.returncode == 0, result.stderr
    assert "greeting: hi from the registry" in result.stdout  # the yaml's value reached the executor's launch
    [record] = nearby.runs()
    assert record["status"] == "Completed" and record["compute"] == "nearby"
    overridden = mltrain(nearby, "script=greet.py", "compute=nearby", "compute.greeting=hey")
    assert "greeting: hey" in overridden.stdout, overridden.stderr  # typed, overridable like any target's key


def test_the_plan_describes_it(nearby: Project) -> None:
    result = mltrain(nearby, "plan", "--json", "script=greet.py", "compute=nearby")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["target"] == "nearby (hi from the registry)"


def test_help_lists_it_with_the_packaged_targets(nearby: Project) -> None:
    result = mltrain(nearby, "--help")
    assert "compute (local, docker, ssh, spark, ray, nearby)" in result.stdout
    assert "framework (python, pyspark, distributed)" in result.stdout
    assert "environment (user_managed, venv, docker, presets: " in result.stdout


def test_errors_list_it_and_name_its_keys(nearby: Project) -> None:
    assert_one_line_error(mltrain(nearby, "script=greet.py", "compute=nearby", "compute.type=faraway"),
                          "compute.type='faraway' is not known", "valid types: docker, local, nearby, ray, spark, ssh")
    assert_one_line_error(mltrain(nearby, "script=greet.py", "compute=faraway"),
                          "unknown compute option 'faraway'", "nearby")
    assert_one_line_error(mltrain(nearby, "script=greet.py", "compute=nearby", "+compute.greting=hey"),
                          "compute.greting: unknown key for compute type 'nearby'", "greeting")
    assert_one_line_error(mltrain(nearby, "script=greet.py", "compute=nearby", "compute.cancel_grace=soon"),
                          "compute.cancel_grace")


def test_the_frameworks_it_runs_are_its_own_answer(nearby: Project) -> None:
    assert_one_line_error(mltrain(nearby, "script=greet.py", "compute=nearby", "framework=pyspark"),
                          "framework=pyspark cannot run on compute=nearby", "add framework=python",
                          "compute=local or compute=spark")


def test_a_sweep_runs_as_many_trials_at_once_as_it_says(nearby: Project) -> None:
    result = mltrain(nearby, "-m", "script=greet.py", "compute=nearby", "params.n=1,2,3,4", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "4 trials, up to 3 at once" in result.stderr + result.stdout  # NearbyExecutor.default_concurrency
    assert sorted(str(r["status"]) for r in nearby.runs()) == ["Completed"] * 4
