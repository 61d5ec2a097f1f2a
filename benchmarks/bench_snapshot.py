"""Snapshot speed against what a user already runs on the same tree, measured in the same run.

Scenarios (medians; baselines interleaved with our runs so machine noise hits both):

1. first snapshot into an empty store  vs  ``cp -r`` of the same files            goal <= 1.5x
   (with references: ``tar -cf - TREE | cat > /dev/null``; the snapshot forced
   onto 1 thread, or onto a pool of a thread per usable core where the default
   takes 1 (on 2 cores it takes 2: small files | large files); and a dry-run
   snapshot, which reads and hashes every file but stores nothing: the floor of any content-addressed snapshot)
2. unchanged re-snapshot               vs  ``git status``                         goal <= 3x
3. one 4 KiB file changed              vs  ``git status``                         goal <= 3x
4. 100 runs of an unchanged tree (snapshot + checkout + the run's own working
   directory, made and removed as a local run does): workspace growth           goal <= 1 MB
5. a local run's working directory (made + removed) for 10 and for 10,000 files   goal: a few ms for 10
6. a 100,000-file tree (``--large``; 0 leaves it out): first snapshot vs ``cp -r``, unchanged and
   one-changed re-snapshots vs ``git status`` (goal: ratios no worse than at 10k), and the peak
   RSS of a snapshot in a child process (read by ``wait4``) beside a bare import    goal <= 200 MB

Our figures time ``take_snapshot`` in-process (no interpreter start); the
baselines are subprocesses (their start, a few ms, is included). The tar
baseline leaves out ``.git``, which a snapshot never includes. Each first
snapshot writes into a fresh store, and nothing is deleted until the end:
on some VMs mass deletion slows file creation for minutes. Each first
snapshot and copy starts after ``sync``, so none pays for the writeback of
the one before.

Usage: ``python benchmarks/bench_snapshot.py [--work DIR] [--repeat N] [--small N] [--big N] [--large N] [--keep]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_tree import BIG_SIZE, SMALL_SIZE, commit_all, make_tree, small_path

from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.hashing import POOL_MAX, threads_used
from mltrain.snapshot.materialize import make_workdir, remove_tree
from mltrain.snapshot.statpool import helpers_for
from mltrain.snapshot.take import materialize, take_snapshot
from mltrain.util.cores import usable_cores

GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def after_sync(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes once what earlier samples wrote is on disk: each of the first snapshots and
    copies writes ~450 MB, and on this VM the writeback of one (throttled past the dirty limit) was charged
    to whichever sample came next (the same code read 533 ms and 1.20 s in two runs)."""
    os.sync()
    return timed(action)


def run(cmd: list[str] | str, cwd: Path | None = None) -> Callable[[], object]:
    def go() -> object:
        return subprocess.run(
            cmd, cwd=cwd, shell=isinstance(cmd, str), env=GIT_ENV, check=True, stdout=subprocess.DEVNULL
        )

    return go


def disk_usage(root: Path) -> int:
    """Bytes allocated under ``root``, each inode once (checkouts hardlink blobs)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, dirs, names in os.walk(root):
        for name in [*names, *dirs]:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def creation_probe(work: Path, attempt: int, files: int = 1000) -> float:
    """Seconds per empty-file creation right now (this VM's ext4 crawls for minutes after mass deletes)."""
    folder = work / f"probe{attempt}"
    folder.mkdir()
    start = time.perf_counter()
    for i in range(files):
        os.close(os.open(folder / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return (time.perf_counter() - start) / files


def settle(work: Path, limit: float = 100e-6, patience: float = 300) -> float:
    """Wait (up to ``patience`` s) until file creation is at normal speed; return the last probe."""
    deadline = time.monotonic() + patience
    attempt = 0
    while True:
        per_file = creation_probe(work, attempt)
        if per_file <= limit or time.monotonic() > deadline:
            return per_file
        print(f"file creation is slow right now ({per_file * 1e6:.0f} us/file); waiting ...", flush=True)
        time.sleep(20)
        attempt += 1


def fmt(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def threads_for(small: int, big: int = 0) -> str:
    """How a default first snapshot of ``small`` 4 KiB and ``big`` 20 MiB files reads them on this machine."""
    return threads_used([("", "", SMALL_SIZE)] * small + [("", "", BIG_SIZE)] * big)


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in avg)


PEAK_RSS = """
def peak_rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
"""
CHILD_SNAPSHOT = PEAK_RSS + """
import sys, time
from pathlib import Path
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.take import take_snapshot
tree, store, cache = map(Path, sys.argv[1:4])
start = time.perf_counter()
take_snapshot(tree, BlobStore(store), cache_dir=cache)
print(time.perf_counter() - start, peak_rss())
"""
CHILD_IMPORT = PEAK_RSS + "import mltrain.snapshot.take\nprint(0, peak_rss())\n"


def in_child(code: str, *argv: str) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) as the child printed them.

    The peak is the child's own ``VmHWM``: ``ru_maxrss`` (``wait4``, ``RUSAGE_CHILDREN``) starts from the
    parent's peak, as the kernel carries it across the fork and exec (this benchmark's ~90 MB).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, env=env, check=True).stdout
    seconds, peak = out.split()
    return float(seconds), int(peak)


