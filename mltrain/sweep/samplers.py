"""Which trial comes next: grid and random (all known up front) and TPE (Bayesian, on Optuna's ask/tell API).

A sampler hands out :class:`Suggestion` s and is told each one's
:class:`Outcome`. ``upfront()`` is what the launcher composes and validates
before the first trial starts: every trial for grid and random; for TPE,
whose trials depend on earlier results, a probe set that touches every
choice and both bounds of every interval.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from mltrain.errors import ConfigError
from mltrain.sweep.space import Choice, Interval, Space

COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"
DEFAULT_MAX_TRIALS = 10_000  # sweep.max_trials


@dataclass(frozen=True)
class Suggestion:
    overrides: list[str]  # the whole trial, for composing
    swept: list[str]  # the varying part, for showing and matching
    token: Any = None  # the sampler's own handle on it


@dataclass(frozen=True)
class Outcome:
    state: str  # COMPLETE | PRUNED | FAILED
    value: float | None = None  # the primary metric's last value
    curve: list[float] = field(default_factory=list)  # every reported value, in order


def suggest(space: Space, values: dict[str, str], token: Any = None) -> Suggestion:
    return Suggestion(space.trial(values), space.swept(values), token)


class Sampler(ABC):
    upfront_are_trials = True  # upfront() is the whole sweep (else: probes to validate, not to run)

    @property
    @abstractmethod
    def planned(self) -> int:
        """How many trials the sweep has in all."""

    @abstractmethod
    def upfront(self) -> list[Suggestion]:
        """Compose and validate these before the first trial starts."""

    @abstractmethod
    def ask(self) -> Suggestion | None:
        """The next trial; None when the sampler has handed out all it will."""

    def tell(self, suggestion: Suggestion, outcome: Outcome) -> None:  # noqa: B027 (grid and random need no news)
        """How a suggested trial went."""

    def restore(self, swept: list[str], outcome: Outcome) -> None:  # noqa: B027
        """A trial that ended before this sampler existed (a resumed sweep)."""


class ListSampler(Sampler):
    """Grid (every combination), random (``n_trials`` independent draws), or the jobs Hydra hands a launcher."""

    def __init__(self, trials: list[Suggestion]) -> None:
        self._trials = trials
        self._next = 0

    @property
    def planned(self) -> int:
        return len(self._trials)

    def upfront(self) -> list[Suggestion]:
        return list(self._trials)

    def ask(self) -> Suggestion | None:
        if self._next >= len(self._trials):
            return None
        self._next += 1
        return self._trials[self._next - 1]


class TpeSampler(Sampler):
    """Optuna's TPE through ask/tell: any current Optuna, an in-memory study rebuilt from the run history."""

    upfront_are_trials = False

    def __init__(self, space: Space, n_trials: int, goal: str, seed: int) -> None:
        self.space = space
        try:
            import optuna
        except ImportError:
            raise ConfigError("sweep.sampler=tpe needs Optuna: pip install 'mltrain[optuna]'") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self._n_trials = n_trials
        self._asked = 0
        self._distributions = {d.key: self._distribution(d) for d in space.dimensions}
        sampler = optuna.samplers.TPESampler(seed=seed)
        self._study = optuna.create_study(direction="minimize" if goal == "min" else "maximize", sampler=sampler)

    def _distribution(self, dim: Choice | Interval) -> Any:
        dist = self._optuna.distributions
        if isinstance(dim, Choice):
            return dist.CategoricalDistribution(list(dim.values))
        if dim.integer:
            return dist.IntDistribution(int(dim.low), int(dim.high), log=dim.log)
        return dist.FloatDistribution(dim.low, dim.high, log=dim.log)

    @property
    def planned(self) -> int:
        return self._n_trials

    def upfront(self) -> list[Suggestion]:
        first: dict[str, str] = {}
        probes: list[dict[str, str]] = []
        for dim in self.space.dimensions:
            options = list(dim.values) if isinstance(dim, Choice) else [dim.render(dim.low), dim.render(dim.high)]
            first.setdefault(dim.key, options[0])
            probes += [{dim.key: option} for option in options]
        return [suggest(self.space, first | probe) for probe in probes or [{}]]

    def ask(self) -> Suggestion | None:
        if self._asked >= self._n_trials:
            return None
        self._asked += 1
        trial = self._study.ask(self._distributions)
        return suggest(self.space, self._rendered(trial.params), trial)

    def _rendered(self, params: dict[str, Any]) -> dict[str, str]:
        values = {}
        for dim in self.space.dimensions:
            value = params[dim.key]
            values[dim.key] = value if isinstance(dim, Choice) else dim.render(value)
        return values

    def tell(self, suggestion: Suggestion, outcome: Outcome) -> None:
        trial = suggestion.token
        if outcome.state == COMPLETE and outcome.value is not None:
            self._study.tell(trial, outcome.value)
            return
        for step, value in enumerate(outcome.curve):
            trial.report(value, step)
        state = self._optuna.trial.TrialState
        self._study.tell(trial, state=state.PRUNED if outcome.state == PRUNED else state.FAIL)

    def restore(self, swept: list[str], outcome: Outcome) -> None:
        values = self.space.values_of(swept)
        if set(values) != set(self._distributions):
            return  # an earlier trial of a different space: nothing to learn from
        params = {d.key: (values[d.key] if isinstance(d, Choice) else d.parse(values[d.key]))
                  for d in self.space.dimensions}
        state = self._optuna.trial.TrialState
        complete = outcome.state == COMPLETE and outcome.value is not None
        self._study.add_trial(self._optuna.trial.create_trial(
            params=params, distributions=self._distributions, value=outcome.value if complete else None,
            state=state.COMPLETE if complete else (state.PRUNED if outcome.state == PRUNED else state.FAIL),
            intermediate_values=dict(enumerate(outcome.curve)),
        ))
        self._asked += 1


