"""The Python API: what a notebook calls. Re-exported from ``mltrain``.

    import mltrain

    run = mltrain.submit(script="train.py", params={"lr": 0.01}, compute="docker", detach=False)
    run.metrics()["loss"]                    # [(step, value, time), ...]
    run.metrics_frame()                      # a pandas DataFrame (pandas installed)
    run.outputs(download_to="out/")          # the files it wrote, copied here
    again = run.rerun(params={"lr": 0.02})   # from its stored snapshot and config

    good = mltrain.runs(experiment="mnist", where="metrics.acc > 0.9", sort="metrics.acc:desc")
    sweep = mltrain.sweeps()[0]
    sweep.best().params, [t.status for t in sweep.trials()]

Every call reads the workspace's run history (``$MLTRAIN_HOME``, else the nearest ``.mltrain``) unless
``workspace=`` names one. The keyword form of ``submit`` is turned into the same override list the CLI takes
(``params={"lr": 0.01}`` is ``params.lr=0.01``), with strings quoted so a value is never re-read as syntax.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mltrain import results
from mltrain.errors import UsageError
from mltrain.store.db import Store, SweepRecord
from mltrain.store.workspace import Workspace

WorkspaceLike = Workspace | str | os.PathLike[str] | None
_OPTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*")


def _workspace(workspace: WorkspaceLike) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace.locate(workspace)


def _history(workspace: Workspace) -> Store:
    return Store(workspace.db_path, create=False)


class Run(results.Run):
    """A run in the history (see ``mltrain.results.Run`` for what it reads), and how to run it again."""

    @classmethod
    def _of(cls, run: results.Run) -> Run:
        return cls(run.id, run.workspace, _handle=run._handle, _offset=run._offset, existing=run.existing)

    def rerun(self, *overrides: str, detach: bool = True, **settings: Any) -> Run:
        """Run this run again from its stored snapshot and config, with changes on top.

        ``settings`` take the keyword form of ``submit`` (``params={"lr": 0.02}``, ``compute="docker"``);
        ``overrides`` the CLI's (``"params.lr=0.02"``). ``detach=False`` waits for the new run to end.
        """
        from mltrain.plan.rerun import rerun

        with self._store() as store:
            parent = store.get(self.id)
        run = Run._of(rerun(self.workspace, parent, [*to_overrides(**settings), *overrides]))
        if not detach:
            run.wait()
        return run


def submit(overrides: Sequence[str] = (), *, script: str | None = None, params: Mapping[str, Any] | None = None,
           args: Sequence[Any] | None = None, compute: str | Mapping[str, Any] | None = None,
           environment: str | Mapping[str, Any] | None = None, framework: str | Mapping[str, Any] | None = None,
           experiment: str | None = None, env_vars: Mapping[str, Any] | None = None,
           config_name: str | None = None, detach: bool = True, show_output: bool = False,
           idempotency_key: str | None = None) -> Run:
    """Submit a run, as ``mltrain <overrides>`` does; keywords are the same settings spelt as Python values.

    ``compute``/``environment``/``framework``: an option's name (``"docker"``), or a mapping of settings for
    the option chosen by default or in ``overrides`` (``{"cancel_grace": 5}``). ``detach=False`` waits for
    the run to end (``show_output=True`` streams its output meanwhile); either way the ``Run`` is returned.
    """
    from mltrain.run import submit as submit_overrides

    if isinstance(overrides, str):
        raise UsageError(f"overrides is a list of strings, not one string: submit([{overrides!r}])")
    keywords = to_overrides(script=script, params=params, args=args, compute=compute, environment=environment,
                            framework=framework, experiment=experiment, env_vars=env_vars)
    run = Run._of(submit_overrides([*keywords, *overrides], config_name=config_name, show_output=show_output,
                                   idempotency_key=idempotency_key))
    if not detach:
        run.wait(show_output=show_output)
    return run


def to_overrides(**settings: Any) -> list[str]:
    """``script="t.py", params={"lr": 0.1}, compute="docker"`` -> ``["script='t.py'", "params.lr=0.1",
    "compute=docker"]`` (``None`` values are left out)."""
    found: list[str] = []
    for key, value in settings.items():
        if value is None:
            continue
        if key in ("compute", "environment", "framework") and isinstance(value, str):
            if not _OPTION.fullmatch(value):
                raise UsageError(f"{key}={value!r} is not an option name (letters, digits, _ . - /)")
            found.append(f"{key}={value}")
        elif isinstance(value, Mapping):
            found += [f"{key}.{name}={_value(item)}" for name, item in _flat(value)]
        else:
            found.append(f"{key}={_value(value)}")
    return found


def _flat(node: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in node.items():
        if not isinstance(key, str) or not _OPTION.fullmatch(key):
            raise UsageError(f"{prefix}{key!r} is not a usable key (letters, digits, _ . - /)")
        if isinstance(value, Mapping):
            items += _flat(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _value(value: Any) -> str:
    """A Python value in Hydra's override grammar; strings quoted (``'0.1'`` stays a string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str | Path):
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Sequence):
        return "[" + ",".join(_value(item) for item in value) + "]"
    raise UsageError(f"cannot pass {type(value).__name__} {value!r} as a setting; use str, number, bool or a list")


