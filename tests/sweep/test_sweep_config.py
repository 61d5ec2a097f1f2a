"""``sweep:`` settings: defaults, and one-line errors that say what to set."""

from __future__ import annotations

import pytest
from conftest import Project, assert_one_line_error
from omegaconf import OmegaConf

from mltrain.config.schema import SweepConfig, validate_sweep
from mltrain.errors import ConfigError


def test_defaults_without_a_sweep_block() -> None:
    assert validate_sweep(None) == SweepConfig()
    assert validate_sweep(OmegaConf.create({"max_concurrent": 3})).max_concurrent == 3


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"sampler": "bayes"}, "sweep.sampler='bayes': choose one of grid, random, tpe"),
    ({"goal": "up"}, "sweep.goal='up': choose one of min, max"),
    ({"sampler": "random"}, "needs sweep.n_trials=N"),
    ({"sampler": "tpe", "n_trials": 5}, "sweep.sampler=tpe needs sweep.primary_metric"),
    ({"early_termination": {"policy": "median"}}, "needs sweep.primary_metric"),
    ({"primary_metric": "loss", "early_termination": {"policy": "bandit"}}, "exactly one of"),
    ({"primary_metric": "loss", "early_termination": {"policy": "truncation"}}, "truncation_percentage between"),
    ({"primary_metric": "loss", "early_termination": {"policy": "median", "slack_factor": 0.1}},
     "slack_factor has no effect with policy=median"),
    ({"early_termination": {"policy": "stop"}}, "choose one of bandit, median, truncation"),
    ({"max_concurrent": 0}, "sweep.max_concurrent=0: must be at least 1"),
    ({"bogus": 1}, "unknown key"),
    ({"max_failures": "many"}, "sweep.max_failures"),
])
def test_invalid_settings(settings: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_sweep(OmegaConf.create(settings))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_reports_one_line(project: Project) -> None:
    assert_one_line_error(project.run("-m", "script=train.py", "params.a=1,2", "sweep.sampler=random"),
                          "sweep.sampler=random needs sweep.n_trials=N")
    assert_one_line_error(project.run("-m", "script=train.py", "params.a=1,2", "sweep.bogus=1"), "sweep.bogus")
    assert not project.workspace.joinpath("runs").exists() or not any(project.workspace.joinpath("runs").iterdir())


def _under_one_gib() -> None:
    """A child's address space capped at 1 GiB: listing a 10**8-trial grid could not fit (a real sweep does)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_a_huge_grid_is_counted_and_refused_before_any_trial_is_built(project: Project) -> None:
    import subprocess

    from conftest import MLTRAIN

    hundred = ",".join(str(i) for i in range(100))
    args = ["-m", "script=train.py", *(f"params.{k}={hundred}" for k in "abcd")]
    # Memory stays flat: the count is a product, never a list (capped address space, not a timing).
    result = subprocess.run([MLTRAIN, *args], cwd=project.root, env=project.env, text=True, capture_output=True,
                            timeout=120, stdin=subprocess.DEVNULL, preexec_fn=_under_one_gib)
    assert_one_line_error(result, "the grid has 100,000,000 trials", "params.a 100 x params.b 100",
                          "over sweep.max_trials=10,000", "sweep.max_trials=100000000")
    assert not project.workspace.joinpath("runs").exists()
    # A range is counted, not listed, whatever its length
    result = subprocess.run([MLTRAIN, "-m", "script=train.py", "params.seed=range(0,1000000000)", "params.b=1,2"],
                            cwd=project.root, env=project.env, text=True, capture_output=True, timeout=120,
                            stdin=subprocess.DEVNULL, preexec_fn=_under_one_gib)
    assert_one_line_error(result, "the grid has 2,000,000,000 trials")


def test_raising_max_trials_lets_a_modest_grid_through(project: Project) -> None:
    args = ("-m", "script=train.py", "params.a=1,2,3", "params.b=x,y")
    assert_one_line_error(project.run(*args, "sweep.max_trials=5"), "the grid has 6 trials", "sweep.max_trials=6")
    assert_one_line_error(project.run("-m", "script=train.py", "params.a=1,2", "sweep.sampler=random",
                                      "sweep.n_trials=7", "sweep.max_trials=5"),
                          "sweep.n_trials=7 is over sweep.max_trials=5", "sweep.max_trials=7")
    result = project.run(*args, "sweep.max_trials=6", "sweep.max_concurrent=2")
    assert result.returncode == 0, result.stderr
    assert "6 of 6 trials: 6 completed" in result.stdout
    # n_trials caps a grid below the limit: only the trials that run are counted
    result = project.run(*args, "sweep.max_trials=4", "sweep.n_trials=4", "sweep.max_concurrent=2")
    assert result.returncode == 0, result.stderr
    assert "4 of 4 trials" in result.stdout


def test_max_trials_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"sweep\.max_trials=0: must be at least 1"):
        validate_sweep(OmegaConf.create({"max_trials": 0}))
