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

import decimal
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from mltrain.errors import ConfigError
from mltrain.util.sequences import IndexedStrings

LISTED_MAX: Final = 100_000
"""A ``range()`` with more values than this is not listed but computed on demand (see :class:`RangeValues`)."""


class RangeValues(IndexedStrings):
    """The values of a long ``range(start, stop, step)`` as override text, computed by index, never listed.

    ``range(0, 10**9)`` on a command line is a valid sweep for a random
    sampler, and a grid over it must be counted (and refused) without
    building a billion strings. Short ranges are listed by Hydra itself.
    """

    def __init__(self, start: Any, stop: Any, step: Any) -> None:
        self._key = (start, stop, step)
        self.integer = all(isinstance(v, int) for v in (start, stop, step))
        if self.integer:
            self._ints = range(start, stop, step)
            self._len = len(self._ints)
        else:  # Hydra's FloatRange steps in Decimal from the floats' exact values
            self._start, self._step = decimal.Decimal(start), decimal.Decimal(step)
            span = (decimal.Decimal(stop) - self._start) / self._step
            self._len = max(0, math.ceil(span))

    def __len__(self) -> int:
        return self._len

    def _item(self, index: int) -> str:
        if self.integer:
            return str(self._ints[index])
        return str(float(self._start + index * self._step))

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(self._len))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeValues) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"RangeValues({self[0] if self._len else ''}..., {self._len} values)"


@dataclass(frozen=True)
class Choice:
    key: str  # the override's key element: params.lr, +params.x, compute, db@pkg
    values: Sequence[str]  # each as it is written in an override (a tuple, or RangeValues for a long range)


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

    def _choices(self) -> list[Choice]:
        intervals = [d.key for d in self.dimensions if isinstance(d, Interval)]
        if intervals:
            raise ConfigError(
                f"{intervals[0]}: interval() needs sweep.sampler=random or tpe (a grid takes lists, choice() "
                "and range())"
            )
        return [d for d in self.dimensions if isinstance(d, Choice)]

    def grid_size(self) -> int:
        """How many combinations the grid has: a product of counts, nothing listed."""
        return math.prod(len(c.values) for c in self._choices())

    def grid_shape(self) -> str:
        """``params.a 100 x params.b 3``: where a grid's size comes from, for a message."""
        return " x ".join(f"{c.key} {len(c.values):,}" for c in self._choices())

    def grid(self, limit: int | None = None) -> list[dict[str, str]]:
        """The first ``limit`` (default: all) combinations, the last key varying fastest (the order Hydra's
        basic sweeper launches). Built by index, so a cut-off grid costs only the combinations it returns."""
        choices = self._choices()
        size = self.grid_size()
        keys = [c.key for c in choices]
        combos = []
        for number in range(size if limit is None else min(size, limit)):
            picked = []
            for choice in reversed(choices):
                number, index = divmod(number, len(choice.values))
                picked.append(choice.values[index])
            combos.append(dict(zip(keys, reversed(picked), strict=True)))
        return combos

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
    values: Sequence[str] | None = _range_values(key, value)
    if values is None:
        values = tuple(override.sweep_string_iterator())
    if not values:
        raise ConfigError(f"{key}: the sweep has no values")
    return Choice(key, values)


def _range_values(key: str, value: Any) -> RangeValues | None:
    """A long ``range()`` as values computed on demand; None for anything Hydra should list itself."""
    from hydra.core.override_parser.types import RangeSweep

    if not isinstance(value, RangeSweep) or value.start is None or value.stop is None or not value.step:
        return None
    values = RangeValues(value.start, value.stop, value.step)
    if len(values) <= LISTED_MAX:
        return None
    if value.shuffle:
        raise ConfigError(f"{key}: shuffle(range(...)) of {len(values):,} values is too many to shuffle "
                          f"(at most {LISTED_MAX:,}); use a shorter range, or sweep.sampler=random")
    return values
