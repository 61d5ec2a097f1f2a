"""``mltrain sweeps report``: a sweep as one self-contained HTML page, openable with no network.

``write_report(workspace, sweep_id, path)`` (what ``Sweep.report`` calls) writes: the trials table
(sortable: click a heading), the primary metric over trials with the best marked, every trial's curves
with early-stopped trials marked, a parallel-coordinates plot of params -> metric, and the metric
against each param. The trials and their ranking are ``mltrain.sweep.report``'s, the same as
``sweeps show``; the plots are plotly's, with plotly.js inlined (the ``plot`` extra; ~5 MB a page).

Everything on the page that a job wrote (metric names) or a person typed (params) is escaped: HTML by
``html.escape``, plotly's labels (which read a few tags such as ``<b>`` and ``<a href>``) as entities,
and the figures travel as JSON in which plotly escapes ``<``, ``>`` and ``/``.

The page records what happened when it was drawn in ``window.mltrainReport``: the console errors, and for
each plot the traces it was given and the trace groups drawn. The browser test reads it; a person can
look at it in the developer console.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mltrain.errors import MltrainError
from mltrain.store.db import Store
from mltrain.store.workspace import Workspace
from mltrain.sweep.report import SweepReport, TrialRow, number, shown_param, sweep_report
from mltrain.tracking.plot import PLOT_EXTRA, write_whole
from mltrain.tracking.sparkline import Point, printable, series, thin

MAX_CURVE_METRICS = 6
"""Metrics drawn as curves: the primary one first, then the others by name."""
MAX_REPORT_POINTS = 500
"""Points kept of each trial's curve (first and last always): a thousand trials stay a page, not a dump."""
LOG_SPAN = 100.0
"""A positive param whose largest value is this many times its smallest is drawn on a log axis."""

_HOOK = """
window.mltrainReport = {errors: [], plots: {}, done: false};
window.addEventListener('error', function (e) { window.mltrainReport.errors.push(String(e.message || e)); });
(function () {
  var original = console.error;
  console.error = function () {
    window.mltrainReport.errors.push(Array.prototype.map.call(arguments, String).join(' '));
    return original.apply(console, arguments);
  };
})();
"""

_DRAW = """
(function () {
  var report = window.mltrainReport;
  var figures = JSON.parse(document.getElementById('mltrain-figures').textContent);
  var drawn = figures.map(function (f) {
    return Plotly.newPlot(f.id, f.data, f.layout, {displaylogo: false, responsive: true}).then(function (gd) {
      report.plots[f.id] = {traces: gd.data.length,
                            drawn: gd.querySelectorAll('.scatterlayer .trace, g.parcoords').length};
    });
  });
  Promise.all(drawn).then(function () { report.done = true; },
                          function (e) { report.errors.push(String(e)); report.done = true; });
  document.querySelectorAll('table.sortable th').forEach(function (th, column) {
    th.addEventListener('click', function () {
      var body = th.closest('table').tBodies[0];
      var up = th.getAttribute('aria-sort') !== 'ascending';
      th.closest('tr').querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', up ? 'ascending' : 'descending');
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var v = row.cells[column].getAttribute('data-v');
        return v === null || v === '' ? null : (isNaN(Number(v)) ? v : Number(v));
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
        var order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
        return up ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
})();
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.summary { color: #555; }
table.sortable { border-collapse: collapse; font-size: 0.9em; }
table.sortable th, table.sortable td { border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; }
table.sortable th { cursor: pointer; user-select: none; background: #f4f4f4; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
tr.best td { background: #fff6d5; font-weight: 600; }
.plot { width: 100%; height: 420px; }
.note { color: #777; font-size: 0.9em; }
"""


