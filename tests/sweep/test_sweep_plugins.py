"""``mltrain -m`` with Hydra sweepers and launchers other than mltrain's: any installed one works, anything else is
one line naming the setting and the choices -- never an internal error."""

from __future__ import annotations

import pytest
from conftest import Project, assert_one_line_error

SWEEP = ("-m", "script=train.py", "params.x=1,2")


@pytest.mark.parametrize(("override", "fragments"), [
    ("hydra.launcher._target_=my_pkg.MyLauncher",
     ["hydra.launcher._target_=my_pkg.MyLauncher is not an installed Hydra launcher", "hydra_plugins package",
      "hydra/launcher=NAME (basic, mltrain"]),
    ("hydra.launcher._target_=hydra_plugins.nope.Nope", ["hydra_plugins.nope.Nope is not an installed Hydra launcher"]),
    ("hydra.launcher._target_=hydra_plugins.mltrain_plugins.sweeper.MltrainSweeper",
     ["MltrainSweeper is not an installed Hydra launcher"]),
    ("hydra.sweeper._target_=my_pkg.MySweeper",
     ["hydra.sweeper._target_=my_pkg.MySweeper is not an installed Hydra sweeper",
      "hydra/sweeper=NAME (basic, mltrain"]),
    ("hydra.launcher=null", ["hydra.launcher is not set", "hydra/launcher=NAME"]),
    ("+hydra.launcher.workers=4", ["hydra.launcher (hydra_plugins.mltrain_plugins.launcher.MltrainLauncher) could not "
                                   "be set up", "unexpected keyword argument 'workers'"]),
    ("+hydra.sweeper.workers=4", ["hydra.sweeper (hydra_plugins.mltrain_plugins.sweeper.MltrainSweeper) could not "
                                  "be set up"]),
])
def test_an_unusable_plugin_is_one_line(project: Project, override: str, fragments: list[str]) -> None:
    result = project.run(*SWEEP, override)
    assert_one_line_error(result, *fragments)
    assert "internal error" not in result.stderr
    assert not project.workspace.joinpath("runs").exists()


def test_hydras_basic_launcher_runs_the_trials_one_by_one_and_says_so(project: Project) -> None:
    result = project.run(*SWEEP, "hydra/launcher=basic")
    assert result.returncode == 0, result.stderr
    assert "trial 0 (script=train.py params.x=1) started as run" in result.stderr
    assert "trial 1 (script=train.py params.x=2) Completed" in result.stderr
    assert "through a Hydra launcher other than mltrain's, with no sweep record" in result.stderr
    assert len(project.runs()) == 2
    project.write("fail.py", "import sys\nsys.exit(3)\n")
    result = project.run("-m", "script=fail.py", "params.x=1,2", "hydra/launcher=basic")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("mltrain: error: run ") and "exited with code 3" in errors[0]
    assert "Error executing job" not in result.stderr and "Traceback" not in result.stderr


def test_hydras_basic_sweeper_with_mltrains_launcher_keeps_the_sweep_record(project: Project) -> None:
    result = project.run(*SWEEP, "hydra/sweeper=basic")
    assert result.returncode == 0, result.stderr
    assert "2 of 2 trials: 2 completed" in result.stdout


def test_detach_with_another_launcher_is_refused_before_any_trial(project: Project) -> None:
    assert_one_line_error(project.run("-m", "--detach", "script=train.py", "params.x=1,2", "hydra/launcher=basic"),
                          "--detach needs mltrain's launcher", "BasicLauncher")
    assert_one_line_error(project.run("-m", "--detach", "script=train.py", "params.x=1,2", "hydra/launcher=basic",
                                      "hydra/sweeper=basic"), "--detach needs mltrain's launcher")
    assert not project.workspace.joinpath("runs").exists()
