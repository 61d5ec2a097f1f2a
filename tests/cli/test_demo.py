"""`make demo` as a new user meets it: a light install, a run, its record, metrics, a sweep, hints that work
verbatim, and a history that `make clean` removes (the demo runs here with the suite's own mltrain)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from conftest import MLTRAIN, Project

ROOT = Path(__file__).resolve().parents[2]


def _make_dry_run(*targets: str) -> str:
    result = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), *targets], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_installs_mltrain_alone_and_the_suite_gets_the_extras() -> None:
    demo = _make_dry_run("demo")
    installs = [ln for ln in demo.splitlines() if "pip install" in ln]
    assert installs and all(re.search(r"-e \.$", ln) for ln in installs), installs  # no [dev], no [spark]
    assert any("-e '.[dev,spark,ray,mlflow]'" in ln for ln in _make_dry_run("test").splitlines())


def test_demo_shows_the_first_hour_and_clean_removes_its_history(project: Project, tmp_path: Path) -> None:
    repo = tmp_path / "clone"  # the demo inside a git checkout, as after `git clone`
    shutil.copytree(ROOT / "examples" / "quickstart", repo / "examples" / "quickstart",
                    ignore=shutil.ignore_patterns(".mltrain"))
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    result = subprocess.run(["sh", str(repo / "examples" / "quickstart" / "demo.sh")], cwd=repo,
                            env={**project.env, "MLTRAIN": MLTRAIN}, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for shown in ("epoch 4: loss", "status      Completed", "NAME  STEP  VALUE", "3 of 3 trials", "* best by loss"):
        assert shown in out, shown

    quickstart = repo / "examples" / "quickstart"
    assert (quickstart / ".mltrain" / "runs.db").exists()
    assert not (repo / ".mltrain").exists()  # not at the repository's root, where mltrain looks first
    assert f"rm -rf .venv build dist *.egg-info {quickstart.relative_to(repo)}/.mltrain" in _make_dry_run("clean")

    hints = [ln.split("  ")[1] for ln in out.split("where to look next", 1)[1].splitlines()
             if ln.startswith("  mltrain ")]
    assert len(hints) == 6
    for hint in hints:  # each works verbatim, from examples/quickstart
        argv = shlex.split(hint)
        ran = subprocess.run([MLTRAIN, *argv[1:]], cwd=quickstart, env=project.env, capture_output=True, text=True,
                             timeout=120, stdin=subprocess.DEVNULL)
        assert ran.returncode == 0, (hint, ran.stderr)
    assert f"the run history: {quickstart}/.mltrain" in out