@dataclass
class Trial:
    """One trial as the report draws it: its row (status, best, primary value), params, and curves."""

    row: TrialRow
    params: dict[str, str]
    curves: dict[str, list[Point]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"#{self.row.idx}" + (" (stopped early)" if self.early else "")

    @property
    def early(self) -> bool:
        return self.row.stopped_early


@dataclass(frozen=True)
class Figure:
    """One plot on the page: its element id, heading and plotly figure (``data`` and ``layout``)."""

    id: str
    title: str
    data: list[dict[str, Any]]
    layout: dict[str, Any]
    note: str = ""


def write_report(workspace: Workspace, sweep_id: str, path: Path) -> Path:
    """Write sweep ``sweep_id``'s report to ``path`` (whole or not at all); returns ``path``.

    Needs plotly (``pip install 'mltrain[plot]'``); a sweep id that matches nothing (or several) is
    ``SweepNotFound``.
    """
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise MltrainError(f"a sweep report needs plotly: {PLOT_EXTRA}") from None
    with Store(workspace.db_path, create=False) as store:
        report = sweep_report(store, workspace, store.get_sweep(sweep_id))
        trials = [Trial(row, _params(row.params),
                        {n: thin(p, MAX_REPORT_POINTS) for n, p in series(store.metric_points(row.run_id)).items()}
                        if row.run_id else {})
                  for row in report.rows]
    page = render(report, trials, get_plotlyjs())
    return write_whole(Path(path), lambda fh: fh.write(page.encode("utf-8")))


def _params(items: Sequence[str]) -> dict[str, str]:
    """A trial's swept overrides (``params.lr=0.1``) as key -> value, in the order given."""
    found: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        found[key] = value
    return found


def render(report: SweepReport, trials: Sequence[Trial], plotly_js: str) -> str:
    """The page, given the sweep's rows and each trial's params and curves."""
    from plotly.io import to_json

    sweep = report.sweep
    metric = sweep.settings.get("primary_metric")
    figures = _figures(report, trials, metric)
    payload = "[" + ",".join(
        to_json({"id": f.id, "data": f.data, "layout": f.layout}, validate=False) for f in figures) + "]"
    best = report.best
    summary = (f"{report.status} · {len(report.rows)} of {sweep.planned if sweep.planned is not None else '?'} "
               f"trials · sampler {sweep.settings.get('sampler', 'grid')}"
               + (f" · goal {sweep.settings.get('goal', 'min')} {metric}" if metric else "")
               + (f" · best #{best.idx}: {metric}={number(best.metric)}" if best and best.metric is not None else ""))
    sections = [f"<h2>Trials</h2>{_table(trials, metric)}"]
    for f in figures:
        note = f'<p class="note">{_esc(f.note)}</p>' if f.note else ""
        sections.append(f'<h2>{_esc(f.title)}</h2>{note}<div class="plot" id="{f.id}"></div>')
    if not metric:
        sections.append('<p class="note">This sweep set no sweep.primary_metric: trials are not ranked and the '
                        'plots of a metric over trials and params are left out.</p>')
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>sweep {_esc(sweep.id)} · {_esc(sweep.experiment)}</title>",
        f"<script>{_HOOK}</script>",
        f"<style>{_STYLE}</style>",
        f"<script>{plotly_js}</script>",
        "</head><body>",
        f"<h1>Sweep {_esc(sweep.id)} <small>({_esc(sweep.experiment)})</small></h1>",
        f'<p class="summary">{_esc(summary)}</p>',
        *sections,
        f'<script type="application/json" id="mltrain-figures">{payload}</script>',
        f"<script>{_DRAW}</script>",
        "</body></html>",
    ])


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _label(text: str) -> str:
    """A job's text as a plotly label: printable, with the characters plotly reads as markup as entities."""
    return html.escape(printable(text, 80), quote=False)


