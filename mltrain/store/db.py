"""The run history: the only code that touches ``runs.db``.

SQLite in WAL mode; every write is one short ``BEGIN IMMEDIATE`` transaction
with a busy timeout, so a hundred sweep trials can record at once. Status
only moves forward (``Queued -> Preparing -> Running -> Finalizing ->
Completed | Failed | Canceled``) and a terminal status never changes: the
guard is in the UPDATE itself, so two writers racing cannot break it.

Sweeps (schema 2) add two tables: ``sweeps`` (one row per sweep: its command,
settings, controller process and status) and ``trials`` (one row per trial:
its swept overrides, its fingerprint, and the run that carries it out). A
history written by schema 1 is migrated in place the first time it is opened.

Schema 3 adds two columns to ``runs``: ``client`` (the submitting process -- pid, start time, machine --
and the process group its preparation children run in; ``mltrain.hosts.client``), so whoever looks next can
tell a run whose client died before launching it; and ``idempotency_key`` (unique), so a retried submit
finds the run it started before instead of starting another.
"""

from __future__ import annotations

import json
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mltrain.errors import RunNotFound, StoreError, SweepNotFound
from mltrain.tracking.joblog import strip_ansi_text

SCHEMA_VERSION = 5

QUEUED, PREPARING, RUNNING, FINALIZING = "Queued", "Preparing", "Running", "Finalizing"
COMPLETED, FAILED, CANCELED = "Completed", "Failed", "Canceled"
ACTIVE = (QUEUED, PREPARING, RUNNING, FINALIZING)
TERMINAL = (COMPLETED, FAILED, CANCELED)
STATUSES = ACTIVE + TERMINAL

_SCHEMA = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    exit_code INTEGER,
    reason TEXT,
    script TEXT NOT NULL,
    source_dir TEXT NOT NULL,
    compute TEXT NOT NULL,
    environment TEXT NOT NULL,
    env_fingerprint TEXT,
    snapshot_id TEXT,
    parent_id TEXT,
    sweep_id TEXT,
    handle TEXT,
    git TEXT,
    overrides TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX runs_created ON runs (created);
CREATE INDEX runs_experiment ON runs (experiment, created);
CREATE INDEX runs_status ON runs (status);
CREATE TABLE transitions (
    run_id TEXT NOT NULL REFERENCES runs (id),
    status TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX transitions_run ON transitions (run_id);
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs (id),
    name TEXT NOT NULL,
    step INTEGER,
    value REAL NOT NULL,
    time REAL
);
CREATE INDEX metrics_run ON metrics (run_id, name);
"""

# Each entry takes a history from version N to N + 1; a new history gets _SCHEMA then all of them.
_MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE sweeps (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    experiment TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    ended REAL,
    reason TEXT,
    planned INTEGER,
    command TEXT NOT NULL DEFAULT '{}',
    settings TEXT NOT NULL DEFAULT '{}',
    controller TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sweeps_key ON sweeps (key, created);
CREATE INDEX sweeps_created ON sweeps (created);
CREATE TABLE trials (
    sweep_id TEXT NOT NULL REFERENCES sweeps (id),
    idx INTEGER NOT NULL,
    params TEXT NOT NULL DEFAULT '[]',
    fingerprint TEXT NOT NULL,
    run_id TEXT,
    reused INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    PRIMARY KEY (sweep_id, idx)
);
CREATE INDEX trials_fingerprint ON trials (fingerprint);
CREATE INDEX trials_run ON trials (run_id);
CREATE INDEX runs_sweep ON runs (sweep_id);
""",
    2: """
ALTER TABLE runs ADD COLUMN client TEXT;
ALTER TABLE runs ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX runs_idempotency_key ON runs (idempotency_key);
""",
    # hardware: what the job saw (GPUs, CPUs, memory); params: the script's params, flat, for queries;
    # mlflow: the mirror's state (run id, lag, error); metric_last: each metric's latest value, for fast
    # filtering and sorting of long histories without scanning every step.
    3: """
ALTER TABLE runs ADD COLUMN hardware TEXT;
ALTER TABLE runs ADD COLUMN params TEXT;
ALTER TABLE runs ADD COLUMN mlflow TEXT;
CREATE TABLE metric_last (
    run_id TEXT NOT NULL REFERENCES runs (id),
    name TEXT NOT NULL,
    step INTEGER,
    value REAL NOT NULL,
    time REAL,
    PRIMARY KEY (run_id, name)
);
""",
    # A metric's value may be NaN (a diverged loss), which SQLite stores as NULL: ``value`` becomes nullable,
    # NULL read back as NaN (a query sees it as no value: it compares with nothing and sorts last).
    # SQLite cannot drop NOT NULL in place, so both tables are rebuilt, row ids (the points' order) kept.
    4: """
CREATE TABLE metrics_v5 (
    run_id TEXT NOT NULL REFERENCES runs (id),
    name TEXT NOT NULL,
    step INTEGER,
    value REAL,
    time REAL
);
INSERT INTO metrics_v5 (rowid, run_id, name, step, value, time)
    SELECT rowid, run_id, name, step, value, time FROM metrics;
DROP TABLE metrics;
ALTER TABLE metrics_v5 RENAME TO metrics;
CREATE INDEX metrics_run ON metrics (run_id, name);
CREATE TABLE metric_last_v5 (
    run_id TEXT NOT NULL REFERENCES runs (id),
    name TEXT NOT NULL,
    step INTEGER,
    value REAL,
    time REAL,
    PRIMARY KEY (run_id, name)
);
INSERT INTO metric_last_v5 SELECT run_id, name, step, value, time FROM metric_last;
DROP TABLE metric_last;
ALTER TABLE metric_last_v5 RENAME TO metric_last;
""",
}

