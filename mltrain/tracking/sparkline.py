"""Metric series as a person reads them: ordered by step, thinned, drawn as one line of block characters.

``runs show`` ends with one sparkline per metric, ``runs plot`` without ``-o`` draws a compact text chart
from them, and the plots and the sweep report take their series from ``series`` too, so every view
orders and thins a run's points the same way. Pure and light: the CLI imports it on every
``runs show``; numbers are written as the sweep tables write them (``mltrain.sweep.report.number``).

A job chose its metric names (any run of characters without whitespace or ``=``): ``printable`` is how a
name reaches a terminal, so an escape sequence logged as a name cannot drive it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from operator import itemgetter

from mltrain.sweep.report import number

BLOCKS = "▁▂▃▄▅▆▇█"
NOT_FINITE = "!"
"""A bucket whose values are all NaN or infinite: worth seeing (a diverged loss), never drawn as a level."""
WIDTH = 40
MAX_POINTS = 2000
"""Points kept of one series for a plot: more cannot be told apart on a screen or a page, and a run that
logged a million steps must not make a report of hundreds of megabytes."""

Point = tuple[float, float]  # (step, value)


def series(rows: Iterable[tuple[str, int | None, float]]) -> dict[str, list[Point]]:
    """``Store.metric_points`` rows (name, step, value; each metric's in logging order) as its points by step.

    A point logged without a step takes its place in the order it was logged (its index in that metric);
    points are then sorted by step, the logging order kept among equal steps.
    """
    found: dict[str, list[Point]] = {}
    for name, step, value in rows:
        points = found.setdefault(name, [])
        points.append((float(len(points) if step is None else step), float(value)))
    return {name: sorted(points, key=_step) for name, points in found.items()}


_step = itemgetter(0)


def thin(points: Sequence[Point], limit: int = MAX_POINTS) -> list[Point]:
    """At most ``limit`` points, evenly spaced by index; the first and the last are always kept."""
    if len(points) <= limit:
        return list(points)
    last = len(points) - 1
    picks = sorted({round(i * last / (limit - 1)) for i in range(limit)})
    return [points[i] for i in picks]


def sparkline(values: Sequence[float], width: int = WIDTH, scale: tuple[float, float] | None = None) -> str:
    """``values`` as at most ``width`` block characters, lowest ``▁`` to highest ``█``.

    More values than ``width`` are averaged in ``width`` consecutive buckets; a flat series is drawn at
    mid height; a bucket with no finite value is ``!``. ``scale`` (low, high) puts several runs' lines on one
    scale (``value_range`` of all of them); by default a line spans its own range.
    """
    if not values:
        return ""
    buckets = _buckets(values, width)
    finite = [v for v in buckets if v is not None]
    if not finite:
        return NOT_FINITE * len(buckets)
    low, high = scale or (min(finite), max(finite))
    span = high - low
    chars = []
    for v in buckets:
        if v is None:
            chars.append(NOT_FINITE)
        elif span == 0 or not math.isfinite(span):
            chars.append(BLOCKS[len(BLOCKS) // 2 - 1])
        else:
            chars.append(BLOCKS[max(0, min(len(BLOCKS) - 1, int((v - low) / span * len(BLOCKS))))])
    return "".join(chars)


def _buckets(values: Sequence[float], width: int) -> list[float | None]:
    """Mean of the finite values in each of ``min(width, len(values))`` consecutive runs of values."""
    n = len(values)
    count = max(1, min(width, n))
    means: list[float | None] = []
    for b in range(count):
        chunk = [v for v in values[b * n // count:(b + 1) * n // count] if math.isfinite(v)]
        means.append(math.fsum(chunk) / len(chunk) if chunk else None)
    return means


def value_range(lines: Iterable[Sequence[Point]]) -> tuple[float, float] | None:
    """The lowest and highest finite value of several series (``sparkline``'s shared ``scale``)."""
    finite = [v for points in lines for _, v in points if math.isfinite(v)]
    return (min(finite), max(finite)) if finite else None


def printable(text: str, limit: int = 60) -> str:
    """``text`` safe for a terminal line: control characters as ``?``, at most ``limit`` characters."""
    shown = "".join(c if c.isprintable() else "?" for c in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def metric_line(name: str, points: Sequence[Point], name_width: int = 0, width: int = WIDTH,
                scale: tuple[float, float] | None = None) -> str:
    """``loss  ▇▆▅▄▃▂▁  2.31 -> 0.1197  (100 points)``: one metric of one run on one line."""
    values = [v for _, v in points]
    first, last = values[0], values[-1]
    change = number(last) if len(values) == 1 else f"{number(first)} -> {number(last)}"
    count = f"  ({len(values)} points)" if len(values) > 1 else ""
    return f"{printable(name).ljust(name_width)}  {sparkline(values, width, scale)}  {change}{count}"


MAX_LINES = 20
"""Metrics ``runs show`` draws; the rest are named by count (``runs plot`` and ``runs metrics`` show all)."""


def run_lines(points: dict[str, list[Point]], label: str = "curves", indent: int = 12) -> list[str]:
    """``runs show``'s tail: one sparkline line per metric (sorted by name), the first labelled ``curves``."""
    names = sorted(points)
    width = max((len(printable(n)) for n in names[:MAX_LINES]), default=0)
    lines = [(label if i == 0 else "").ljust(indent) + metric_line(name, points[name], width)
             for i, name in enumerate(names[:MAX_LINES])]
    if len(names) > MAX_LINES:
        lines.append(" " * indent + f"(and {len(names) - MAX_LINES} more metrics: mltrain runs plot ID --metric NAME)")
    return lines


MAX_SHOWN = 10
"""Metrics on a completion line; it must stay one line."""


def last_values(last: dict[str, float]) -> str:
    """``loss=0.1197, acc=0.91``: each metric's last value, for the line that says how a run ended."""
    names = sorted(last)
    shown = ", ".join(f"{printable(n, 30)}={number(last[n])}" for n in names[:MAX_SHOWN])
    return shown + (f" and {len(names) - MAX_SHOWN} more" if len(names) > MAX_SHOWN else "")