# ------------------------------------------------------------------- table
def _table(trials: Sequence[Trial], metric: str | None) -> str:
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    heads = ["trial", "run", "status", _esc(metric or "metric"), "duration", *(_esc(k) for k in keys)]
    lines = ['<table class="sortable" id="trials"><thead><tr>'
             + "".join(f"<th>{h}</th>" for h in heads) + "</tr></thead><tbody>"]
    for t in trials:
        r = t.row
        status = r.status + (" (reused)" if r.reused else "") + (" (stopped early)" if t.early else "")
        cells = [(r.idx, f"{r.idx}{' ★' if r.best else ''}"), (r.run_id or "", r.run_id or "-"), (status, status),
                 ("" if r.metric is None else repr(r.metric), "-" if r.metric is None else number(r.metric)),
                 ("" if r.duration is None else f"{r.duration:.3f}",
                  "-" if r.duration is None else f"{r.duration:.1f}s")]
        for k in keys:
            value = t.params.get(k, "")
            cells.append((value, _shown_value(k, value) if value else "-"))
        lines.append(f'<tr{" class=best" if r.best else ""}>'
                     + "".join(f'<td data-v="{_esc(v)}">{_esc(s)}</td>' for v, s in cells) + "</tr>")
    lines.append("</tbody></table>")
    return "".join(lines)


# ------------------------------------------------------------------- figures
def _figures(report: SweepReport, trials: Sequence[Trial], metric: str | None) -> list[Figure]:
    figures: list[Figure] = []
    ranked = [t for t in trials if t.row.metric is not None and math.isfinite(t.row.metric)]
    if metric and ranked:
        figures.append(_over_trials(report, ranked, metric))
    names = sorted({n for t in trials for n in t.curves}, key=lambda n: (n != metric, n))
    for k, name in enumerate(names[:MAX_CURVE_METRICS]):
        figures.append(_curves(trials, name, k))
    keys = list(dict.fromkeys(k for t in ranked for k in t.params))
    if metric and ranked and keys:
        figures.append(_parallel(ranked, keys, metric))
        figures += [_scatter(ranked, key, metric, k) for k, key in enumerate(keys)]
    return figures


def _layout(x: str, y: str, xaxis: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"template": "plotly_white", "margin": {"t": 20, "r": 20, "b": 50, "l": 60}, "hovermode": "closest",
            "xaxis": {"title": {"text": _label(x)}, "zeroline": False, **(xaxis or {})},
            "yaxis": {"title": {"text": _label(y)}}, **extra}


def _hover(t: Trial) -> str:
    return "<br>".join([_label(t.name), *(_label(shown_param(f"{k}={v}")) for k, v in t.params.items())])


def _best_trace(best: Trial | None, x: Any, metric: str) -> list[dict[str, Any]]:
    if best is None or best.row.metric is None:
        return []
    return [{"type": "scatter", "mode": "markers", "name": f"best {_label(best.name)}", "x": [x],
             "y": [best.row.metric],
             "marker": {"symbol": "star", "size": 18, "color": "#f2b600", "line": {"width": 1, "color": "#333"}},
             "hovertext": [_hover(best)], "hoverinfo": "text+y"}]


def _over_trials(report: SweepReport, ranked: Sequence[Trial], metric: str) -> Figure:
    goal = report.sweep.settings.get("goal", "min")
    pick = max if goal == "max" else min
    so_far: list[float] = []
    for t in ranked:
        value = t.row.metric
        assert value is not None
        so_far.append(value if not so_far else pick(so_far[-1], value))
    best = next((t for t in ranked if t.row.best), None)
    data = [
        {"type": "scatter", "mode": "markers", "name": "trials", "x": [t.row.idx for t in ranked],
         "y": [t.row.metric for t in ranked], "hovertext": [_hover(t) for t in ranked], "hoverinfo": "text+y",
         "marker": {"size": 9, "symbol": ["x" if t.early else "circle" for t in ranked]}},
        {"type": "scatter", "mode": "lines", "name": f"best so far ({goal})", "x": [t.row.idx for t in ranked],
         "y": so_far, "line": {"shape": "hv", "dash": "dot", "color": "#888"}},
        *_best_trace(best, best.row.idx if best else None, metric),
    ]
    return Figure("plot-trials", f"{metric} over trials", data,
                  _layout("trial", metric, xaxis={"dtick": 1 if len(ranked) <= 30 else None}),
                  note=f"the last {metric} each trial logged; ★ the best, a cross: stopped early")


