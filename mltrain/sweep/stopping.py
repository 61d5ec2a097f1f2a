"""Early termination: whether a running trial should stop, from the primary metric every trial has streamed.

Pure functions of the curves (each trial's reports of the primary metric, in
order), so a scripted set of curves tests them exactly. The three policies
are HyperDrive's:

* **bandit** -- stop a trial whose value at report *k* is worse than the best
  value any trial had at report *k*, by more than ``slack_amount`` or by more
  than the ratio ``slack_factor`` (for ``goal=max``: below ``best / (1 + slack)``).
* **median** -- stop a trial whose best value so far is worse than the median
  of the other trials' running averages over their first *k* reports.
* **truncation** -- at report *k*, stop the trial if it is among the worst
  ``truncation_percentage`` percent of the trials that reached *k*.

A policy acts at report *k* when *k* >= ``delay_evaluation``, *k* is a
multiple of ``evaluation_interval``, and at least ``min_trials`` trials (this
one included) have reported *k* times.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

Curves = Mapping[Any, Sequence[float]]


class Policy:
    def __init__(self, config: Any, goal: str) -> None:
        self.config = config
        self.maximize = goal == "max"

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def _best(self, values: Sequence[float]) -> float:
        """The best of ``values``, a NaN among them (a peer that diverged) left out."""
        numbers = [v for v in values if not math.isnan(v)] or [math.nan]
        return max(numbers) if self.maximize else min(numbers)

    def should_stop(self, trial: Any, curves: Curves) -> str | None:
        """Why ``trial`` should stop at its newest report, or None (see the module docstring for when it acts)."""
        k = len(curves[trial])
        cfg = self.config
        if k < max(1, cfg.delay_evaluation) or k % cfg.evaluation_interval:
            return None
        peers = {t: c for t, c in curves.items() if t != trial and len(c) >= k}
        if len(peers) + 1 < cfg.min_trials:
            return None
        values = [v for v in curves[trial][:k] if not math.isnan(v)]
        if not values:
            return f"{cfg.policy}: the metric is NaN at report {k}"
        return self._judge(trial, k, curves[trial], peers)

    def _judge(self, trial: Any, k: int, curve: Sequence[float], peers: Curves) -> str | None:
        raise NotImplementedError


class Bandit(Policy):
    def _judge(self, trial: Any, k: int, curve: Sequence[float], peers: Curves) -> str | None:
        value = curve[k - 1]
        best = self._best([value, *(c[k - 1] for c in peers.values())])
        cfg = self.config
        if cfg.slack_amount is not None:
            margin = cfg.slack_amount
            allowed = f"{cfg.slack_amount:g}"
        else:
            ratio = cfg.slack_factor / (1 + cfg.slack_factor) if self.maximize else cfg.slack_factor
            margin = abs(best) * ratio
            allowed = f"{cfg.slack_factor:g}x"
        limit = best - margin if self.maximize else best + margin
        if self._better(limit, value):
            return f"bandit: {value:g} at report {k} is more than {allowed} from the best {best:g}"
        return None


class Median(Policy):
    def _judge(self, trial: Any, k: int, curve: Sequence[float], peers: Curves) -> str | None:
        median = statistics.median(statistics.fmean(c[:k]) for c in peers.values())
        best = self._best(curve[:k])
        if self._better(median, best):
            return f"median: best {best:g} by report {k} is worse than the median running average {median:g}"
        return None


class Truncation(Policy):
    def _judge(self, trial: Any, k: int, curve: Sequence[float], peers: Curves) -> str | None:
        ranked = sorted([(curve[k - 1], 0), *((c[k - 1], 1) for c in peers.values())],
                        key=lambda item: (-item[0] if self.maximize else item[0], item[1]))
        cut = len(ranked) * self.config.truncation_percentage // 100
        worst = ranked[len(ranked) - cut:] if cut else []
        if any(is_this == 0 for _, is_this in worst):
            return (f"truncation: {curve[k - 1]:g} at report {k} is in the worst "
                    f"{self.config.truncation_percentage}% of {len(ranked)} trials")
        return None


POLICIES: dict[str, type[Policy]] = {"bandit": Bandit, "median": Median, "truncation": Truncation}


def policy_for(config: Any, goal: str) -> Policy | None:
    """The policy ``sweep.early_termination.policy`` names, or None."""
    return POLICIES[config.policy](config, goal) if config.policy else None
