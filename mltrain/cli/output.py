"""Everything the ``mltrain`` command shows: its lines, tables, times and the sweep table.

The library returns data and logs; only the CLI prints, through here, so
``runs``, ``sweeps``, ``gc`` and a submit write alike: results on stdout,
``mltrain: ...`` notes on stderr. Imports nothing heavy: ``mltrain runs list``
pays only for the store.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mltrain.errors import MltrainError, UsageError

if TYPE_CHECKING:
    from mltrain.store.db import RunRecord
    from mltrain.store.workspace import Workspace
    from mltrain.sweep.report import SweepReport

RUN_EXIT_CODES = {"Completed": 0, "Canceled": 130}
"""The command's exit code for a run (or sweep) that ended in this status; anything else is 1."""


def out(text: str) -> None:
    """One result line (or several) on stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def json_text(data: Any) -> str:
    """``--json`` output that strict parsers read: a NaN or infinite metric becomes ``"NaN"``, ``"Infinity"``
    or ``"-Infinity"`` (protobuf's JSON mapping, which MLflow's REST API uses), never a bare ``NaN`` token."""
    return json.dumps(_finite(data), indent=2, allow_nan=False)


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return "NaN" if math.isnan(data) else ("Infinity" if data > 0 else "-Infinity")
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(value) for value in data]
    return data


def write(data: bytes) -> None:
    """A run's output, as it came."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def info(message: str) -> None:
    """A note for the person at the terminal, on stderr."""
    sys.stderr.write(f"mltrain: {message}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    info(f"warning: {message}")


def error(message: str) -> None:
    """The one line the error boundary prints."""
    info(f"error: {message}")


def usage_error(prog: str, message: str) -> UsageError:
    """A mistake on the command line, as one line that points at ``--help`` (usage stays behind it)."""
    where = prog.removeprefix("mltrain").strip()
    return UsageError(f"{where + ': ' if where else ''}{message} (see {prog} --help)")


def exit_code(status: str) -> int:
    return RUN_EXIT_CODES.get(status, 1)


def ended(kind: str, ident: str, status: str, reason: str | None = None) -> str:
    """``run ID Canceled (reason)``: what ``cancel`` says a run or sweep became."""
    return f"{kind} {ident} {status}" + (f" ({reason})" if reason else "")


def run_ended(record: RunRecord, workspace: Workspace | None = None) -> int:
    """Say how a followed run ended, with each metric's last value (read from ``workspace``'s history);
    returns the command's exit code for it. The reason stays last on the line: it is the script's error."""
    took = f" in {record.duration:.1f}s" if record.duration is not None else ""
    last = ""
    if workspace is not None:
        from mltrain.store.db import Store
        from mltrain.tracking.sparkline import last_values

        try:
            with Store(workspace.db_path, create=False) as store:
                values = store.last_metrics(record.id)
        except MltrainError as exc:  # the run ended all the same: say so, and its exit code stays the run's
            warn(f"run {record.id}: its metrics could not be read: {exc}")
            values = {}
        last = f" (last {last_values(values)})" if values else ""
    why = f": {record.reason}" if record.reason else ""
    info(f"run {record.id} {record.status}{took}{last}{why}")
    return exit_code(record.status)


def write_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """``--csv``: values as stored (times in epoch seconds, floats in full; lists and dicts as JSON), for a
    spreadsheet or pandas."""
    import csv
    import json

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v if isinstance(v, str | int | float) else json.dumps(v) for v in row])
    sys.stdout.flush()


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the first row is the header."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def when(stamp: float | None) -> str:
    """A time as ``2026-01-01 12:00:00`` in local time, or ``-``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def duration(seconds: float | None) -> str:
    """A run's duration in ``runs`` tables: ``12.3s``, ``1m15s``, ``1h02m``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def trial_duration(seconds: float | None) -> str:
    """A trial's duration in sweep tables: ``12.3s``, ``62m05s`` (minutes keep trials comparable)."""
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


# ------------------------------------------------------------------- sweeps
def sweep_table(report: SweepReport) -> str:
    """A sweep and its trials: what ``sweeps show``, ``sweeps attach`` and the end of ``mltrain -m`` print."""
    from mltrain.sweep.report import counts, number, shown_params

    sweep, rows = report.sweep, report.rows
    metric = sweep.settings.get("primary_metric") or "METRIC"
    tally = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts(rows).items()))
    head = [f"sweep {sweep.id}  {report.status}" + (f" ({sweep.reason})" if sweep.reason else ""),
            f"{len(rows)} of {sweep.planned if sweep.planned is not None else '?'} trials: {tally or 'none yet'}"
            f"   sampler {sweep.settings.get('sampler', 'grid')}"
            + (f", goal {sweep.settings.get('goal')} {metric}" if sweep.settings.get("primary_metric") else "")]
    cells = [("TRIAL", "RUN", "STATUS", metric, "DURATION", "PARAMS")]
    for r in rows:
        status = r.status + (" (reused)" if r.reused else "") + (" (early)" if r.stopped_early else "")
        cells.append((f"{r.idx}{' *' if r.best else ''}", r.run_id or "-", status,
                      "-" if r.metric is None else number(r.metric), trial_duration(r.duration),
                      shown_params(r.params)))
    lines = [*head, table(cells)]
    if report.best is not None:
        lines.append(f"* best by {metric} ({sweep.settings.get('goal')})")
    return "\n".join(lines)


def sweeps_table(sweeps: Sequence[Mapping[str, Any]]) -> str:
    """``sweeps list``: one line a sweep (as ``SweepReport.to_dict`` gives it), with its best trial."""
    from mltrain.store.db import TERMINAL
    from mltrain.sweep.report import number

    rows = [("ID", "STATUS", "CREATED", "TRIALS", "BEST", "SAMPLER", "EXPERIMENT")]
    for s in sweeps:
        metric = s["settings"].get("primary_metric")
        best = next((t for t in s["trials"] if t["best"]), None)
        shown = f"#{best['idx']} {metric}={number(best['metric'])}" if best else "-"
        done = sum(n for status, n in s["counts"].items() if status in TERMINAL)
        rows.append((s["id"], s["status"], when(s["created"]), f"{done}/{s['planned'] or '?'}", shown,
                     s["settings"].get("sampler", "grid"), s["experiment"]))
    return table(rows)