_COLUMNS = (
    "id", "experiment", "status", "created", "started", "ended", "exit_code", "reason", "script",
    "source_dir", "compute", "environment", "env_fingerprint", "snapshot_id", "parent_id", "sweep_id",
    "handle", "git", "overrides", "client", "idempotency_key", "hardware", "params", "mlflow",
)
_JSON_COLUMNS = ("handle", "git", "overrides", "client", "hardware", "params", "mlflow")
_UPDATABLE = frozenset(_COLUMNS) - {"id", "status", "created"}
# Set by create_run's own arguments: not through its ``fields``.
_CREATED_WITH = frozenset({"experiment", "script", "source_dir", "compute", "environment", "parent_id", "sweep_id",
                           "overrides", "client", "idempotency_key", "params"})


@dataclass
class RunRecord:
    id: str
    experiment: str
    status: str
    created: float
    script: str
    source_dir: str
    compute: str
    environment: str
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    env_fingerprint: str | None = None
    snapshot_id: str | None = None
    parent_id: str | None = None
    sweep_id: str | None = None
    handle: dict[str, Any] | None = None
    git: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)
    client: dict[str, Any] | None = None  # who is preparing it (mltrain.hosts.client); set at submit
    idempotency_key: str | None = None
    hardware: dict[str, Any] | None = None  # what the job saw: GPUs, CPUs, memory
    params: dict[str, Any] | None = None  # the script's params, flattened to dotted keys
    mlflow: dict[str, Any] | None = None  # the MLflow mirror's run id and state

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _COLUMNS} | {"duration": self.duration}


def _allowed_predecessors(status: str) -> tuple[str, ...]:
    if status in TERMINAL:
        return ACTIVE
    return ACTIVE[: ACTIVE.index(status)]


def new_run_id() -> str:
    return secrets.token_hex(4)


class IdempotencyHit(Exception):
    """``create_run`` found a run already submitted under the idempotency key; ``record`` is that run."""

    def __init__(self, record: RunRecord) -> None:
        super().__init__(record.id)
        self.record = record


class _Taken(Exception):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id


