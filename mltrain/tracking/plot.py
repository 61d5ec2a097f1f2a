"""``mltrain runs plot``: metric curves over steps, several runs overlaid, as a picture or as text.

The picture (``save_figure``, PNG or SVG) is drawn with matplotlib, imported only there (the ``plot``
extra); without ``-o`` the CLI prints ``text_chart``, a sparkline per run and metric, which needs nothing.
Each run is labelled by its id and the params in which it differs from the others, so three runs of a
learning-rate sweep read ``3f2a91c0 lr=0.1``, not three ids.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltrain.errors import MltrainError, UsageError
from mltrain.store.db import COMPLETED, RunRecord, Store
from mltrain.store.workspace import Workspace
from mltrain.sweep.report import number, shown_param
from mltrain.tracking.sparkline import Point, metric_line, printable, series, thin, value_range

MAX_PANELS = 12
"""Metrics drawn at once; a run that logs more names is plotted one ``--metric`` at a time."""
MAX_CONFIG = 1 << 20
"""Bytes of a run's stored config read for its params (mltrain wrote it; a bound all the same)."""
FORMATS = (".png", ".svg")
PLOT_EXTRA = "pip install 'mltrain[plot]'"


@dataclass(frozen=True)
class RunCurves:
    """One run's metrics as points by step, and the label its curves carry."""

    record: RunRecord
    label: str
    metrics: dict[str, list[Point]]


def run_params(workspace: Workspace, record: RunRecord) -> dict[str, Any]:
    """The script's params as dotted keys: the run's ``params`` column, else its stored config's ``params``."""
    if record.params:
        return dict(record.params)
    path = workspace.run_paths(record.id).config
    try:
        if path.stat().st_size > MAX_CONFIG:
            return {}
        import yaml

        loaded = yaml.safe_load(path.read_text(errors="replace"))
    except (OSError, ValueError, ImportError):
        return {}
    params = loaded.get("params") if isinstance(loaded, dict) else None
    return _dotted(params) if isinstance(params, dict) else {}