def runs(*, experiment: str | None = None, status: str | None = None, where: str | None = None,
         sort: str | None = None, sweep: str | None = None, limit: int | None = None,
         workspace: WorkspaceLike = None) -> list[Run]:
    """Runs of the history, newest first, filtered as ``mltrain runs list`` filters them.

    ``where``: ``"metrics.acc > 0.9 and params.lr < 0.01"`` (``mltrain.tracking.query``); ``sort``:
    ``"metrics.acc:desc"``; ``sweep``: a sweep id (its trials' runs).
    """
    from mltrain.tracking.query import find_runs

    ws = _workspace(workspace)
    with _history(ws) as store:
        sweep_id = store.get_sweep(sweep).id if sweep else None
        found = find_runs(store, ws, experiment=experiment, status=status, sweep_id=sweep_id, where=where,
                          sort=sort, limit=limit)
    return [Run(record.id, ws) for record in found.runs]


class Sweep:
    """A sweep (``mltrain -m``) in the history: its trials, its best trial, its report."""

    def __init__(self, sweep_id: str, workspace: Workspace) -> None:
        self.id = sweep_id
        self.workspace = workspace

    @classmethod
    def get(cls, sweep_id: str, workspace: WorkspaceLike = None) -> Sweep:
        ws = _workspace(workspace)
        with _history(ws) as store:
            return cls(store.get_sweep(sweep_id).id, ws)

    @property
    def record(self) -> SweepRecord:
        with _history(self.workspace) as store:
            return store.get_sweep(self.id)

    @property
    def status(self) -> str:
        """The recorded status, or ``Interrupted`` for a running sweep whose controller is gone."""
        from mltrain.sweep.report import shown_status

        return shown_status(self.record)

    @property
    def settings(self) -> dict[str, Any]:
        """Sampler, primary metric, goal, ... as the sweep was started with."""
        return dict(self.record.settings)

    def _rows(self) -> list[Any]:
        from mltrain.sweep.report import trial_rows

        with _history(self.workspace) as store:
            return trial_rows(store, self.workspace, store.get_sweep(self.id))

    def trials(self) -> list[Run]:
        """The runs of its trials, in trial order (a trial whose submission failed has none)."""
        return [Run(row.run_id, self.workspace) for row in self._rows() if row.run_id]

    def best(self) -> Run | None:
        """The completed trial with the best last value of the primary metric (None before one completes)."""
        best = next((row for row in self._rows() if row.best), None)
        return Run(best.run_id, self.workspace) if best is not None and best.run_id else None

    def report(self, path: str | os.PathLike[str]) -> Path:
        """Write the sweep's self-contained HTML report to ``path``; returns it."""
        from mltrain.tracking.report import write_report

        write_report(self.workspace, self.id, Path(path))
        return Path(path)

    def __repr__(self) -> str:
        return f"Sweep({self.id!r})"


def sweeps(*, experiment: str | None = None, limit: int | None = None, workspace: WorkspaceLike = None) -> list[Sweep]:
    """Sweeps of the history, newest first."""
    ws = _workspace(workspace)
    with _history(ws) as store:
        found = [s for s in store.find_sweeps() if experiment is None or s.experiment == experiment]
    return [Sweep(s.id, ws) for s in (found[:limit] if limit else found)]


__all__ = ["Run", "Sweep", "runs", "submit", "sweeps", "to_overrides"]
