"""A resubmit of an unchanged large project, end to end through the CLI, beside ``git status`` (issue 17, 3 and 4).

``mltrain script=noop.py`` in an unchanged project of 10,000 (and 100,000)
4 KiB files, against the same command in a one-file project: what a large
tree adds to a run (re-snapshot + the run's working directory, made and
removed + the record), over what ``git status`` costs on the same tree.
Goal: the extra is <= 5x ``git status``, at 100k no worse than at 10k. The
extra is the median over rounds of (large - one-file) within each round, so
a load spike on a shared machine moves one pair, not one side.

For reference, the one-file and the first large project also run with
``compute.workdir=links`` (a tree of hardlinks, one made and removed per
file: the working directory before overlays). Each project is a git
repository with everything committed; the CLI runs are interleaved with
``git status`` on the same tree (load hits both alike). Every project has run
once before timing (its snapshot is stored, its checkout built): these are
resubmits. The trees have no big files (a 20 MiB file costs a resubmit one
stat, and with links one link, like a small one).

Usage: ``python benchmarks/bench_resubmit.py [--work DIR] [--sizes 10000,100000] [--repeat N]``
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved_samples, run_cmd
from make_tree import commit_all, make_tree

MLTRAIN = str(Path(sys.executable).parent / "mltrain")
GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def project(root: Path, small: int) -> Path:
    """A committed project of ``small`` 4 KiB files and ``noop.py``, run once (the first submit, not timed)."""
    folder = root / f"p{small}"
    make_tree(folder, small=small, big=0)
    (folder / "noop.py").write_text("pass\n")
    commit_all(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="where to build the trees (default: a temp dir, removed)")
    parser.add_argument("--sizes", default="10000,100000", help="file counts of the large projects")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="bench-resubmit-", dir=args.work))
    # As an installed user runs it: bytecode compiled, not recompiled on every start (run_all.py does the same).
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "mltrain"), quiet=1)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLTRAIN_", "HYDRA_")) and k != "PYTHONDONTWRITEBYTECODE"}
    env["MLTRAIN_CACHE_DIR"] = str(work / "cache")
    try:
        one = work / "p1"
        one.mkdir()
        (one / "noop.py").write_text("pass\n")
        commit_all(one)
        folders = {1: one, **{n: project(work, n) for n in sizes}}
        actions = {}
        for n, folder in folders.items():
            run_cmd([MLTRAIN, "script=noop.py"], cwd=folder, env=env)()  # the first submit: not a resubmit
            actions[f"mltrain {n}"] = run_cmd([MLTRAIN, "script=noop.py"], cwd=folder, env=env)
            actions[f"git {n}"] = run_cmd(["git", "status", "--porcelain"], cwd=folder, env=GIT_ENV)
        if sizes:  # for reference: the working directory as a tree of links, one link made and removed per file
            links = [MLTRAIN, "script=noop.py", "compute.workdir=links"]
            actions["links"] = run_cmd(links, cwd=folders[sizes[0]], env=env)
            actions["links 1"] = run_cmd(links, cwd=one, env=env)
        samples = interleaved_samples(actions, repeat=args.repeat)
        times = {name: statistics.median(values) for name, values in samples.items()}

        def extra(name: str, over: str = "mltrain 1") -> float:
            """Median over rounds of (this run - ``over`` in the same round): a load spike hits one pair."""
            return statistics.median(a - b for a, b in zip(samples[name], samples[over], strict=True))

        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"cores {os.cpu_count()}, load average {load} (at the end); medians of {args.repeat} rounds")
        base = times["mltrain 1"]
        print(f"{'resubmit, 1-file project':<46} {base * 1000:8.1f} ms  (the baseline run)")
        if sizes:
            print(f"{'  the same, compute.workdir=links':<46} {times['links 1'] * 1000:8.1f} ms  "
                  f"overlay - links {extra('mltrain 1', 'links 1') * 1000:6.1f} ms (the overlay's program start)")
        rows = [(f"resubmit, unchanged {n:,}-file project", f"mltrain {n}", n, "goal <= 5x") for n in sizes]
        if sizes:
            rows.append(("  the same, compute.workdir=links", "links", sizes[0], "(the wd before overlays)"))
        for title, name, n, goal in rows:
            added, git = extra(name), times[f"git {n}"]
            print(f"{title:<46} {times[name] * 1000:8.1f} ms  extra {added * 1000:7.1f} ms  "
                  f"vs git status {git * 1000:6.1f} ms  = {added / git:5.2f}x   {goal}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