def _dotted(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            found |= _dotted(value, f"{prefix}{key}.")
        else:
            found[f"{prefix}{key}"] = value
    return found


def differing(params: Sequence[Mapping[str, Any]]) -> list[str]:
    """For each run, ``key=value`` of the params whose values are not the same in every run (sorted by key;
    a float rounded as the sweep tables round it)."""
    keys = sorted({k for p in params for k in p})
    varied = [k for k in keys if len({repr(p.get(k, "<absent>")) for p in params}) > 1]
    return [" ".join(shown_param(f"{k}={p.get(k, '-')}") for k in varied) for p in params]


def load(store: Store, workspace: Workspace, run_ids: Sequence[str]) -> list[RunCurves]:
    """The runs (each id resolved as ``runs show`` does, duplicates dropped) with their metrics, thinned;
    a run that did not complete says its status in its label."""
    records: list[RunRecord] = []
    for ident in run_ids:
        record = store.get(ident)
        if all(r.id != record.id for r in records):
            records.append(record)
    shown = differing([run_params(workspace, r) for r in records]) if len(records) > 1 else [""]
    return [RunCurves(r, " ".join(part for part in (r.id, extra, "" if r.status == COMPLETED else f"({r.status})")
                                  if part),
                      {name: thin(points) for name, points in series(store.metric_points(r.id)).items()})
            for r, extra in zip(records, shown, strict=True)]


def pick_metrics(curves: Sequence[RunCurves], metric: str | None) -> list[str]:
    """The metrics to draw: ``metric`` if some run logged it, else every metric any run logged (sorted).

    An unknown ``metric`` is one line that lists the metrics the runs have.
    """
    names = sorted({name for c in curves for name in c.metrics})
    ids = ", ".join(c.record.id for c in curves)
    if metric is None:
        if not names:
            raise UsageError(f"run{'s' if len(curves) > 1 else ''} {ids} logged no metrics; nothing to plot "
                             "(a script logs with mltrain.log_metric or a '::metric name=value' line)")
        return names
    if metric not in names:
        listed = ", ".join(printable(n, 40) for n in names[:30]) + (f" and {len(names) - 30} more"
                                                                     if len(names) > 30 else "")
        raise UsageError(f"no metric {printable(metric)!r} in run{'s' if len(curves) > 1 else ''} {ids}; "
                         + (f"metrics there: {listed}" if names else "no metric was logged there"))
    return [metric]


def too_many(metrics: Sequence[str]) -> str | None:
    """A note when ``metrics`` is more than one picture shows; the caller draws the first ``MAX_PANELS``."""
    if len(metrics) <= MAX_PANELS:
        return None
    return f"showing the first {MAX_PANELS} of {len(metrics)} metrics; --metric NAME shows any other"


def text_chart(curves: Sequence[RunCurves], metrics: Sequence[str], width: int = 40) -> str:
    """Each metric's name and range, then one sparkline line per run on that range (``-`` where a run did
    not log it): the lines of one metric compare by height."""
    label_width = max(len(printable(c.label)) for c in curves)
    lines: list[str] = []
    for name in metrics[:MAX_PANELS]:
        scale = value_range(c.metrics.get(name, []) for c in curves)
        lines.append(printable(name) + (f"  ({number(scale[0])} .. {number(scale[1])})" if scale else ""))
        for c in curves:
            points = c.metrics.get(name)
            if points:
                lines.append("  " + metric_line(c.label, points, label_width, width, scale))
            else:
                lines.append(f"  {printable(c.label).ljust(label_width)}  -")
    return "\n".join(lines)


def save_figure(curves: Sequence[RunCurves], metrics: Sequence[str], path: Path) -> Path:
    """Draw each metric in a panel of its own (runs overlaid, one legend) and write PNG or SVG to ``path``.

    The file appears whole or not at all (written beside it, then renamed).
    """
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"cannot write a plot as {path.name!r}: name a .png or .svg file with -o")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MltrainError(f"writing a plot needs matplotlib: {PLOT_EXTRA} "
                           "(or leave out -o for a text chart)") from None
    shown = list(metrics[:MAX_PANELS])
    columns = 1 if len(shown) == 1 else 2
    rows = (len(shown) + columns - 1) // columns
    figure = Figure(figsize=(6.4 * columns, 3.6 * rows + 0.4 * min(len(curves), 10)), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, name in zip(axes, shown, strict=False):
        for c in curves:
            points = c.metrics.get(name)
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], label=_plain(c.label),
                        marker="o" if len(points) == 1 else None)
        ax.set_title(_plain(name))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for ax in axes[1:len(shown)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    figure.legend(list(seen.values()), list(seen.keys()), loc="outside lower center",
                  ncols=min(3, len(seen)) or 1, fontsize="small")
    return write_whole(path, lambda fh: figure.savefig(fh, format=suffix[1:]))


def _plain(text: str) -> str:
    """A job's text for matplotlib: printable, and ``$`` escaped so a name is never read as mathtext."""
    return printable(text, 80).replace("$", r"\$")


def write_whole(path: Path, write: Any) -> Path:
    """Call ``write(fh)`` on a new file beside ``path``, then rename it there: ``path`` is whole or untouched.

    The file gets the mode ``open`` would give it (0666 less the umask).
    """
    from mltrain.util.safefs import create_temp

    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise MltrainError(f"cannot write {path}: {exc.strerror or exc} (choose a folder that exists)") from None
    try:
        try:
            fd, temp = create_temp(folder, 0o666)
        except OSError as exc:
            raise MltrainError(f"cannot write {path}: {exc.strerror or exc} "
                               "(choose a folder you can write to)") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.replace(temp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=folder)
            raise
    finally:
        os.close(folder)
    return path
