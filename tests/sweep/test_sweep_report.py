"""How sweep tables show numbers: sensible precision for floats, ints as ints, exact values kept in --json."""

from __future__ import annotations

import json

import pytest
from conftest import Project

from mltrain.sweep.report import number, shown_param

pytestmark = pytest.mark.integration

METRICS = """
import sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
print(f"::metric loss={float(args['--lr']) / 3}", flush=True)
print(f"::metric steps={int(args['--n']) * 1234567}", flush=True)
"""


def test_sweep_tables_round_floats_and_keep_ints(project: Project) -> None:
    project.write("metrics.py", METRICS)
    result = project.run("-m", "script=metrics.py", "params.lr=range(0.1,0.5,0.1)", "params.n=1,2",
                         "sweep.primary_metric=loss", "sweep.max_concurrent=2", check=True)
    table = result.stdout
    assert "params.lr=0.3 params.n=1" in table  # Hydra's range hands the run 0.30000000000000004
    assert "0.30000000000000004" not in table + result.stderr
    assert "0.0333333" in table and "0.0333333333" not in table  # 0.1 / 3: six significant digits
    sweep_id = table.split()[1]
    shown = json.loads(project.run("sweeps", "show", sweep_id, "--json", check=True).stdout)
    assert "params.lr=0.30000000000000004" in [p for t in shown["trials"] for p in t["params"]]  # exact in JSON
    listed = project.run("sweeps", "list", check=True).stdout
    assert f"#0 loss={0.1 / 3:.6g}" in listed

    project.run("-m", "script=metrics.py", "params.lr=3", "params.n=1,2", "sweep.primary_metric=steps",
                "sweep.goal=max", check=True)
    again = project.run("sweeps", "list", check=True).stdout
    assert "steps=2469134" in again and "e+06" not in again  # an integral value stays an int


@pytest.mark.parametrize(("value", "shown"), [
    (0.30000000000000004, "0.3"), (1 / 3, "0.333333"), (2469134.0, "2469134"), (3.0, "3"), (-0.5, "-0.5"),
    (1e-9, "1e-09"), (float("nan"), "nan"), (1e20, "1e+20"),
])
def test_number(value: float, shown: str) -> None:
    assert number(value) == shown


@pytest.mark.parametrize(("item", "shown"), [
    ("params.lr=0.30000000000000004", "params.lr=0.3"), ("params.lr=0.020460187086026708", "params.lr=0.0204602"),
    ("params.lr=1e-4", "params.lr=1e-4"), ("params.n=12345678901", "params.n=12345678901"),
    ("params.opt=adam", "params.opt=adam"), ("params.x=[0.1,0.2]", "params.x=[0.1,0.2]"),
    ("compute=local", "compute=local"),
])
def test_shown_param(item: str, shown: str) -> None:
    assert shown_param(item) == shown


def test_a_diverged_trial_is_never_the_best(project: Project) -> None:
    """A NaN objective ranks nowhere, whichever order the trials come in; the others still have a best."""
    project.write("obj.py", """
        import sys
        x = float(sys.argv[sys.argv.index("--x") + 1])
        print(f"::metric loss={'nan' if x == 0 else x}", flush=True)
    """)
    table = project.run("-m", "script=obj.py", "params.x=0,3,2", "sweep.primary_metric=loss",
                        "sweep.max_concurrent=1", check=True).stdout
    shown = json.loads(project.run("sweeps", "show", table.split()[1], "--json", check=True).stdout,
                       parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))
    (best,) = [t for t in shown["trials"] if t["best"]]
    assert best["params"] == ["params.x=2"]
