"""A sweep's search space, written in Hydra's own sweep syntax, and the two ways to walk it without a model.

On the command line, or as ``sweep.space`` entries in a config (``{key: expression}``)::

    params.lr=0.1,0.01                     a choice: grid takes each, random/tpe pick one
    params.opt=choice(adam,sgd)            the same
    params.depth=range(2,8,2)              2, 4, 6
    params.lr=interval(1e-4,0.1)           uniform            (random and tpe only)
    params.lr=tag(log,interval(1e-4,0.1))  log-uniform
    params.units=int(interval(16,256))     integers; tag(int, interval(16, 256)) says the same

Every other override stays fixed in every trial. A trial is the list of
overrides in the order the keys were first given -- exactly what Hydra's
basic sweeper would compose -- so ``grid`` runs the same jobs Hydra would.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mltrain.errors import ConfigError


@dataclass(frozen=True)
class Choice:
    key: str  # the override's key element: params.lr, +params.x, compute, db@pkg
    values: tuple[str, ...]  # each as it is written in an override


@dataclass(frozen=True)
class Interval:
    key: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def render(self, value: float) -> str:
        return str(round(value)) if self.integer else repr(float(value))

    def parse(self, text: str) -> float:
        return int(text) if self.integer else float(text)


Dimension = Choice | Interval


@dataclass(frozen=True)
class Space:
    """The keys in order, each either a fixed ``key=value`` override or a dimension."""

    entries: tuple[tuple[str, str | Dimension], ...]

    @property
    def dimensions(self) -> list[Dimension]:
        return [entry for _, entry in self.entries if not isinstance(entry, str)]

    def trial(self, values: Mapping[str, str]) -> list[str]:
        """The overrides of one trial: fixed ones as given, each dimension at ``values[key]``."""
        return [entry if isinstance(entry, str) else f"{key}={values[key]}" for key, entry in self.entries]

    def swept(self, values: Mapping[str, str]) -> list[str]:
        """Only the overrides that vary: what names a trial in a table."""
        return [f"{d.key}={values[d.key]}" for d in self.dimensions]

    def grid(self) -> list[dict[str, str]]:
        """Every combination, the last key varying fastest (the order Hydra's basic sweeper launches)."""
        intervals = [d.key for d in self.dimensions if isinstance(d, Interval)]
        if intervals:
            raise ConfigError(
                f"{intervals[0]}: interval() needs sweep.sampler=random or tpe (a grid takes lists, choice() "
                "and range())"
            )
        choices = [d for d in self.dimensions if isinstance(d, Choice)]
        return [dict(zip([c.key for c in choices], combo, strict=True))
                for combo in itertools.product(*(c.values for c in choices))]

    def sample(self, rng: random.Random) -> dict[str, str]:
        """One uniform draw (log-uniform for ``tag(log, ...)``) from every dimension."""
        values = {}
        for dim in self.dimensions:
            if isinstance(dim, Choice):
                values[dim.key] = rng.choice(dim.values)
            elif dim.integer:
                low, high = math.ceil(dim.low), math.floor(dim.high)
                values[dim.key] = dim.render(
                    round(math.exp(rng.uniform(math.log(low), math.log(high)))) if dim.log else rng.randint(low, high)
                )
            elif dim.log:
                values[dim.key] = dim.render(math.exp(rng.uniform(math.log(dim.low), math.log(dim.high))))
            else:
                values[dim.key] = dim.render(rng.uniform(dim.low, dim.high))
        return values

    def values_of(self, swept: Sequence[str]) -> dict[str, str]:
        """Inverse of :meth:`swept`: ``["params.lr=0.1"]`` -> ``{"params.lr": "0.1"}``."""
        keys = {d.key for d in self.dimensions}
        pairs = (item.split("=", 1) for item in swept)
        return {key: value for key, value in pairs if key in keys}


def parse_space(arguments: Sequence[str], extra: Mapping[str, str], config_loader: Any = None) -> Space:
    """Parse the command line's overrides plus ``sweep.space`` (the command line wins on the same key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create(config_loader=config_loader)
    given = {text.split("=", 1)[0].lstrip("+~") for text in arguments}
    texts = list(arguments) + [f"{key}={expr}" for key, expr in extra.items() if key.lstrip("+~") not in given]
    entries: dict[str, str | Dimension] = {}
    for text in texts:
        try:
            override = parser.parse_override(text)
        except OverrideParseException as exc:
            raise ConfigError(f"malformed override {text!r}: {str(exc).splitlines()[0]}") from exc
        key = override.get_key_element()
        if override.is_sweep_override():
            name = override.key_or_group
            if name == "sweep" or name.startswith(("sweep.", "hydra.", "workspace.")):
                raise ConfigError(f"{text}: {name.split('.')[0]}.* cannot vary between trials; give one value")
            entries[key] = _dimension(key, override)
        else:
            entries[key] = f"{key}={override.get_value_element_as_str()}"
    return Space(tuple(entries.items()))


def _dimension(key: str, override: Any) -> Dimension:
    from hydra.core.override_parser.types import IntervalSweep

    value = override.value()
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        assert low is not None and high is not None
        integer = "int" in value.tags or (isinstance(low, int) and isinstance(high, int))
        log = "log" in value.tags
        if not low < high:
            raise ConfigError(f"{key}=interval({low}, {high}): the lower bound must be below the upper one")
        if log and low <= 0:
            raise ConfigError(f"{key}: a log interval needs a lower bound above 0, got {low}")
        return Interval(key, float(low), float(high), log=log, integer=integer)
    values = tuple(override.sweep_string_iterator())
    if not values:
        raise ConfigError(f"{key}: the sweep has no values")
    return Choice(key, values)