def _curves(trials: Sequence[Trial], name: str, k: int) -> Figure:
    data = []
    for t in trials:
        points = t.curves.get(name)
        if not points:
            continue
        trace: dict[str, Any] = {"type": "scatter", "mode": "lines", "name": _label(t.name),
                                 "x": [s for s, _ in points], "y": [v for _, v in points],
                                 "hovertext": _hover(t), "hoverinfo": "text+x+y",
                                 "line": {"width": 3.5 if t.row.best else 1.5}}
        if t.early:  # dotted, and its last point crossed: where the controller stopped it
            trace |= {"mode": "lines+markers", "line": {"width": 1.5, "dash": "dot"},
                      "marker": {"symbol": "x", "size": [0] * (len(points) - 1) + [11]}}
        data.append(trace)
    return Figure(f"plot-curves-{k}", f"{name} over steps, every trial", data,
                  _layout("step", name, legend={"title": {"text": "trial"}}),
                  note="the best trial drawn thick; trials stopped early dotted, a cross where they stopped")


def _kind(values: Sequence[str]) -> str:
    """How a param's values go on an axis: ``linear`` numbers, ``log`` (positive numbers spanning ``LOG_SPAN``),
    or ``category`` (anything else: each distinct value a tick)."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return "category"
    if not all(math.isfinite(v) for v in numbers):
        return "category"
    return "log" if min(numbers) > 0 and max(numbers) / min(numbers) >= LOG_SPAN else "linear"


def _dimension(key: str, values: Sequence[str]) -> dict[str, Any]:
    """One parallel-coordinates axis (these have no log or category type: log10 and ticks stand in)."""
    kind = _kind(values)
    if kind == "linear":
        return {"label": _label(key), "values": [float(v) for v in values]}
    if kind == "log":
        return {"label": _label(f"log10({key})"), "values": [math.log10(float(v)) for v in values]}
    distinct = list(dict.fromkeys(values))
    return {"label": _label(key), "values": [distinct.index(v) for v in values],
            "tickvals": list(range(len(distinct))), "ticktext": [_label(_shown_value(key, v)) for v in distinct]}


def _shown_value(key: str, value: str) -> str:
    return shown_param(f"{key}={value}").partition("=")[2]


def _parallel(ranked: Sequence[Trial], keys: Sequence[str], metric: str) -> Figure:
    values = [t.row.metric for t in ranked]
    dimensions = [*(_dimension(key, [t.params.get(key, "") for t in ranked]) for key in keys),
                  {"label": _label(metric), "values": values}]
    data = [{"type": "parcoords", "dimensions": dimensions,
             "line": {"color": values, "colorscale": "Viridis", "showscale": True,
                      "colorbar": {"title": {"text": _label(metric)}}}}]
    return Figure("plot-parallel", f"params → {metric}", data,
                  {"template": "plotly_white", "margin": {"t": 60, "r": 80, "b": 30, "l": 80}},
                  note="each line a trial that logged the metric; drag along an axis to pick a range")


def _scatter(ranked: Sequence[Trial], key: str, metric: str, k: int) -> Figure:
    kind = _kind([t.params.get(key, "") for t in ranked])

    def x(t: Trial) -> Any:
        value = t.params.get(key, "")
        return value if kind == "category" else float(value)

    best = next((t for t in ranked if t.row.best), None)
    data = [{"type": "scatter", "mode": "markers", "name": "trials", "x": [x(t) for t in ranked],
             "y": [t.row.metric for t in ranked], "hovertext": [_hover(t) for t in ranked], "hoverinfo": "text+y",
             "marker": {"size": 9}},
            *_best_trace(best, x(best) if best else None, metric)]
    return Figure(f"plot-param-{k}", f"{metric} against {key}", data, _layout(key, metric, xaxis={"type": kind}))
