"""What a sweep looks like to a person: its trials with params, status, primary metric and duration, best marked.

Built from the run history alone, so ``sweeps show`` in another terminal,
``sweeps attach`` and the end of ``mltrain -m`` all show the same table. This
is the model (and how a number or a parameter is written in a line or a
table); the table itself is drawn by the CLI (``mltrain.cli.output``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from mltrain.store.db import COMPLETED, RunRecord, Store, SweepRecord
from mltrain.store.workspace import Workspace
from mltrain.sweep.process import alive

EARLY = "early termination"
"""The reason recorded for a trial the controller stopped early (its policy, ``mltrain.sweep.stopping``)."""


@dataclass
class TrialRow:
    idx: int
    params: list[str]
    run_id: str | None
    status: str
    reason: str | None
    metric: float | None
    duration: float | None
    reused: bool
    best: bool = False

    @property
    def stopped_early(self) -> bool:
        return self.reason == EARLY

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def shown_status(sweep: SweepRecord) -> str:
    """The recorded status, or ``Interrupted`` for a running sweep whose controller is gone."""
    return "Interrupted" if sweep.status == "Running" and not alive(sweep.controller) else sweep.status


def trial_rows(store: Store, workspace: Workspace, sweep: SweepRecord) -> list[TrialRow]:
    from mltrain.errors import RunNotFound
    from mltrain.targets.base import reconcile

    metric = sweep.settings.get("primary_metric")
    rows = []
    for trial in store.trials(sweep.id):
        record: RunRecord | None = None
        if trial.run_id:
            try:
                record = reconcile(store, workspace, store.get(trial.run_id))
            except RunNotFound:
                record = None
        if record is None:
            status = "Failed" if trial.error else "Queued"
            rows.append(TrialRow(trial.idx, trial.params, trial.run_id, status, trial.error, None, None, trial.reused))
            continue
        value = store.last_metrics(record.id).get(metric) if metric else None
        rows.append(TrialRow(trial.idx, trial.params, record.id, record.status, record.reason, value,
                             record.duration, trial.reused))
    # A NaN objective (a diverged trial) ranks nowhere: min/max over it would depend on the trials' order
    ranked = [r for r in rows if r.status == COMPLETED and r.metric is not None and not math.isnan(r.metric)]
    if ranked:
        pick = max if sweep.settings.get("goal") == "max" else min
        pick(ranked, key=lambda r: r.metric).best = True  # type: ignore[arg-type,return-value]
    return rows


def counts(rows: list[TrialRow]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row.status] = out.get(row.status, 0) + 1
    return out


@dataclass
class SweepReport:
    """A sweep as shown: its record, the status to show, and its trials (best marked)."""

    sweep: SweepRecord
    status: str
    rows: list[TrialRow]

    @property
    def best(self) -> TrialRow | None:
        return next((r for r in self.rows if r.best), None)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return self.sweep.to_dict() | {
            "status": self.status, "counts": counts(self.rows), "best_trial": best.idx if best else None,
            "trials": [r.to_dict() for r in self.rows],
        }


def sweep_report(store: Store, workspace: Workspace, sweep: SweepRecord) -> SweepReport:
    return SweepReport(sweep, shown_status(sweep), trial_rows(store, workspace, sweep))


def sweep_dict(store: Store, workspace: Workspace, sweep: SweepRecord) -> dict[str, Any]:
    return sweep_report(store, workspace, sweep).to_dict()


_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][-+]?\d+)?")
SIGNIFICANT = 6


def number(value: float) -> str:
    """A value for a table: an integral one as an int (``3``, ``1200000``), else 6 significant digits."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{SIGNIFICANT}g}"


def shown_param(item: str) -> str:
    """``key=value`` as a table shows it: a float value with more than 6 significant digits is rounded
    (``0.30000000000000004`` -> ``0.3``, a random draw ``0.020460187086026708`` -> ``0.0204602``);
    anything else (ints, ``1e-4``, words, lists) stays as written. The run itself got the exact value."""
    key, eq, value = item.partition("=")
    if eq and _FLOAT.fullmatch(value):
        rounded = f"{float(value):.{SIGNIFICANT}g}"
        if float(rounded) != float(value):
            return f"{key}={rounded}"
    return item


def shown_params(items: list[str]) -> str:
    return " ".join(shown_param(item) for item in items)