def _bench_large(
    work: Path, args: argparse.Namespace, unchanged_10k: tuple[float, float], one_10k: float
) -> list[tuple[str, ...]]:
    """The 100k-file rows: how the cost grows with the file count, and the memory a snapshot takes.

    ``unchanged_10k`` is (ours, git status) for the small tree, ``one_10k`` the one-changed ratio there.
    """
    n = args.large
    big = work / "large"
    print(f"building the large tree: {n:,} x 4 KiB, committed to git ...", flush=True)
    make_tree(big, small=n, big=0, seed=1)
    commit_all(big)
    run(f"tar -cf - --exclude=.git {big.name} | cat > /dev/null", cwd=work)()
    time.sleep(2.5)  # past the stat cache's racy window
    rows: list[tuple[str, ...]] = []
    label = f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"
    store, cache = work / "wsL" / "blobs", work / "wsL" / "cache"
    (work / "copyL").mkdir()
    cp_s = after_sync(run(["cp", "-r", str(big / "src"), str(work / "copyL")]))
    os.sync()
    first, first_rss = in_child(CHILD_SNAPSHOT, str(big), str(store), str(cache))
    rows.append((f"{label}: first snapshot ({threads_for(n)})", fmt(first), f"cp -r {fmt(cp_s)}",
                 f"{first / cp_s:.2f}x", ""))
    git_status = run(["git", "status", "--porcelain"], cwd=big)
    # The tree, its git objects, the copy and the first snapshot's blobs are ~300k new files, still being written
    # back: let that land first, or the re-snapshots (and git status beside them) are timed against the writeback.
    synced = timed(os.sync)
    (work / "settleL").mkdir()
    settle(work / "settleL")
    print(f"  (wrote back this benchmark's own files first: sync took {fmt(synced)})", flush=True)
    repeat = args.fast_repeat
    blobs = BlobStore(store)
    ours, base = [], []
    for _ in range(repeat):
        base.append(timed(git_status))
        ours.append(timed(lambda: take_snapshot(big, blobs, cache_dir=cache)))
    again, git_s = statistics.median(ours), statistics.median(base)
    ours_10k, git_10k = unchanged_10k
    files_10k = args.small + args.big
    helpers = helpers_for(n)
    helped = f"{helpers} stat helper{'s' * (helpers != 1)}"
    rows.append((f"{label}: unchanged re-snapshot ({helped})", fmt(again), f"git status {fmt(git_s)}",
                 f"{again / git_s:.2f}x", f"<= {ours_10k / git_10k:.2f}x (at {files_10k:,})"))
    rows.append((f"  (growth from {files_10k:,} files, x{n / files_10k:.1f})", f"x{again / ours_10k:.1f}",
                 f"git status x{git_s / git_10k:.1f}", "", f"<= x{n / files_10k:.1f} (linear)"))
    _, again_rss = in_child(CHILD_SNAPSHOT, str(big), str(store), str(cache))
    ours, base = [], []
    for k in range(repeat):
        (big / small_path(k * 7919 % n)).write_bytes(os.urandom(SMALL_SIZE))
        base.append(timed(git_status))
        ours.append(timed(lambda: take_snapshot(big, blobs, cache_dir=cache)))
    one, git_s = statistics.median(ours), statistics.median(base)
    rows.append((f"{label}: one 4 KiB file changed", fmt(one), f"git status {fmt(git_s)}", f"{one / git_s:.2f}x",
                 f"<= {one_10k:.2f}x (at {files_10k:,})"))
    _, bare_rss = in_child(CHILD_IMPORT)
    rows.append((f"{label}: peak RSS, first snapshot", f"{first_rss / 1e6:.0f} MB",
                 f"bare import {bare_rss / 1e6:.0f} MB", "", "<= 200 MB"))
    rows.append((f"{label}: peak RSS, unchanged", f"{again_rss / 1e6:.0f} MB", f"bare import {bare_rss / 1e6:.0f} MB",
                 "", "<= 200 MB"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="first-snapshot repetitions (>= 3)")
    parser.add_argument("--fast-repeat", type=int, default=9, help="repetitions of the quick scenarios")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=20)
    parser.add_argument("--large", type=int, default=100_000, help="files of the large tree (0: leave it out)")
    parser.add_argument("--keep", action="store_true", help="leave the scratch directory behind")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="mltrain-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "tree"
    try:
        return _bench(work, tree, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _bench(work: Path, tree: Path, args: argparse.Namespace) -> int:
    print(f"building the tree: {args.small:,} x 4 KiB + {args.big} x 20 MiB, committed to git ...", flush=True)
    make_tree(tree, small=args.small, big=args.big)
    commit_all(tree)
    tar = run(f"tar -cf - --exclude=.git {tree.name} | cat > /dev/null", cwd=work)
    git_status = run(["git", "status", "--porcelain"], cwd=tree)
    tar()  # warm the page cache: every scenario reads a cached tree
    time.sleep(2.5)  # let every file age past the stat cache's racy window
    probe = settle(work)
    load_start = os.getloadavg()

    rows: list[tuple[str, ...]] = []

    # 1. first snapshot into an empty store
    cores = usable_cores()
    picked = threads_for(args.small, args.big)
    other = 1 if picked != "1 thread" else min(cores, POOL_MAX)  # the setting the default did not pick
    ours, base, copies, reads, forced = [], [], [], [], []
    for n in range(args.repeat):
        base.append(timed(tar))
        store = BlobStore(work / f"ws{n}" / "blobs")
        ours.append(after_sync(lambda: take_snapshot(tree, store, cache_dir=work / f"ws{n}" / "cache")))  # noqa: B023
        (work / f"copy{n}").mkdir()
        copies.append(after_sync(run(["cp", "-r", str(tree / "src"), str(tree / "data"), str(work / f"copy{n}")])))
        forced.append(after_sync(lambda: take_snapshot(tree, BlobStore(work / f"pool{n}"), workers=other)))  # noqa: B023
        # The floor of any content-addressed snapshot: read and hash everything, store nothing.
        reads.append(timed(lambda: take_snapshot(tree, BlobStore(work / f"dry{n}"), dry_run=True)))  # noqa: B023
    first, tar_s, cp_s = statistics.median(ours), statistics.median(base), statistics.median(copies)
    dry, alt = statistics.median(reads), statistics.median(forced)
    rows.append((f"first snapshot, empty store ({picked})", fmt(first), f"cp -r {fmt(cp_s)}",
                 f"{first / cp_s:.2f}x", "<= 1.5x"))
    rows.append(("  (reference, same run)", "", f"tar|cat {fmt(tar_s)}", f"{first / tar_s:.2f}x", ""))
    forced_how = "1 thread" if other == 1 else f"a pool of {other} threads"
    rows.append((f"  (forced: {forced_how})", fmt(alt), f"cp -r {fmt(cp_s)}", f"{alt / cp_s:.2f}x", ""))
    rows.append(("  (floor: read + hash, no writes)", fmt(dry), f"tar|cat {fmt(tar_s)}", f"{dry / tar_s:.2f}x", ""))

    # 2. unchanged re-snapshot
    store = BlobStore(work / "ws0" / "blobs")
    cache = work / "ws0" / "cache"
    take_snapshot(tree, store, cache_dir=cache)
    ours, base = [], []
    for _ in range(args.fast_repeat):
        base.append(timed(git_status))
        ours.append(timed(lambda: take_snapshot(tree, store, cache_dir=cache)))
    again, git_s = statistics.median(ours), statistics.median(base)
    unchanged_git = git_s
    rows.append(("unchanged re-snapshot", fmt(again), f"git status {fmt(git_s)}", f"{again / git_s:.2f}x", "<= 3x"))

    # 4. 100 runs of an unchanged tree (before 3, which leaves fresh, racy files)
    checkouts = work / "ws0" / "checkouts"
    runs = work / "ws0" / "runs"
    (runs / "r").mkdir(parents=True)  # one run folder, reused: its own log files are not the snapshot's doing
    materialize(take_snapshot(tree, store, cache_dir=cache).manifest, store, checkouts)
    before = disk_usage(work / "ws0")

    def one_run() -> None:
        manifest = take_snapshot(tree, store, cache_dir=cache).manifest
        materialize(manifest, store, checkouts)
        remove_tree(make_workdir(store.load_manifest(manifest.id), store, runs / "r" / "wd"))

    loop = timed(lambda: [one_run() for _ in range(100)])
    growth = disk_usage(work / "ws0") - before
    rows.append(("100 runs (snapshot, checkout, wd)", f"+{growth / 1e6:.2f} MB", f"({fmt(loop / 100)} each)", "",
                 "<= 1 MB"))

    # 5. a run's own working directory, made and removed
    small = work / "small"
    for i in range(10):
        (small / f"pkg{i % 3}").mkdir(parents=True, exist_ok=True)
        (small / f"pkg{i % 3}" / f"m{i}.py").write_bytes(os.urandom(2048))
    for k, (label, source) in enumerate((("10 files", small), (f"{args.small + args.big:,} files", tree))):
        manifest = store.load_manifest(take_snapshot(source, store, cache_dir=cache).manifest.id)
        made, removed = [], []
        for n in range(args.fast_repeat):
            dest = runs / f"wd{k}-{n}"
            dest.mkdir()
            made.append(timed(lambda: make_workdir(manifest, store, dest / "wd")))  # noqa: B023
            removed.append(timed(lambda: remove_tree(dest / "wd")))  # noqa: B023
        mk, rm = statistics.median(made), statistics.median(removed)
        rows.append((f"run working dir, {label}", fmt(mk + rm), f"(make {fmt(mk)}, remove {fmt(rm)})", "",
                     "a few ms" if source is small else ""))

    # 3. one 4 KiB file changed
    ours, base = [], []
    for n in range(args.fast_repeat):
        (tree / small_path(n * 37 % args.small)).write_bytes(os.urandom(SMALL_SIZE))
        base.append(timed(git_status))
        ours.append(timed(lambda: take_snapshot(tree, store, cache_dir=cache)))
    one, git_s = statistics.median(ours), statistics.median(base)
    rows.append(("one 4 KiB file changed", fmt(one), f"git status {fmt(git_s)}", f"{one / git_s:.2f}x", "<= 3x"))
    load_10k = os.getloadavg()

    load_large, large_s = None, 0.0
    if args.large:
        started = time.perf_counter()
        rows += _bench_large(work, args, (again, unchanged_git), one / git_s)
        load_large, large_s = os.getloadavg(), time.perf_counter() - started

    widths = [max(len(r[i]) for r in [("scenario", "mltrain", "baseline", "ratio", "goal"), *rows]) for i in range(5)]
    print(f"\n{os.cpu_count()} cores ({cores} usable; the hashing pool takes up to {min(cores, POOL_MAX)}), "
          f"Python {sys.version.split()[0]}, medians of {args.repeat} (first) / {args.fast_repeat} (others); "
          f"creating an empty file took {probe * 1e6:.0f} us before the runs")
    print(f"load average (1, 5, 15 min): {_load(load_start)} at the start, {_load(load_10k)} after the 10k rows"
          + (f", {_load(load_large)} after the {args.large:,}-file rows (which took {large_s:.0f} s, "
             "building the tree included)" if load_large else ""))
    for row in [("scenario", "mltrain", "baseline", "ratio", "goal"), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
