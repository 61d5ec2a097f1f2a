"""``runs plot`` (text and pictures), the sparklines of ``runs show`` and the completion line's last values.

The history is written straight into a store (no job runs) except for the completion line, which needs a
real run; the commands are the real CLI.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error

from mltrain.store.db import COMPLETED, PREPARING, RUNNING, Store
from mltrain.store.workspace import Workspace
from mltrain.tracking.plot import differing
from mltrain.tracking.sparkline import last_values, printable, series, sparkline, thin

HOSTILE = "\x1b[2J<b>evil</b>$x$"  # a job's metric name: an escape sequence, markup, mathtext


def _runs(workspace: Workspace) -> None:
    """Two runs of a learning-rate sweep (loss and acc over 50 steps; one also a hostile name) and one
    run with no metrics; params in the stored config, as every run has them."""
    workspace.ensure()
    with Store(workspace.db_path) as store:
        for run_id, lr in (("aaaa0001", 0.1), ("bbbb0002", 0.01), ("cccc0003", 0.5)):
            store.create_run(run_id=run_id, experiment="exp", script="train.py", source_dir="/src", compute="local",
                             environment="user_managed", overrides=[f"params.lr={lr}"])
            for status in (PREPARING, RUNNING, COMPLETED):
                store.transition(run_id, status)
            paths = workspace.run_paths(run_id)
            paths.dir.mkdir(parents=True)
            paths.config.write_text(f"script: train.py\nparams:\n  lr: {lr}\n  epochs: 50\n  model:\n    depth: 4\n")
            if run_id == "cccc0003":
                continue
            rows = [("loss", math.exp(-lr * 20 * s), s, None) for s in range(50)]
            rows += [("acc", 1 - math.exp(-lr * 20 * s) / 2, s, None) for s in range(50)]
            if run_id == "aaaa0001":
                rows.append((HOSTILE, 1.0, None, None))
            store.add_metrics(run_id, rows)


@pytest.fixture
def history(project: Project) -> Project:
    _runs(Workspace(project.workspace))
    return project


# ------------------------------------------------------------------ pure parts
def test_sparkline_levels_buckets_and_gaps() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5, 5]) == "▄▄▄"  # flat: mid height
    assert sparkline([]) == ""
    assert sparkline(list(range(1000)), width=10) == "▁▁▂▃▄▅▆▇██"  # averaged in 10 buckets
    assert sparkline([1, math.nan, 3]) == "▁!█"  # a NaN is shown, never drawn as a level
    assert sparkline([math.inf, math.nan]) == "!!"
    assert sparkline([0, 1], scale=(0, 10)) == "▁▁"  # a shared scale: small values stay low


def test_series_orders_by_step_and_thin_keeps_the_ends() -> None:
    rows = [("loss", 2, 0.2), ("loss", 1, 0.1), ("acc", None, 0.5), ("acc", None, 0.6)]
    assert series(rows) == {"loss": [(1.0, 0.1), (2.0, 0.2)], "acc": [(0.0, 0.5), (1.0, 0.6)]}
    points = [(float(i), float(i)) for i in range(10_001)]
    thinned = thin(points, 100)
    assert len(thinned) == 100 and thinned[0] == points[0] and thinned[-1] == points[-1]


def test_labels_and_last_values() -> None:
    assert differing([{"lr": 0.1, "epochs": 5}, {"lr": 0.01, "epochs": 5}]) == ["lr=0.1", "lr=0.01"]
    assert differing([{"lr": 0.1}, {"lr": 0.1, "seed": 3}]) == ["seed=-", "seed=3"]
    assert differing([{"lr": 0.30000000000000004}, {"lr": 0.2}]) == ["lr=0.3", "lr=0.2"]
    assert printable("a\x1b[2Jb") == "a?[2Jb"
    assert last_values({"loss": 0.30000000000000004, "acc": 0.9, "steps": 1200.0}) == "acc=0.9, loss=0.3, steps=1200"
    many = {f"m{i:02d}": float(i) for i in range(13)}
    assert last_values(many).endswith("m09=9 and 3 more")


# ------------------------------------------------------------------ the command
def test_text_chart_overlays_runs_labelled_by_the_params_that_differ(history: Project) -> None:
    result = history.run("runs", "plot", "aaaa0001", "bbbb0002", check=True)
    lines = result.stdout.splitlines()
    assert lines[:3] == ["?[2J<b>evil</b>$x$  (1 .. 1)",  # a job's name, made printable; sorted first
                         "  aaaa0001 lr=0.1   ▄  1",
                         "  bbbb0002 lr=0.01  -"]  # the second run never logged it
    acc = lines.index("acc  (0.5 .. 1)")
    assert lines[acc + 1].startswith("  aaaa0001 lr=0.1   ▁") and lines[acc + 1].endswith("(50 points)")
    assert lines[acc + 2].startswith("  bbbb0002 lr=0.01  ▁")  # lr differs; epochs and model.depth do not
    loss = lines.index("loss  (2.74879e-43 .. 1)")
    assert lines[loss + 1].startswith("  aaaa0001 lr=0.1   █") and "1 -> 2.74879e-43" in lines[loss + 1]
    assert lines[loss + 2].startswith("  bbbb0002 lr=0.01  █") and "1 -> 5.54516e-05" in lines[loss + 2]
    assert "\x1b" not in result.stdout
    assert result.stderr == ""


def test_unknown_metric_lists_the_metrics_there(history: Project) -> None:
    result = history.run("runs", "plot", "aaaa0001", "bbbb0002", "--metric", "accuracy")
    assert_one_line_error(result, "no metric 'accuracy' in runs aaaa0001, bbbb0002; metrics there: ",
                          "acc, loss")
    assert result.returncode == 2
    assert_one_line_error(history.run("runs", "plot", "cccc0003"), "run cccc0003 logged no metrics")
    assert_one_line_error(history.run("runs", "plot", "nosuchrun"), "no run 'nosuchrun'")


def test_pictures_png_and_svg(history: Project, tmp_path: Path) -> None:
    png = tmp_path / "curves.png"
    result = history.run("runs", "plot", "aaaa0001", "bbbb0002", "-o", str(png), check=True)
    assert result.stdout == f"wrote {png}\n"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    umask = os.umask(0o022)
    os.umask(umask)
    assert png.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it (not mkstemp's 0600)
    svg = tmp_path / "loss.svg"
    history.run("runs", "plot", "aaaa0001", "bbbb0002", "--metric", "loss", "-o", str(svg), check=True)
    text = svg.read_text()
    assert "<svg" in text and "aaaa0001 lr=0.1" in text and "bbbb0002 lr=0.01" in text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mltrain-")] == []  # no temp left
    assert_one_line_error(history.run("runs", "plot", "aaaa0001", "-o", str(tmp_path / "x.pdf")),
                          "name a .png or .svg file with -o")
    assert_one_line_error(history.run("runs", "plot", "aaaa0001", "-o", str(tmp_path / "no" / "x.png")),
                          "cannot write", "choose a folder that exists")


def test_runs_show_ends_with_a_sparkline_per_metric(history: Project) -> None:
    lines = history.run("runs", "show", "aaaa0001", check=True).stdout.splitlines()
    tail = lines[-3:]
    assert tail[0].startswith("curves      ?[2J<b>evil</b>$x$  ▄  1")
    assert tail[1].startswith("            acc") and tail[1].endswith("0.5 -> 1  (50 points)")
    assert tail[2].startswith("            loss") and "█" in tail[2]
    assert not any(line.startswith("curves") for line in history.run("runs", "show", "cccc0003").stdout.splitlines())


def test_completion_line_prints_each_metrics_last_value(project: Project) -> None:
    project.write("two.py", """
        print("::metric loss=0.9 acc=0.1 step=0")
        print("::metric loss=0.30000000000000004 acc=0.75 step=1")
    """)
    result = project.run("script=two.py", check=True)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mltrain: run ") and " Completed in " in last
    assert last.endswith(" (last acc=0.75, loss=0.3)"), last


def test_runs_show_draws_what_a_job_logged_interleaved_stepless_and_not_finite(project: Project) -> None:
    """A real job's metric lines, hostile as a job may make them: metrics interleaved, points without steps,
    steps out of order, NaN and inf, a name with an escape sequence. ``runs show`` (each metric's points read
    grouped, ``Store.metric_points``) draws each metric's own points in step order and prints no escape."""
    project.write("noisy.py", r"""
        print("::metric loss=3 step=2")
        print("::metric acc=0.1")
        print("::metric loss=nan step=1")
        print("::metric \x1b[2Jx=inf")
        print("::metric acc=0.2")
        print("::metric loss=1 step=0")
        print("::metric acc=0.3")
    """)
    project.run("script=noisy.py", check=True)
    run_id = project.run("runs", "list", "--json", check=True)
    shown = project.run("runs", "show", json.loads(run_id.stdout)[0]["id"], check=True).stdout
    assert "\x1b" not in shown
    curves = shown.splitlines()[-3:]
    assert "?[2Jx" in curves[0] and curves[0].rstrip().endswith("  inf")  # names sorted: ESC first
    assert "acc" in curves[1] and curves[1].endswith("0.1 -> 0.3  (3 points)")
    assert "loss" in curves[2] and curves[2].endswith("1 -> 3  (3 points)") and "!" in curves[2]  # NaN at step 1
    assert "metrics     ?[2Jx=inf  acc=0.3  loss=1" in shown
    table = project.run("runs", "metrics", json.loads(run_id.stdout)[0]["id"], check=True).stdout
    assert "\x1b" not in table and "?[2Jx  -     inf" in table
