"""Typos get "did you mean", grammar errors get the quoted form that works (issue 15)."""

from __future__ import annotations

import pytest
from conftest import Project, assert_one_line_error

from mltrain.config.schema import keys_under, unknown_key_message
from mltrain.config.suggest import quoted_override


@pytest.mark.parametrize(("key", "meant"), [
    ("scirpt", "did you mean script?"),
    ("compute.cancel_grase", "did you mean compute.cancel_grace?"),
    ("sweep.early_termination.polcy", "did you mean sweep.early_termination.policy?"),
    ("environment.pacakges", "did you mean environment.packages?"),
])
def test_a_close_key_is_named(key: str, meant: str) -> None:
    message = unknown_key_message(key)
    assert meant in message
    assert "+" not in message  # the +key=VALUE hint only when nothing is close


def test_nothing_close_gives_the_plus_hint() -> None:
    assert unknown_key_message("zzzqqq").endswith("add it with +zzzqqq=VALUE")
    assert "+compute.qqqq=VALUE" in unknown_key_message("compute.qqqq")


def test_group_keys_come_from_every_registered_kind() -> None:
    assert {"cancel_grace", "host", "image"} <= set(keys_under("compute")) | set(keys_under("environment"))
    assert keys_under("no_such_group.x") == []


@pytest.mark.parametrize(("line", "fixed"), [
    ("compute.master=local[2]", "compute.master='local[2]'"),
    ("environment.packages=[numpy==2.1]", "environment.packages=['numpy==2.1']"),
    ("environment.packages=[numpy, scikit-learn>=1.5]", "environment.packages=['numpy','scikit-learn>=1.5']"),
    ("params.name=a b", "params.name='a b'"),
    ("params.q=it's", 'params.q="it\'s"'),
])
def test_the_quoted_form_that_parses(line: str, fixed: str) -> None:
    assert quoted_override(line) == fixed


def test_cli_says_what_to_type(project: Project) -> None:
    assert_one_line_error(project.run("script=train.py", "compute.master=local[2]"),
                          "use \"compute.master='local[2]'\"")
    assert_one_line_error(project.run("script=train.py", "scirpt=train.py"), "did you mean script?")
    assert_one_line_error(project.run("script=train.py", "compute.cancel_grase=3"),
                          "did you mean compute.cancel_grace?")
    assert_one_line_error(project.run("script=train.py", "compute=dokcer"), "did you mean docker?")
    project.write("conf/compute/typo.yaml", "type: local\ncancel_grase: 3\n")
    assert_one_line_error(project.run("script=train.py", "compute=typo"), "did you mean cancel_grace?")
    assert not project.workspace.exists()
