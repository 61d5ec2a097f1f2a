"""``mltrain --help`` as a new user reads it: every example works verbatim, every subcommand says what it does.

The examples are read from the help text itself (not from a copy of it), and run in a copy of
examples/quickstart, in the order shown, the way the help says to ("examples (in examples/quickstart)").
"""

# ruff: noqa: F811  (the engine fixture imported from dockertest is named as the test argument)
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, need_optuna
from dockertest import BASE_IMAGE, DockerProject, engine  # noqa: F401 (fixture)

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"

# How each example in --help is checked, and what that proves. An example the help gains without an
# entry here fails `test_every_example_is_checked`: a new example needs a way to be run.
AS_IS = "run verbatim"  # the command itself, in the quickstart project, must exit 0
DOCKER = "docker"  # needs an image from a registry this machine cannot reach: see test_the_docker_example
HOW = {
    "mltrain script=train.py": AS_IS,  # a local run: streams the script's output, records Completed
    "mltrain script=train.py params.lr=0.01 params.epochs=20": AS_IS,  # params reach the script as --lr/--epochs
    "mltrain script=train.py compute=docker environment=docker_python args=[--lr,0.01]": DOCKER,
    "mltrain plan script=train.py environment=sklearn": AS_IS,  # composes the preset; builds nothing
    "mltrain -m script=train.py params.lr=0.1,0.01,0.001": AS_IS,  # a 3-trial grid sweep, all Completed
    "mltrain -m script=train.py params.lr=tag(log,interval(1e-4,0.1)) sweep.sampler=tpe sweep.n_trials=20 "
    "sweep.primary_metric=loss": AS_IS,  # 20 TPE trials that rank by the loss train.py logs
    "mltrain runs list --status Failed": AS_IS,  # the filter is valid (and there are none)
    "mltrain sweeps list": AS_IS,  # both sweeps above, each with its best trial
    "mltrain --idempotency-key ci-42 script=train.py": AS_IS,  # a new run under key ci-42 (a retry would get it)
}


def help_examples(text: str) -> list[list[str]]:
    """The example commands of the help text, as argv lists (a trailing backslash continues a command)."""
    examples: list[list[str]] = []
    lines = text.split("\nexamples", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    pending = ""
    for line in lines:
        stripped = line.strip()
        if not pending and not stripped.startswith("mltrain "):
            continue  # a description on a line of its own
        command = re.split(r"\s{2,}", stripped)[0]
        if command.endswith("\\"):
            pending += command[:-1]
            continue
        examples.append(shlex.split(pending + command))
        pending = ""
    return examples


def quickstart(project: Project) -> Project:
    shutil.copy(QUICKSTART / "train.py", project.root / "train.py")
    return project


def _help(project: Project) -> str:
    result = project.run("--help", check=True)
    assert result.stderr == ""
    return result.stdout


def test_every_example_is_checked(project: Project) -> None:
    shown = [" ".join(argv) for argv in help_examples(_help(project))]
    assert sorted(shown) == sorted(HOW), "an example in --help needs an entry in HOW (how to run it)"


def test_the_examples_work_verbatim(project: Project) -> None:
    need_optuna()  # sweep.sampler=tpe
    quickstart(project)
    for argv in help_examples(_help(project)):
        if HOW[" ".join(argv)] != AS_IS:
            continue
        result = project.run(*argv[1:], timeout=300)
        assert result.returncode == 0, f"{shlex.join(argv)}:\n{result.stdout}\n{result.stderr}"
    runs = project.runs()
    assert len(runs) == 1 + 1 + 3 + 20 + 1 and {r["status"] for r in runs} == {"Completed"}
    sweeps = json.loads(project.run("sweeps", "list", "--json", check=True).stdout)
    assert [s["status"] for s in sweeps] == ["Completed", "Completed"]
    assert any(t["best"] for t in sweeps[0]["trials"])  # the TPE sweep ranked its trials by loss


@pytest.mark.integration
def test_the_docker_example(project: Project, engine: Any) -> None:
    """Verbatim through ``plan`` (config and the target/environment pair are checked; an environment this
    target cannot use is refused there); then for real, with only the base image swapped for the local one
    (no image registry here) and the test's labels added so the test removes what it made."""
    (argv,) = [a for a in help_examples(_help(project)) if HOW[" ".join(a)] == DOCKER]
    quickstart(project)
    plan = project.run("plan", *argv[1:], check=True).stdout
    assert "python:3.11-slim" in plan
    dproject = DockerProject(project, engine)
    try:
        extra = [f"environment.base_image={BASE_IMAGE}", f"+environment.labels.mltrain_test={dproject.label}",
                 f"+compute.labels.mltrain_test={dproject.label}"]
        result = project.run(*argv[1:], *extra, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "model: w=" in result.stdout
        (record,) = project.runs()
        assert record["status"] == "Completed" and record["compute"] == "docker"
    finally:
        dproject.cleanup()


def _actions(project: Project, *command: str) -> tuple[list[str], str]:
    text = project.run(*command, "--help", check=True).stdout
    choices = re.search(r"\{([a-z,]+)\}", text)
    assert choices is not None, text
    return choices[1].split(","), text


@pytest.mark.parametrize("group", ["runs", "sweeps"])
def test_every_subcommand_has_a_help_line(project: Project, group: str) -> None:
    actions, text = _actions(project, group)
    assert len(actions) >= 4
    for action in actions:
        line = re.search(rf"^    {action}\s+(\S.*)$", text, re.MULTILINE)
        assert line is not None, f"`mltrain {group} --help` has no help line for {action}:\n{text}"
        assert len(line[1]) > 10
    top = _help(project)
    assert all(action in top for action in actions)  # the top-level usage lists them too
