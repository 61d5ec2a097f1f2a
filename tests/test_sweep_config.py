"""``sweep:`` settings: defaults, and one-line errors that say what to set."""

from __future__ import annotations

import pytest
from conftest import Project, assert_one_line_error
from omegaconf import OmegaConf

from mltrain.config import SweepConfig, validate_sweep
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