def check_size(kind: str, space: Space, *, n_trials: int | None, max_trials: int) -> int:
    """How many trials the sweep plans, known before any is built (a grid's is a product of counts);
    a one-line ConfigError past ``max_trials``, so a ``100x100x100x100`` grid costs nothing but its message."""
    if kind == "grid":
        size = space.grid_size()
        planned = min(size, n_trials or size)
        if planned > max_trials:
            raise ConfigError(
                f"the grid has {size:,} trials ({space.grid_shape()}), over sweep.max_trials={max_trials:,}; "
                f"sweep fewer values, cap it with sweep.n_trials=N, or raise the limit: sweep.max_trials={size}"
            )
        return planned
    assert n_trials is not None  # validate_sweep guarantees it
    if n_trials > max_trials:
        raise ConfigError(f"sweep.n_trials={n_trials:,} is over sweep.max_trials={max_trials:,}; ask for fewer "
                          f"trials, or raise the limit: sweep.max_trials={n_trials}")
    if kind == "tpe":
        for dim in space.dimensions:  # Optuna lists a categorical's choices, and each is validated up front
            if isinstance(dim, Choice) and len(dim.values) > max_trials:
                raise ConfigError(
                    f"{dim.key}: {len(dim.values):,} choices are too many for sweep.sampler=tpe (at most "
                    f"sweep.max_trials={max_trials:,}); use int(interval(low, high)) for a numeric range")
    return n_trials


def make_sampler(kind: str, space: Space, *, n_trials: int | None, goal: str, seed: int,
                 max_trials: int = DEFAULT_MAX_TRIALS) -> Sampler:
    """The sampler ``sweep.sampler`` names (one registry: this function), after :func:`check_size`."""
    planned = check_size(kind, space, n_trials=n_trials, max_trials=max_trials)
    if kind == "grid":
        return ListSampler([suggest(space, values) for values in space.grid(planned)])
    if kind == "random":
        rng = random.Random(seed)
        return ListSampler([suggest(space, space.sample(rng)) for _ in range(planned)])
    return TpeSampler(space, planned, goal, seed)
