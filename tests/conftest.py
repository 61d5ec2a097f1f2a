"""Shared fixtures: temp projects, the real CLI in a subprocess, and CI's no-skip rule."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
MLTRAIN = str(BIN / "mltrain")
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a skipped test is a failure: CI must exercise every real component."""
    outcome = yield
    report = outcome.get_result()
    if ON_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (not allowed): {report.longrepr}"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mltrain-cache")


@pytest.fixture
def base_env(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLTRAIN_", "HYDRA_"))}
    env["MLTRAIN_CACHE_DIR"] = str(cache_dir)
    return env


TRAIN = textwrap.dedent(
    """
    import json, os, sys
    print("argv", json.dumps(sys.argv[1:]))
    print("run", os.environ.get("MLTRAIN_RUN_ID"))
    print("::metric loss=0.5 step=1")
    out = os.environ["MLTRAIN_OUTPUT_DIR"]
    with open(os.path.join(out, "result.txt"), "w") as fh:
        fh.write("done")
    sys.exit(int(os.environ.get("EXIT_WITH", "0")))
    """
)


class Project:
    """A temp project folder and a way to run the real ``mltrain`` command in it."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def run(
        self,
        *args: str,
        timeout: float = 120,
        check: bool = False,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [MLTRAIN, *args],
            cwd=cwd or self.root,
            env={**self.env, **(env or {})},
            text=True,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"mltrain {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def popen(self, *args: str, **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [MLTRAIN, *args],
            cwd=self.root,
            env=self.env,
            text=True,  # type: ignore[call-overload]
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def runs(self) -> list[dict[str, object]]:
        import json

        return json.loads(self.run("runs", "list", "--json", "--limit", "0", check=True).stdout)  # type: ignore[no-any-return]

    @property
    def workspace(self) -> Path:
        return self.root / ".mltrain"


@pytest.fixture
def project(tmp_path: Path, base_env: dict[str, str]) -> Project:
    root = tmp_path / "proj"
    root.mkdir()
    proj = Project(root, base_env)
    proj.write("train.py", TRAIN)
    return proj


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """A user error: non-zero exit, exactly one line on stderr naming the problem, no traceback."""
    assert result.returncode != 0, result
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mltrain: error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def need_optuna() -> None:
    """Skip (a failure under CI=true) where optuna, the tpe sampler's optional extra, is not installed."""
    pytest.importorskip("optuna", reason="sweep.sampler=tpe needs the optuna extra (in .[dev]; make test installs it)")
