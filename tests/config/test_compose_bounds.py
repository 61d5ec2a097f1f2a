"""Config files are bounded before Hydra loads them: an alias bomb, deep nesting or a huge file is one line, at once."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error

from mltrain.config.bounds import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_CONFIG_NODES, check_text
from mltrain.errors import ConfigError


def _bomb(levels: int = 9) -> str:
    """"Billion laughs": 9 x 9 aliases per level, 9**levels values once expanded, ~80 nodes as written."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    names = "abcdefghijklmnop"[:levels]
    for previous, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n"


# The bomb never finishes on the code before the bound: the timeout (not a speed assertion) keeps a
# regression from hanging the suite.
BOMB_TIMEOUT = 60


def test_an_alias_bomb_in_a_project_option_is_one_line_naming_the_file(project: Project) -> None:
    project.write("conf/params/bomb.yaml", _bomb())
    result = project.run("script=train.py", "+params=bomb", timeout=BOMB_TIMEOUT)
    assert result.returncode == 2
    assert_one_line_error(result, "conf/params/bomb.yaml", f"more than {MAX_CONFIG_NODES:,} keys and values",
                          "aliases")
    assert not project.workspace.exists()  # refused before anything was recorded


def test_an_alias_bomb_as_the_primary_config_of_a_cd_dir_and_in_a_sweep(project: Project, tmp_path: Path) -> None:
    conf = tmp_path / "elsewhere"
    conf.mkdir()
    (conf / "config.yaml").write_text("defaults:\n  - mltrain_schema\n  - _self_\nparams:\n" + "".join(
        f"  {line}\n" for line in _bomb().splitlines()))
    result = project.run("-cd", str(conf), "script=train.py", timeout=BOMB_TIMEOUT)
    assert_one_line_error(result, f"{conf}/config.yaml")
    project.write("conf/params/bomb.yaml", _bomb())
    result = project.run("-m", "script=train.py", "+params=bomb", "params.x=1,2", timeout=BOMB_TIMEOUT)
    assert_one_line_error(result, "conf/params/bomb.yaml")
    result = project.run("plan", "script=train.py", "+params=bomb", timeout=BOMB_TIMEOUT)
    assert_one_line_error(result, "conf/params/bomb.yaml")


def test_a_bomb_in_a_package_on_the_search_path(project: Project, tmp_path: Path) -> None:
    """The ``pkg://`` source (mltrain's packaged conf reads through it) is checked too."""
    package = tmp_path / "site" / "bombconf"
    (package / "params").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "params" / "bomb.yaml").write_text(_bomb())
    result = project.run("script=train.py", "hydra.searchpath=[pkg://bombconf]", "+params=bomb",
                         env={"PYTHONPATH": str(tmp_path / "site")}, timeout=BOMB_TIMEOUT)
    assert_one_line_error(result, "pkg://bombconf/params/bomb.yaml", "keys and values")


def test_aliases_within_the_bound_still_compose(project: Project) -> None:
    project.write("conf/params/shared.yaml", """\
        base: &base {lr: 0.1, layers: [8, 8]}
        copy: *base
        merged: {<<: *base, lr: 0.2}
        """)
    out = project.run("--cfg", "job", "script=train.py", "+params=shared", check=True).stdout
    assert "copy:\n    lr: 0.1\n    layers:\n    - 8\n    - 8" in out
    assert "merged:\n    lr: 0.2" in out


@pytest.mark.parametrize(("text", "fragment"), [
    ("x: &a [1, *a]\n", "*a is inside its own anchor"),
    ("x: " + "[" * (MAX_CONFIG_DEPTH + 1) + "]" * (MAX_CONFIG_DEPTH + 1) + "\n", "nests more than"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nests more than"),  # past libyaml's own limit, too
    ("x: [" + ", ".join(["1"] * (MAX_CONFIG_NODES + 1)) + "]\n", "keys and values"),
    ("x: '" + "a" * (MAX_CONFIG_BYTES + 1) + "'\n", "MiB a config file may hold"),
    ("x: [1, 2\ny: {\n", "params/bad.yaml:2:2: not valid YAML: expected ',' or ']'"),
    ("x: *nope\n", "params/bad.yaml:1:4: not valid YAML: found undefined alias 'nope'"),
])
def test_each_bound_and_bad_yaml_is_one_line(project: Project, text: str, fragment: str) -> None:
    project.write("conf/params/bad.yaml", text)
    result = project.run("script=train.py", "+params=bad", timeout=BOMB_TIMEOUT)
    assert_one_line_error(result, "params/bad.yaml", fragment)


def test_the_count_expands_aliases_exactly() -> None:
    # 1 mapping + key "x" + the list + 4 scalars = 7; each *a adds 5 (the list and its 4 scalars)
    base = "x: &a [1, 2, 3, 4]\n"
    check_text(base, "f")
    per_alias = 1 + 5  # its key and its expansion
    n = (MAX_CONFIG_NODES - 7) // per_alias
    fits = base + "".join(f"k{i}: *a\n" for i in range(n))
    check_text(fits, "f")
    with pytest.raises(ConfigError, match="more than"):
        check_text(fits + "".join(f"k{i}: *a\n" for i in range(n, n + 1)), "f")