class Store:
    """A connection to one workspace's ``runs.db``; threads may share it.

    Each method's statements run under the store's lock, so threads sharing one ``Store`` never interleave
    inside a transaction. A sweep's workers share one: with a connection each, every commit by one made the
    others re-read the pages it changed and pass SQLite's process-wide file-lock mutex (see
    :class:`mltrain.sweep.controller.SweepController`).
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._lock = threading.RLock()
        if not path.exists() and not create:
            raise StoreError(f"no run history at {path}; submit a run first, or set MLTRAIN_HOME")
        try:
            self._db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 60000")
            # WAL + NORMAL: a commit is not fsynced (a checkpoint is). The history stays consistent on a
            # crash and loses at most the last few commits on power loss; every commit costs ~1 ms less
            # than FULL's fsync, which a sweep pays ~10 times per trial on the path that starts it.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{path} is not a usable run history ({exc}); move it aside to start a new one"
            ) from exc

    def _check_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer mltrain (schema {version}, this one reads "
                f"{SCHEMA_VERSION}); upgrade mltrain"
            )
        if version == SCHEMA_VERSION:
            return
        tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version == 0 and tables:
            raise StoreError(f"{self.path} is an SQLite file but not an mltrain run history; move it aside")
        with self._write():
            current = self._db.execute("PRAGMA user_version").fetchone()[0]  # another opener may have won
            steps = [_SCHEMA] if current == 0 else []
            steps += [_MIGRATIONS[v] for v in range(max(current, 1), SCHEMA_VERSION)]
            for script in steps:
                for statement in script.split(";"):  # not executescript: it would COMMIT early
                    if statement.strip():
                        self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db.execute("PRAGMA journal_mode = WAL")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """A read's rows, fetched whole under the lock (a thread sharing the connection may be mid-write)."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ runs
    def create_run(
        self, *, experiment: str, script: str, source_dir: str, compute: str, environment: str,
        overrides: Sequence[str] = (), parent_id: str | None = None, sweep_id: str | None = None,
        run_id: str | None = None, client: dict[str, Any] | None = None, idempotency_key: str | None = None,
        params: dict[str, Any] | None = None, preparing: bool = False, fields: dict[str, Any] | None = None,
    ) -> RunRecord:
        """A new Queued run; with ``idempotency_key``, raises ``IdempotencyHit`` if a run has that key already.

        ``params``: the script's params, flat (``{"model.depth": 4}``), kept for queries (``runs list --where``).
        ``preparing``: the run is Preparing at once (both transitions recorded), ``fields``: more of its
        updatable fields (``snapshot_id``, ``git``) -- what the submit would otherwise write right after, in
        writes of their own (a sweep's worker saves two a trial).

        The look-up and the insert are one ``BEGIN IMMEDIATE`` transaction (and the key has a unique index),
        so of two clients submitting the same key at once exactly one creates the run.
        """
        extra = dict(fields or {})
        unknown = set(extra) - (_UPDATABLE - _CREATED_WITH)
        if unknown:
            raise ValueError(f"not settable at creation: {sorted(unknown)}")
        now = time.time()
        row: dict[str, Any] = {
            "experiment": experiment, "status": PREPARING if preparing else QUEUED, "created": now,
            "script": script, "source_dir": source_dir,
            "compute": compute, "environment": environment, "parent_id": parent_id, "sweep_id": sweep_id,
            "overrides": json.dumps(list(overrides)), "client": json.dumps(client) if client else None,
            "idempotency_key": idempotency_key, "params": json.dumps(params or {}),
        }
        row.update({name: json.dumps(value) if name in _JSON_COLUMNS else value for name, value in extra.items()})
        statuses = (QUEUED, PREPARING) if preparing else (QUEUED,)

        def insert(db: sqlite3.Connection, candidate: str) -> None:
            if idempotency_key is not None:
                found = db.execute("SELECT id FROM runs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if found is not None:
                    raise _Taken(found[0])
            db.execute(f"INSERT INTO runs (id, {', '.join(row)}) VALUES (?{', ?' * len(row)})",
                       (candidate, *row.values()))
            db.executemany("INSERT INTO transitions VALUES (?,?,?)", [(candidate, status, now) for status in statuses])

        try:
            created = self._insert_new("run", run_id, insert)
        except _Taken as taken:
            raise IdempotencyHit(self.get(taken.run_id)) from None
        # The row as inserted, read back without reading it back (a sweep's worker saves a query a trial).
        return _record(tuple(created if name == "id" else row.get(name) for name in _COLUMNS))

    def _insert_new(self, what: str, wanted: str | None, insert: Callable[[sqlite3.Connection, str], None]) -> str:
        """Run ``insert`` with ``wanted`` or a fresh random id (retried on a clash); returns the id."""
        for _ in range(20):
            candidate = wanted or new_run_id()
            try:
                with self._write() as db:
                    insert(db, candidate)
                return candidate
            except sqlite3.IntegrityError:
                if wanted:
                    raise StoreError(f"{what} id {wanted} already exists") from None
        raise StoreError(f"could not allocate a unique {what} id")

    def update(self, run_id: str, **fields: Any) -> None:
        """Set non-status fields (handle, fingerprints, git, ...)."""
        self._set("runs", _UPDATABLE, _JSON_COLUMNS, run_id, fields)

    def _set(self, table: str, allowed: frozenset[str], json_columns: Sequence[str], ident: str,
             fields: dict[str, Any]) -> None:
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if not fields:
            return
        names = sorted(fields)
        values = [json.dumps(fields[n]) if n in json_columns else fields[n] for n in names]
        with self._write() as db:
            db.execute(f"UPDATE {table} SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?", (*values, ident))

    def transition(self, run_id: str, status: str, *, unlaunched: bool = False,
                   metrics: Iterable[tuple[str, float, int | None, float | None]] | None = None,
                   **fields: Any) -> bool:
        """Move a run forward to ``status``; returns False (and changes nothing else) if that is not forward.

        ``unlaunched``: only if the run was never launched (Queued or Preparing, no handle) -- what a reader
        may decide for a run whose client died, without racing that client's last write.
        ``metrics``: first set the run's metrics to exactly these (:meth:`replace_metrics`, done whether or
        not the move is forward), in the same transaction: a run's end is one write, not two.
        """
        if status not in STATUSES:
            raise ValueError(status)
        now = time.time()
        fields = dict(fields)
        if fields.get("reason"):
            fields["reason"] = strip_ansi_text(str(fields["reason"]))
        if status == RUNNING:
            fields.setdefault("started", now)
        if status in TERMINAL:
            fields.setdefault("ended", now)
        names = sorted(fields)
        values = [json.dumps(fields[n]) if n in _JSON_COLUMNS else fields[n] for n in names]
        allowed = (QUEUED, PREPARING) if unlaunched else _allowed_predecessors(status)
        sets = ", ".join(["status = ?", *(f"{n} = ?" for n in names)])
        guard = " AND handle IS NULL" if unlaunched else ""
        rows = None if metrics is None else _metric_rows(run_id, metrics)
        with self._write() as db:
            if rows is not None:
                _replace_metrics(db, run_id, rows)
            cursor = db.execute(
                f"UPDATE runs SET {sets} WHERE id = ? AND status IN ({', '.join('?' * len(allowed))}){guard}",
                (status, *values, run_id, *allowed),
            )
            if cursor.rowcount != 1:
                return False
            db.execute("INSERT INTO transitions VALUES (?,?,?)", (run_id, status, now))
        return True

    def get(self, run_id: str) -> RunRecord:
        """A run by its id or a unique prefix of it."""
        return _record(self._by_id("runs", _COLUMNS, run_id, RunNotFound))

    def _by_id(self, table: str, columns: Sequence[str], ident: str, missing: type[StoreError]) -> Any:
        """The row whose id is ``ident``, else the one whose id starts with it; ``missing`` if none or several."""
        select = f"SELECT {', '.join(columns)} FROM {table}"
        rows = self._rows(f"{select} WHERE id = ?", (ident,))
        if not rows and ident:
            pattern = ident.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self._rows(f"{select} WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (pattern,))
        noun = table.rstrip("s")
        if not rows:
            raise missing(f"no {noun} {ident!r} in {self.path.parent}; `mltrain {table} list` shows the ids")
        if len(rows) > 1:
            raise missing(f"{ident!r} matches several {table}; give more of the id")
        return rows[0]

    def find(
        self, *, experiment: str | None = None, status: str | None = None, sweep_id: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Newest first."""
        where, params = [], []
        for column, value in (("experiment", experiment), ("status", status), ("sweep_id", sweep_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_record(row) for row in self._rows(sql, params)]

    def count(self) -> int:
        return int(self._rows("SELECT count(*) FROM runs")[0][0])

    def transitions(self, run_id: str) -> list[tuple[str, float]]:
        rows = self._rows("SELECT status, time FROM transitions WHERE run_id = ? ORDER BY rowid", (run_id,))
        return [(status, when) for status, when in rows]

    def snapshot_ids(self) -> set[str]:
        rows = self._rows("SELECT DISTINCT snapshot_id FROM runs WHERE snapshot_id IS NOT NULL")
        return {row[0] for row in rows}

    def delete_runs(self, run_ids: Iterable[str]) -> int:
        ids = list(run_ids)
        with self._write() as db:
            for table, column in (("metrics", "run_id"), ("metric_last", "run_id"), ("transitions", "run_id"),
                                  ("runs", "id")):
                db.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(i,) for i in ids])
            db.executemany("UPDATE trials SET run_id = NULL, reused = 0, error = 'run deleted' WHERE run_id = ?",
                           [(i,) for i in ids])
        return len(ids)

    # --------------------------------------------------------------- metrics
    def add_metrics(self, run_id: str, metrics: Iterable[tuple[str, float, int | None, float | None]]) -> int:
        """Append metric points; each metric's latest value is kept in ``metric_last`` in the same transaction."""
        rows = _metric_rows(run_id, metrics)
        if rows:
            with self._write() as db:
                db.executemany("INSERT INTO metrics VALUES (?,?,?,?,?)", rows)
                db.executemany("INSERT OR REPLACE INTO metric_last VALUES (?,?,?,?,?)", _last_rows(rows))
        return len(rows)

    def replace_metrics(self, run_id: str, metrics: Iterable[tuple[str, float, int | None, float | None]]) -> int:
        """Set a run's metrics to exactly ``metrics`` (finalising twice must not double them)."""
        rows = _metric_rows(run_id, metrics)
        with self._write() as db:
            _replace_metrics(db, run_id, rows)
        return len(rows)

    def unindexed_runs(self, limit: int = 1000) -> list[str]:
        """Runs recorded before params and ``metric_last`` were filled on write (``params`` is NULL):
        ``index_runs`` brings each up to date, once."""
        rows = self._rows("SELECT id FROM runs WHERE params IS NULL LIMIT ?", (limit,))
        return [row[0] for row in rows]

    def index_runs(self, params: dict[str, dict[str, Any]]) -> None:
        """Fill older runs' ``params`` (``{run_id: params}``) and their ``metric_last`` rows from their stored
        metrics, in one transaction."""
        with self._write() as db:
            for run_id, values in params.items():
                db.execute("DELETE FROM metric_last WHERE run_id = ?", (run_id,))
                db.execute(
                    "INSERT INTO metric_last SELECT run_id, name, step, value, time FROM metrics WHERE rowid IN "
                    "(SELECT max(rowid) FROM metrics WHERE run_id = ? GROUP BY name)", (run_id,))
                db.execute("UPDATE runs SET params = ? WHERE id = ?", (json.dumps(values), run_id))

    def last_metrics_of(self, run_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{run_id: {metric: last value}}`` for many runs in one query (what a listing shows)."""
        found: dict[str, dict[str, float]] = {run_id: {} for run_id in run_ids}
        for start in range(0, len(run_ids), 500):
            chunk = list(run_ids[start:start + 500])
            rows = self._rows(
                f"SELECT run_id, name, value FROM metric_last WHERE run_id IN ({', '.join('?' * len(chunk))})"
                " ORDER BY name", chunk)
            for run_id, name, value in rows:
                found[run_id][name] = _number(value)
        return found

    def query(self, where: str, args: Sequence[Any], order: str, limit: int | None) -> list[RunRecord]:
        """Runs matching an SQL condition built by ``mltrain.tracking.query`` (never from user text: names
        and values arrive in ``args``), in ``order``."""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE {where} ORDER BY {order}"
        if limit:
            sql += f" LIMIT {int(limit)}"
        try:
            return [_record(row) for row in self._rows(sql, list(args))]
        except sqlite3.OperationalError as exc:
            raise StoreError(f"the run history could not answer the query ({exc})") from exc

    def count_where(self, where: str, args: Sequence[Any]) -> int:
        return int(self._rows(f"SELECT count(*) FROM runs WHERE {where}", list(args))[0][0])

    def metrics(self, run_id: str) -> list[tuple[str, int | None, float, float | None]]:
        rows = self._rows(
            "SELECT name, step, value, time FROM metrics WHERE run_id = ? ORDER BY rowid", (run_id,)
        )
        return [(name, step, _number(value), when) for name, step, value, when in rows]

    def metric_points(self, run_id: str) -> list[tuple[str, int | None, float]]:
        """(name, step, value) of every point, grouped by metric, each metric's in logging order: what the
        sparklines and plots draw (``mltrain.tracking.sparkline.series``).

        Grouped by name, SQLite walks the (run_id, name) index in order; logging order across metrics
        (``ORDER BY rowid``, :meth:`metrics`) makes it sort every row first. With no ``time`` column either,
        100k points read in ~half the time.
        """
        rows = self._rows("SELECT name, step, value FROM metrics WHERE run_id = ? ORDER BY name, rowid", (run_id,))
        return [(name, step, _number(value)) for name, step, value in rows]

    def last_metrics(self, run_id: str) -> dict[str, float]:
        rows = self._rows(
            "SELECT name, value FROM metrics WHERE rowid IN "
            "(SELECT max(rowid) FROM metrics WHERE run_id = ? GROUP BY name) ORDER BY name",
            (run_id,),
        )
        return {name: _number(value) for name, value in rows}

    # ---------------------------------------------------------------- sweeps
    def create_sweep(self, *, key: str, experiment: str, command: dict[str, Any], settings: dict[str, Any],
                     planned: int | None, controller: dict[str, Any] | None,
                     sweep_id: str | None = None) -> SweepRecord:
        def insert(db: sqlite3.Connection, candidate: str) -> None:
            db.execute(
                "INSERT INTO sweeps (id, key, experiment, status, created, planned, command, settings,"
                " controller) VALUES (?,?,?,?,?,?,?,?,?)",
                (candidate, key, experiment, RUNNING, time.time(), planned, json.dumps(command),
                 json.dumps(settings), json.dumps(controller) if controller else None),
            )

        return self.get_sweep(self._insert_new("sweep", sweep_id, insert))

    def update_sweep(self, sweep_id: str, **fields: Any) -> None:
        """Set sweep fields; ``status`` here is not guarded (a finished sweep may be resumed)."""
        self._set("sweeps", _SWEEP_UPDATABLE, _SWEEP_JSON, sweep_id, fields)

    def finish_sweep(self, sweep_id: str, status: str, reason: str | None = None) -> bool:
        """Running -> ``status``; False if the sweep had already ended (e.g. canceled meanwhile)."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE sweeps SET status = ?, reason = ?, ended = ? WHERE id = ? AND status = ?",
                (status, strip_ansi_text(reason) if reason else reason, time.time(), sweep_id, RUNNING),
            )
        return cursor.rowcount == 1

    def get_sweep(self, sweep_id: str) -> SweepRecord:
        """A sweep by its id or a unique prefix of it."""
        return _sweep_record(self._by_id("sweeps", _SWEEP_COLUMNS, sweep_id, SweepNotFound))

    def find_sweeps(self, *, key: str | None = None, limit: int | None = None) -> list[SweepRecord]:
        """Newest first."""
        sql = f"SELECT {', '.join(_SWEEP_COLUMNS)} FROM sweeps"
        params: list[Any] = []
        if key is not None:
            sql += " WHERE key = ?"
            params.append(key)
        sql += " ORDER BY created DESC, rowid DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_sweep_record(row) for row in self._rows(sql, params)]

    def put_trial(self, trial: TrialRecord) -> None:
        """Insert or replace the trial ``(sweep_id, idx)``."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO trials (sweep_id, idx, params, fingerprint, run_id, reused, error)"
                " VALUES (?,?,?,?,?,?,?)",
                (trial.sweep_id, trial.idx, json.dumps(list(trial.params)), trial.fingerprint, trial.run_id,
                 int(trial.reused), trial.error),
            )

    def delete_trial(self, sweep_id: str, idx: int) -> None:
        with self._write() as db:
            db.execute("DELETE FROM trials WHERE sweep_id = ? AND idx = ?", (sweep_id, idx))

    def set_trial_error(self, sweep_id: str, idx: int, error: str) -> None:
        with self._write() as db:
            db.execute("UPDATE trials SET error = ? WHERE sweep_id = ? AND idx = ?", (error, sweep_id, idx))

    def trials(self, sweep_id: str) -> list[TrialRecord]:
        rows = self._rows(
            f"SELECT {', '.join(_TRIAL_COLUMNS)} FROM trials WHERE sweep_id = ? ORDER BY idx", (sweep_id,)
        )
        return [_trial_record(row) for row in rows]

    def completed_run_with(self, fingerprint: str, *, or_canceled_for: str | None = None) -> str | None:
        """The newest Completed run of any trial with this fingerprint (what a sweep may reuse); with
        ``or_canceled_for``, failing that, the newest run Canceled for that reason (a trial stopped early)."""
        rows = self._rows(
            "SELECT runs.id FROM trials JOIN runs ON runs.id = trials.run_id"
            " WHERE trials.fingerprint = ? AND (runs.status = ? OR (runs.status = ? AND runs.reason = ?))"
            " ORDER BY runs.status = ? DESC, runs.created DESC LIMIT 1",
            (fingerprint, COMPLETED, CANCELED, or_canceled_for, COMPLETED),
        )
        return str(rows[0][0]) if rows else None

    def integrity_check(self) -> str:
        return str(self._rows("PRAGMA integrity_check")[0][0])


_SWEEP_COLUMNS = (
    "id", "key", "experiment", "status", "created", "ended", "reason", "planned", "command", "settings",
    "controller", "cancel_requested",
)
_SWEEP_JSON = ("command", "settings", "controller")
_SWEEP_UPDATABLE = frozenset(_SWEEP_COLUMNS) - {"id", "key", "created"}
_TRIAL_COLUMNS = ("sweep_id", "idx", "params", "fingerprint", "run_id", "reused", "error")


@dataclass
class SweepRecord:
    id: str
    key: str
    experiment: str
    status: str
    created: float
    ended: float | None = None
    reason: str | None = None
    planned: int | None = None
    command: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    controller: dict[str, Any] | None = None
    cancel_requested: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SWEEP_COLUMNS}


@dataclass
class TrialRecord:
    sweep_id: str
    idx: int
    params: list[str]
    fingerprint: str
    run_id: str | None = None
    reused: bool = False  # run_id is an earlier Completed run with the same fingerprint
    error: str | None = None  # why the trial has no run (its submission failed before one existed)


def _sweep_record(row: Sequence[Any]) -> SweepRecord:
    data = dict(zip(_SWEEP_COLUMNS, row, strict=True))
    for name in _SWEEP_JSON:
        data[name] = json.loads(data[name]) if data[name] else ({} if name != "controller" else None)
    data["cancel_requested"] = bool(data["cancel_requested"])
    return SweepRecord(**data)


def _trial_record(row: Sequence[Any]) -> TrialRecord:
    data = dict(zip(_TRIAL_COLUMNS, row, strict=True))
    data["params"] = json.loads(data["params"])
    data["reused"] = bool(data["reused"])
    return TrialRecord(**data)


def _number(value: float | None) -> float:
    """A stored metric value: SQLite keeps a NaN as NULL."""
    return math.nan if value is None else value


def _metric_rows(run_id: str, metrics: Iterable[tuple[str, float, int | None, float | None]]) -> list[tuple[Any, ...]]:
    return [(run_id, name, step, value, when) for name, value, step, when in metrics]


def _replace_metrics(db: sqlite3.Connection, run_id: str, rows: list[tuple[Any, ...]]) -> None:
    """Inside a write: the run's metrics become exactly ``rows``."""
    db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
    db.execute("DELETE FROM metric_last WHERE run_id = ?", (run_id,))
    db.executemany("INSERT INTO metrics VALUES (?,?,?,?,?)", rows)
    db.executemany("INSERT INTO metric_last VALUES (?,?,?,?,?)", _last_rows(rows))


def _last_rows(rows: list[tuple[str, str, int | None, float, float | None]]) -> list[tuple[Any, ...]]:
    """The last point of each metric in ``rows`` (a later point replaces an earlier one, as ``last_metrics``)."""
    last: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        last[row[1]] = row
    return list(last.values())


def _record(row: Sequence[Any]) -> RunRecord:
    data = dict(zip(_COLUMNS, row, strict=True))
    for name in _JSON_COLUMNS:
        data[name] = json.loads(data[name]) if data[name] else ([] if name == "overrides" else None)
    return RunRecord(**data)
