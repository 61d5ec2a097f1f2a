"""Early-termination policies on scripted metric curves."""

from __future__ import annotations

import math

from mltrain.config.schema import EarlyTerminationConfig
from mltrain.sweep.stopping import policy_for


def policy(goal: str = "min", **kwargs: object):  # type: ignore[no-untyped-def]
    return policy_for(EarlyTerminationConfig(**{"min_trials": 2, **kwargs}), goal)  # type: ignore[arg-type]


def test_no_policy() -> None:
    assert policy_for(EarlyTerminationConfig(), "min") is None


def test_bandit_slack_factor_min_and_max() -> None:
    bandit = policy(policy="bandit", slack_factor=0.2)
    curves = {"good": [1.0, 0.5], "ok": [1.0, 0.59], "bad": [1.0, 0.61]}
    assert bandit.should_stop("ok", curves) is None  # within 20% of the best 0.5
    assert "bandit" in str(bandit.should_stop("bad", curves))
    up = policy("max", policy="bandit", slack_factor=0.25)
    curves = {"good": [0.8], "ok": [0.65], "bad": [0.63]}  # max: stop below best / 1.25 = 0.64
    assert up.should_stop("ok", curves) is None
    assert up.should_stop("bad", curves) is not None


def test_bandit_slack_amount_and_the_gates() -> None:
    bandit = policy(policy="bandit", slack_amount=0.1, evaluation_interval=2, delay_evaluation=2)
    assert bandit.should_stop("bad", {"good": [1.0], "bad": [5.0]}) is None  # report 1: before the delay
    assert bandit.should_stop("bad", {"good": [1, 1, 1], "bad": [5, 5, 5]}) is None  # report 3: not on the interval
    assert bandit.should_stop("bad", {"good": [1, 1], "bad": [5, 5]}) is not None
    assert bandit.should_stop("bad", {"good": [1], "bad": [5, 5]}) is None  # no peer reached report 2
    alone = policy(policy="bandit", slack_amount=0.1, min_trials=3)
    assert alone.should_stop("bad", {"good": [1.0], "bad": [5.0]}) is None


def test_median_stopping() -> None:
    median = policy(policy="median", min_trials=3)
    curves = {"a": [1.0, 0.8, 0.6], "b": [1.0, 0.9, 0.7], "c": [1.2, 1.1, 1.0], "d": [2.0, 1.9, 1.8]}
    assert median.should_stop("a", curves) is None
    assert median.should_stop("d", curves) is not None  # best 1.8 > median of the others' averages


def test_truncation_stops_the_worst_share() -> None:
    trunc = policy(policy="truncation", truncation_percentage=25)
    curves = {"a": [0.1], "b": [0.2], "c": [0.3], "d": [0.9]}
    assert trunc.should_stop("d", curves) is not None
    assert trunc.should_stop("c", curves) is None
    assert policy(policy="truncation", truncation_percentage=20).should_stop("d", curves) is None  # 20% of 4: none


def test_nan_stops() -> None:
    bandit = policy(policy="bandit", slack_factor=0.1)
    assert bandit.should_stop("x", {"x": [math.nan], "y": [1.0]}) is not None



def test_a_nan_report_does_not_shield_a_bad_trial() -> None:
    """A NaN among a trial's reports is left out of its best: min() over [nan, ...] returns the NaN when it comes
    first, and every comparison with a NaN is false (the bad trial ran on)."""
    median = policy(policy="median", min_trials=3)
    curves = {"a": [1.0, 0.8], "b": [1.0, 0.9], "c": [1.2, 1.1], "d": [math.nan, 1.9]}
    assert "best 1.9" in str(median.should_stop("d", curves))
    assert median.should_stop("a", curves) is None
