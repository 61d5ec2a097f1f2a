"""Long steps show progress on stderr: redrawn in place on a terminal, plain lines elsewhere, none with --quiet.

The terminal is a real pseudo-terminal (the ``pty`` module): the CLI sees a TTY on stdout and stderr as
it would in a shell. The output.log of a run never holds any of it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from conftest import Project, run_in_pty

ERASE_LINE = b"\x1b[2K"  # rich's live display erases its line before each redraw
SLOW = "import sys, time\ntime.sleep(float(sys.argv[2]))\nprint('::metric loss=%s' % sys.argv[2], flush=True)\n"


class GatedBuild:
    """A venv build that waits for the test: its base interpreter is a wrapper that holds ``-m venv``
    until the file ``go`` exists. The test lets it go once it has seen what it looks for, so nothing here
    depends on how fast the machine is."""

    def __init__(self, project: Project, tmp_path: Path, name: str) -> None:
        self.go = tmp_path / f"go-{name}"
        wrapper = tmp_path / f"python-{name}"
        wrapper.write_text(f"""#!/bin/sh
case "$*" in *" venv "*) while [ ! -e {self.go} ]; do sleep 0.05; done ;; esac
exec {sys.executable} "$@"
""")
        wrapper.chmod(0o755)
        # a cache of its own: the venv is built in this test, whatever ran before
        self.env = {"MLTRAIN_CACHE_DIR": str(tmp_path / f"cache-{name}"), "MLTRAIN_PROGRESS_EVERY": "0.2"}
        self.args = ("script=train.py", "environment=venv", "environment.installer=pip",
                     f"environment.python={wrapper}")

    def release(self) -> None:
        self.go.touch()


def _log(project: Project) -> str:
    (record,) = project.runs()
    return (project.workspace / "runs" / str(record["id"]) / "output.log").read_text()


def test_environment_build_on_a_terminal_is_redrawn_in_place(project: Project, tmp_path: Path) -> None:
    build = GatedBuild(project, tmp_path, "tty")
    step = b"building venv: step 1/1, python -m venv"

    def watch(seen: bytes) -> None:
        if seen.count(step) >= 3:  # the step drawn, then drawn again over itself as the clock ticks
            build.release()

    code, out = run_in_pty(project, *build.args, env=build.env, watch=watch)
    assert code == 0, out.decode(errors="replace")
    assert build.go.exists()
    assert ERASE_LINE in out
    assert re.search(rb"\d:\d\d:\d\d(\x1b\[0m)? " + re.escape(step), out)  # the elapsed time beside the step
    assert re.search(rb"mltrain: built venv venv-\w+ \(\d+\.\ds\)", out)  # what stays: how long it took
    log = _log(project)
    assert "\x1b" not in log and "step 1/1" not in log and "[mltrain] building venv" in log


def test_environment_build_without_a_terminal_prints_plain_lines(project: Project, tmp_path: Path) -> None:
    """A step still going after MLTRAIN_PROGRESS_EVERY seconds says so (a CI log sees it is not hung)."""
    build = GatedBuild(project, tmp_path, "plain")
    proc = project.popen(*build.args, env=build.env)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if re.fullmatch(r"mltrain: building venv: step 1/1, python -m venv \(\d+s so far\)", lines[-1]):
            build.release()
            break
    _out, err = proc.communicate(timeout=180)
    lines += err.splitlines()
    assert proc.returncode == 0, lines
    assert any(re.fullmatch(r"mltrain: built venv venv-\w+ \(\d+\.\ds\)", ln) for ln in lines), lines
    assert "\x1b" not in err
    assert "step 1/1" not in _log(project)


def test_quiet_shows_no_progress(project: Project, tmp_path: Path) -> None:
    build = GatedBuild(project, tmp_path, "quiet")
    build.release()
    uv = "environment.installer=uv"  # quicker, and the same progress (uv is in the dev extra)
    code, out = run_in_pty(project, "--quiet", *build.args, uv, env=build.env)
    assert code == 0, out.decode(errors="replace")
    assert b"step 1/" not in out and ERASE_LINE not in out and b"built venv" not in out
    assert b"[mltrain] building venv" in out  # the build's own log lines still stream
    piped = project.run("--quiet", *build.args, uv, "environment.system_site_packages=true", env=build.env,
                        check=True)
    assert "[mltrain] building venv" in piped.stderr  # built anew, and still no progress
    assert "step 1/" not in piped.stderr and "built venv" not in piped.stderr


def test_sweep_shows_trials_done_running_left_and_the_best(project: Project) -> None:
    project.write("slow.py", SLOW)
    sweep = ("-m", "script=slow.py", "params.pause=0.3,0.6,0.9,0.2", "sweep.primary_metric=loss",
             "sweep.max_concurrent=2")
    code, out = run_in_pty(project, *sweep)
    assert code == 0, out.decode(errors="replace")
    assert ERASE_LINE in out
    assert b"2 running, 2 left" in out  # while the first two run
    assert b"4 done, 0 running, 0 left, best loss=0.2 (trial 3)" in out

    plain = project.run(*sweep, "params.pause=0.3,0.6,0.9,0.1", check=True).stderr.splitlines()
    tally = [ln for ln in plain if re.match(r"mltrain: sweep \w+: \d done, ", ln)]
    assert re.search(r": 4 done, 0 running, 0 left, best loss=0\.1 \(trial 3\) \(\d+\.\ds\)$", tally[-1]), plain

    quiet = project.run("--quiet", *sweep, "params.pause=0.1,0.2", check=True)
    assert " done, " not in quiet.stderr and "started: 2 trials" in quiet.stderr
