"""The search space (Hydra's sweep syntax) and the samplers that walk it."""

from __future__ import annotations

import math
import random

import pytest
from conftest import need_optuna
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from mltrain.errors import ConfigError
from mltrain.sweep.samplers import COMPLETE, FAILED, ListSampler, Outcome, make_sampler
from mltrain.sweep.space import Choice, Interval, parse_space


def test_grid_is_hydras_basic_sweeper_order() -> None:
    args = ["script=train.py", "params.lr=0.1,0.01", "params.opt=choice(adam,sgd)", "+params.new=range(1,3)"]
    space = parse_space(args, {})
    ours = [space.trial(values) for values in space.grid()]
    hydra = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)[0]
    assert ours == hydra
    assert space.swept(space.grid()[0]) == ["params.lr=0.1", "params.opt=adam", "+params.new=1"]


def test_kinds_of_dimension() -> None:
    space = parse_space(["params.a=interval(0,1)", "params.b=tag(log,interval(1e-4,1e-1))",
                         "params.c=int(interval(2,64))", "params.d=tag(int,interval(2,64))",
                         "params.e=range(0,6,2)", "params.f=x,y"], {})
    dims = {d.key: d for d in space.dimensions}
    assert dims["params.a"] == Interval("params.a", 0.0, 1.0)
    assert dims["params.b"] == Interval("params.b", 1e-4, 0.1, log=True)
    assert dims["params.c"].integer and dims["params.d"].integer  # type: ignore[union-attr]
    assert dims["params.e"] == Choice("params.e", ("0", "2", "4"))
    assert dims["params.f"] == Choice("params.f", ("x", "y"))


def test_random_draws_stay_in_bounds_and_repeat_with_the_seed() -> None:
    space = parse_space(["params.lr=tag(log,interval(1e-4,1e-1))", "params.n=int(interval(2,5))", "params.o=a,b"],
                        {})
    draws = [space.sample(random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(1)
    samples = [space.sample(rng) for _ in range(200)]
    lrs = [float(s["params.lr"]) for s in samples]
    assert all(1e-4 <= v <= 0.1 for v in lrs)
    assert sum(v < 10 ** -2.5 for v in lrs) > 60  # log-uniform: half the draws below the geometric middle
    assert {s["params.n"] for s in samples} == {"2", "3", "4", "5"}
    assert {s["params.o"] for s in samples} == {"a", "b"}


def test_space_entries_from_config_and_the_command_line_wins() -> None:
    space = parse_space(["params.lr=0.5,0.6"], {"params.lr": "interval(0,1)", "params.wd": "0.1,0.2"})
    dims = {d.key: d for d in space.dimensions}
    assert dims["params.lr"] == Choice("params.lr", ("0.5", "0.6"))
    assert dims["params.wd"] == Choice("params.wd", ("0.1", "0.2"))


@pytest.mark.parametrize(("args", "fragment"), [
    (["params.lr=interval(0,1)"], "needs sweep.sampler=random or tpe"),
    (["sweep.seed=1,2"], "sweep.* cannot vary between trials"),
    (["params.lr=tag(log,interval(0,1))"], "lower bound above 0"),
    (["params.lr=interval(1,0)"], "lower bound must be below"),
])
def test_space_errors_are_config_errors(args: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("*", r"\*")):
        parse_space(args, {}).grid()


def test_grid_n_trials_caps_and_random_needs_no_model() -> None:
    space = parse_space(["params.a=1,2,3", "params.b=4,5"], {})
    assert make_sampler("grid", space, n_trials=4, goal="min", seed=0).planned == 4
    sampler = make_sampler("random", space, n_trials=3, goal="min", seed=0)
    assert isinstance(sampler, ListSampler) and sampler.upfront_are_trials
    asked = [sampler.ask() for _ in range(4)]
    assert asked[3] is None and all(s is not None for s in asked[:3])


def test_tpe_probes_touch_every_choice_and_bound_then_learns() -> None:
    need_optuna()
    space = parse_space(["params.x=interval(-2,2)", "params.opt=a,b,c"], {})
    sampler = make_sampler("tpe", space, n_trials=25, goal="min", seed=3)
    assert not sampler.upfront_are_trials
    probes = [dict(item.split("=", 1) for item in s.swept) for s in sampler.upfront()]
    assert {p["params.opt"] for p in probes} == {"a", "b", "c"}
    assert {"-2.0", "2.0"} <= {p["params.x"] for p in probes}
    best = math.inf
    for _ in range(25):
        suggestion = sampler.ask()
        assert suggestion is not None
        values = dict(item.split("=", 1) for item in suggestion.swept)
        loss = (float(values["params.x"]) - 1) ** 2 + (0 if values["params.opt"] == "b" else 1)
        best = min(best, loss)
        sampler.tell(suggestion, Outcome(COMPLETE, loss, [loss]))
    assert sampler.ask() is None
    assert best < 0.3


def test_tpe_restores_earlier_trials_and_counts_them() -> None:
    need_optuna()
    space = parse_space(["params.x=interval(0,1)", "params.n=int(interval(1,4))"], {})
    sampler = make_sampler("tpe", space, n_trials=3, goal="max", seed=0)
    sampler.restore(["params.x=0.5", "params.n=2"], Outcome(COMPLETE, 1.0, [0.5, 1.0]))
    sampler.restore(["params.other=1"], Outcome(FAILED))  # another space: ignored
    assert sampler.ask() is not None and sampler.ask() is not None
    assert sampler.ask() is None


def test_a_long_range_is_counted_and_indexed_not_listed() -> None:
    import itertools

    step = 2.0**-20  # exact in binary, so the count is plain arithmetic
    space = parse_space(["params.a=range(0,1000000000)", f"params.b=range(0.0,1.0,{step!r})", "params.c=x,y"], {})
    assert space.grid_size() == 1_000_000_000 * 2**20 * 2
    first = space.grid(limit=3)
    assert [c["params.c"] for c in first] == ["x", "y", "x"]
    assert [c["params.b"] for c in first] == ["0.0", "0.0", repr(step)]
    assert [c["params.a"] for c in first] == ["0", "0", "0"]
    # a short grid is exactly itertools.product, the order Hydra's basic sweeper uses
    small = parse_space(["params.a=1,2,3", "params.b=range(0,4)", "params.c=x,y"], {})
    assert [tuple(c.values()) for c in small.grid()] == list(
        itertools.product(("1", "2", "3"), ("0", "1", "2", "3"), ("x", "y")))
    with pytest.raises(ConfigError, match="too many to shuffle"):
        parse_space(["params.a=shuffle(range(0,1000000000))"], {})


def test_tpe_refuses_a_categorical_longer_than_max_trials() -> None:
    space = parse_space(["params.a=range(0,1000000)"], {})
    with pytest.raises(ConfigError, match=r"1,000,000 choices are too many for sweep\.sampler=tpe"):
        make_sampler("tpe", space, n_trials=5, goal="min", seed=0)
