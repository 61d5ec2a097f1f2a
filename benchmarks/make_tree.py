"""Generate the benchmark source tree for ``bench_snapshot.py``.

The default shape mirrors a typical ML project that forgot to ignore its
data: 10,000 small source-like files (4 KiB) spread over a few hundred
directories, plus 20 large (20 MiB) files of random bytes. Content is
random but seeded, so two trees made with the same seed are identical and
deduplicate fully in one blob store.

``--source`` makes the source-like tree of ``bench_ssh``'s shaped link
instead: the same 10,000 file names holding text that compresses about 4:1
(lines from a small vocabulary, half of them shared between files, as code
is), plus 40 MiB of random bytes (two 20 MiB shards).

Usage: ``python benchmarks/make_tree.py DEST [--small N] [--big N] [--source] [--git]``
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

SMALL_SIZE = 4 * 1024
BIG_SIZE = 20 * 1024 * 1024
FILES_PER_DIR = 40
DIRS_PER_TOP = 25


def small_path(index: int) -> str:
    """Relative path of the index-th small file (stable, so benchmarks can edit one)."""
    d = index // FILES_PER_DIR
    return f"src/pkg{d // DIRS_PER_TOP:02d}/mod{d % DIRS_PER_TOP:02d}/file{index % FILES_PER_DIR:02d}.py"


def _write_small(dest: Path, count: int, content: Callable[[], bytes]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    made: set[Path] = set()
    for i in range(count):
        path = dest / small_path(i)
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(content())


def make_tree(dest: Path, *, small: int = 10_000, big: int = 20, seed: int = 0) -> None:
    """Write the tree under ``dest`` (created; must not hold a previous tree)."""
    rng = random.Random(seed)
    _write_small(dest, small, lambda: rng.randbytes(SMALL_SIZE))
    data = dest / "data"
    data.mkdir(exist_ok=True)
    for i in range(big):
        (data / f"shard{i:02d}.bin").write_bytes(rng.randbytes(BIG_SIZE))


def _source_lines(rng: random.Random) -> tuple[list[str], list[str]]:
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 10))) for _ in range(400)]
    vocab = words + ["def", "return", "self", "import", "for", "in", "if", "else:", "=", "(", ")", ":", ",",
                     "+", "None", "True"] * 10
    return vocab, [_line(rng, vocab) for _ in range(1000)]


def _line(rng: random.Random, vocab: list[str]) -> str:
    return " " * (4 * rng.randint(0, 3)) + " ".join(rng.choices(vocab, k=rng.randint(3, 12))) + "\n"


def source_text(rng: random.Random, size: int, vocab: list[str], common: list[str]) -> bytes:
    """``size`` bytes of code-like text: ~4:1 under gzip -6 (2:1 each file on its own)."""
    out: list[str] = []
    length = 0
    while length < size:
        line = rng.choice(common) if rng.random() < 0.6 else _line(rng, vocab)
        out.append(line)
        length += len(line)
    return "".join(out).encode()[:size]


def make_source_tree(dest: Path, *, small: int = 10_000, big: int = 2, seed: int = 0) -> None:
    """The source-like tree: ``small`` 4 KiB text files (names as ``small_path``) and ``big`` 20 MiB random files."""
    rng = random.Random(seed)
    vocab, common = _source_lines(rng)
    _write_small(dest, small, lambda: source_text(rng, SMALL_SIZE, vocab, common))
    (dest / "data").mkdir(parents=True, exist_ok=True)
    for i in range(big):
        (dest / "data" / f"blob{i:02d}.bin").write_bytes(rng.randbytes(BIG_SIZE))


def commit_all(dest: Path) -> None:
    """Make ``dest`` a git repository with everything committed (the ``git status`` baseline)."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    # Random bytes do not compress; and no background auto-gc repacking 400 MB during the benchmark.
    fast = ["-c", "core.looseCompression=0", "-c", "core.compression=0", "-c", "gc.auto=0"]
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    for cmd in (["init", "-q"], [*fast, "add", "-A"], [*fast, *ident, "commit", "-q", "-m", "tree"]):
        subprocess.run(["git", *cmd], cwd=dest, env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--small", type=int, default=10_000, help="number of 4 KiB files")
    parser.add_argument("--big", type=int, default=20, help="number of 20 MiB files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", action="store_true", help="text that compresses ~4:1 (+ --big random files)")
    parser.add_argument("--git", action="store_true", help="also git init + commit everything")
    args = parser.parse_args(argv)
    if args.dest.exists() and any(args.dest.iterdir()):
        parser.error(f"{args.dest} is not empty; pick a fresh directory")
    if args.source:
        make_source_tree(args.dest, small=args.small, big=args.big, seed=args.seed)
    else:
        make_tree(args.dest, small=args.small, big=args.big, seed=args.seed)
    if args.git:
        commit_all(args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
