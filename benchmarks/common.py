"""Timing helpers shared by the benchmarks: medians, and one table format (figure, baseline, ratio, goal)."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Sequence


def median_seconds(fn: Callable[[], object], repeat: int = 7, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def interleaved_medians(actions: dict[str, Callable[[], object]], repeat: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each action, taken in rounds (a, b, c, a, b, c, ...): load hits all alike."""
    samples = interleaved_samples(actions, repeat, warmup)
    return {name: statistics.median(values) for name, values in samples.items()}


def interleaved_samples(actions: dict[str, Callable[[], object]], repeat: int = 7,
                        warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each action in each round (a, b, c, a, b, c, ...): sample i of every action is round i."""
    for _ in range(warmup):
        for fn in actions.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeat):
        for name, fn in actions.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def run_cmd(argv: Sequence[str], **kwargs: object) -> Callable[[], None]:
    def call() -> None:
        subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]

    return call


def report(title: str, figure: float, baseline: float | None, goal: str, unit: str = "s") -> None:
    if baseline:
        ratio = figure / baseline
        print(f"{title:<58} {figure * 1000:8.1f} ms  vs {baseline * 1000:8.1f} ms  = {ratio:5.2f}x   goal {goal}")
    else:
        shown = f"{figure * 1000:8.1f} ms" if unit == "s" else f"{figure:10.3f} {unit}"
        print(f"{title:<58} {shown}{'':26}goal {goal}")
