"""The run history: the only code that touches ``runs.db``.

SQLite in WAL mode; every write is one short ``BEGIN IMMEDIATE`` transaction
with a busy timeout, so a hundred sweep trials can record at once. Status
only moves forward (``Queued -> Preparing -> Running -> Finalizing ->
Completed | Failed | Canceled``) and a terminal status never changes: the
guard is in the UPDATE itself, so two writers racing cannot break it.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mltrain.errors import RunNotFound, StoreError

SCHEMA_VERSION = 1

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

_COLUMNS = (
    "id", "experiment", "status", "created", "started", "ended", "exit_code", "reason", "script",
    "source_dir", "compute", "environment", "env_fingerprint", "snapshot_id", "parent_id", "sweep_id",
    "handle", "git", "overrides",
)
_JSON_COLUMNS = ("handle", "git", "overrides")
_UPDATABLE = frozenset(_COLUMNS) - {"id", "status", "created"}


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


class Store:
    """A connection to one workspace's ``runs.db``."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if not path.exists() and not create:
            raise StoreError(f"no run history at {path}; submit a run first, or set MLTRAIN_HOME")
        try:
            self._db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 60000")
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
            if self._db.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT early
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db.execute("PRAGMA journal_mode = WAL")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ runs
    def create_run(
        self, *, experiment: str, script: str, source_dir: str, compute: str, environment: str,
        overrides: Sequence[str] = (), parent_id: str | None = None, sweep_id: str | None = None,
        run_id: str | None = None,
    ) -> RunRecord:
        now = time.time()
        for _ in range(20):
            candidate = run_id or new_run_id()
            try:
                with self._write() as db:
                    db.execute(
                        "INSERT INTO runs (id, experiment, status, created, script, source_dir, compute,"
                        " environment, parent_id, sweep_id, overrides) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (candidate, experiment, QUEUED, now, script, source_dir, compute, environment,
                         parent_id, sweep_id, json.dumps(list(overrides))),
                    )
                    db.execute("INSERT INTO transitions VALUES (?,?,?)", (candidate, QUEUED, now))
                return self.get(candidate)
            except sqlite3.IntegrityError:
                if run_id:
                    raise StoreError(f"run id {run_id} already exists") from None
        raise StoreError("could not allocate a unique run id")

    def update(self, run_id: str, **fields: Any) -> None:
        """Set non-status fields (handle, fingerprints, git, ...)."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if not fields:
            return
        names = sorted(fields)
        values = [json.dumps(fields[n]) if n in _JSON_COLUMNS else fields[n] for n in names]
        with self._write() as db:
            db.execute(f"UPDATE runs SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?", (*values, run_id))

    def transition(self, run_id: str, status: str, **fields: Any) -> bool:
        """Move a run forward to ``status``; returns False (and changes nothing) if that is not forward."""
        if status not in STATUSES:
            raise ValueError(status)
        now = time.time()
        fields = dict(fields)
        if status == RUNNING:
            fields.setdefault("started", now)
        if status in TERMINAL:
            fields.setdefault("ended", now)
        names = sorted(fields)
        values = [json.dumps(fields[n]) if n in _JSON_COLUMNS else fields[n] for n in names]
        allowed = _allowed_predecessors(status)
        sets = ", ".join(["status = ?", *(f"{n} = ?" for n in names)])
        with self._write() as db:
            cursor = db.execute(
                f"UPDATE runs SET {sets} WHERE id = ? AND status IN ({', '.join('?' * len(allowed))})",
                (status, *values, run_id, *allowed),
            )
            if cursor.rowcount != 1:
                return False
            db.execute("INSERT INTO transitions VALUES (?,?,?)", (run_id, status, now))
        return True

    def get(self, run_id: str) -> RunRecord:
        """A run by its id or a unique prefix of it."""
        rows = self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE id = ?", (run_id,)
        ).fetchall()
        if not rows and run_id:
            pattern = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (pattern,)
            ).fetchall()
        if not rows:
            raise RunNotFound(f"no run {run_id!r} in {self.path.parent}; `mltrain runs list` shows the ids")
        if len(rows) > 1:
            raise RunNotFound(f"{run_id!r} matches several runs; give more of the id")
        return _record(rows[0])

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
        return [_record(row) for row in self._db.execute(sql, params)]

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM runs").fetchone()[0])

    def transitions(self, run_id: str) -> list[tuple[str, float]]:
        rows = self._db.execute("SELECT status, time FROM transitions WHERE run_id = ? ORDER BY rowid", (run_id,))
        return [(status, when) for status, when in rows]

    def snapshot_ids(self) -> set[str]:
        rows = self._db.execute("SELECT DISTINCT snapshot_id FROM runs WHERE snapshot_id IS NOT NULL")
        return {row[0] for row in rows}

    def delete_runs(self, run_ids: Iterable[str]) -> int:
        ids = list(run_ids)
        with self._write() as db:
            for table, column in (("metrics", "run_id"), ("transitions", "run_id"), ("runs", "id")):
                db.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(i,) for i in ids])
        return len(ids)

    # --------------------------------------------------------------- metrics
    def add_metrics(self, run_id: str, metrics: Iterable[tuple[str, float, int | None, float | None]]) -> int:
        rows = [(run_id, name, step, value, when) for name, value, step, when in metrics]
        if rows:
            with self._write() as db:
                db.executemany("INSERT INTO metrics VALUES (?,?,?,?,?)", rows)
        return len(rows)

    def replace_metrics(self, run_id: str, metrics: Iterable[tuple[str, float, int | None, float | None]]) -> int:
        """Set a run's metrics to exactly ``metrics`` (finalising twice must not double them)."""
        rows = [(run_id, name, step, value, when) for name, value, step, when in metrics]
        with self._write() as db:
            db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            db.executemany("INSERT INTO metrics VALUES (?,?,?,?,?)", rows)
        return len(rows)

    def metrics(self, run_id: str) -> list[tuple[str, int | None, float, float | None]]:
        rows = self._db.execute(
            "SELECT name, step, value, time FROM metrics WHERE run_id = ? ORDER BY rowid", (run_id,)
        )
        return [(name, step, value, when) for name, step, value, when in rows]

    def last_metrics(self, run_id: str) -> dict[str, float]:
        rows = self._db.execute(
            "SELECT name, value FROM metrics WHERE rowid IN "
            "(SELECT max(rowid) FROM metrics WHERE run_id = ? GROUP BY name) ORDER BY name",
            (run_id,),
        )
        return {name: value for name, value in rows}

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])


def _record(row: Sequence[Any]) -> RunRecord:
    data = dict(zip(_COLUMNS, row, strict=True))
    for name in _JSON_COLUMNS:
        data[name] = json.loads(data[name]) if data[name] else ([] if name == "overrides" else None)
    return RunRecord(**data)
