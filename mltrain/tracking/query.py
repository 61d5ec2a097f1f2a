"""Finding runs: ``runs list --where/--sort/--columns`` and ``mltrain.runs(where=...)``.

``--where`` is a small expression language, parsed here by hand and compiled to SQL with every name and
value passed as a parameter -- nothing a user types is evaluated or pasted into SQL::

    metrics.acc > 0.9 and params.lr < 0.01
    status == 'Completed' and not (params.optimizer == 'sgd' or metrics.loss >= 1e-3)
    params.note != null

A field is ``metrics.NAME`` (the last value the run logged), ``params.NAME`` (the script's params, flat:
``params.model.depth``) or one of the run's own attributes (``ATTRIBUTES``). A name with characters outside
letters, digits and ``_.-/`` goes in backticks: ``metrics.`val loss```. Values are numbers, quoted strings,
``true``/``false`` (1/0) and ``null`` (only with ``==``/``!=``). Operators: ``== = != < <= > >=``,
joined by ``and``, ``or``, ``not`` and parentheses. A mistake is one line that gives the column.

The history keeps what queries need on write (``runs.params``, table ``metric_last``), so 10k runs are
filtered and sorted in SQLite with one index lookup per run and field, never by reading every metric point.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mltrain.errors import UsageError
from mltrain.store.db import RunRecord, Store
from mltrain.store.workspace import Workspace

log = logging.getLogger(__name__)

ATTRIBUTES = {
    "id": "runs.id", "experiment": "runs.experiment", "status": "runs.status", "created": "runs.created",
    "started": "runs.started", "ended": "runs.ended", "duration": "(runs.ended - runs.started)",
    "exit_code": "runs.exit_code", "script": "runs.script", "compute": "runs.compute",
    "environment": "runs.environment", "sweep_id": "runs.sweep_id", "parent_id": "runs.parent_id",
    "snapshot_id": "runs.snapshot_id",
}
"""The run attributes a query may name, and the SQL each stands for (fixed text, never user input)."""

PREFIXES = ("metrics", "params")
_NAME = re.compile(r"[A-Za-z0-9_./-]+")
_OPERATORS = {"==": "=", "=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z0-9_.]))
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<>|<=|>=|<|>|=)
  | (?P<paren>[()])
  | (?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:`[^`]+`|[A-Za-z0-9_./-]+))?)
""", re.VERBOSE)
_KEYWORDS = ("and", "or", "not", "true", "false", "null")


class QueryError(UsageError):
    """A ``--where``, ``--sort`` or ``--columns`` the language does not accept; the message gives the column."""


@dataclass(frozen=True)
class Field:
    """``metrics.acc``, ``params.model.depth`` or an attribute (``kind`` is ``"metrics"``, ``"params"``
    or ``"attr"``)."""

    kind: str
    name: str

    @property
    def label(self) -> str:
        return self.name if self.kind == "attr" else f"{self.kind}.{self.name}"

    def sql(self, args: list[Any]) -> str:
        """The SQL expression for this field's value in the row ``runs``; its parameters go on ``args``."""
        if self.kind == "metrics":
            args.append(self.name)
            return "(SELECT value FROM metric_last WHERE run_id = runs.id AND name = ?)"
        if self.kind == "params":
            args.append('$."' + self.name + '"')
            return "json_extract(runs.params, ?)"
        return ATTRIBUTES[self.name]

    def value(self, record: RunRecord, last: dict[str, float]) -> Any:
        """This field's value for one run (``last``: its metrics' last values)."""
        if self.kind == "metrics":
            return last.get(self.name)
        if self.kind == "params":
            return (record.params or {}).get(self.name)
        if self.name == "duration":
            return record.duration
        return getattr(record, self.name)


def parse_field(text: str, *, what: str = "field", column: int = 1, source: str | None = None) -> Field:
    """``metrics.NAME``, ``params.NAME`` or an attribute name; anything else is a ``QueryError``."""
    prefix, dot, name = text.partition(".")
    if dot and prefix in PREFIXES:
        name = name[1:-1] if len(name) > 1 and name.startswith("`") and name.endswith("`") else name
        if name and '"' not in name:
            return Field(prefix, name)
    elif not dot and text in ATTRIBUTES:
        return Field("attr", text)
    raise _error(f"unknown {what} {text!r}", source if source is not None else text, column,
                 f"use metrics.NAME, params.NAME or one of {', '.join(ATTRIBUTES)}")


def parse_columns(text: str) -> list[Field]:
    """``--columns params.lr,metrics.acc,status``."""
    fields, column = [], 1
    for part in text.split(","):
        stripped = part.strip()
        if not stripped:
            raise _error("empty column name", text, column, "separate names with single commas")
        fields.append(parse_field(stripped, what="column", column=column + part.index(stripped), source=text))
        column += len(part) + 1
    return fields


@dataclass(frozen=True)
class Sort:
    field: Field
    descending: bool

    def sql(self, args: list[Any]) -> str:
        own: list[Any] = []
        expr = self.field.sql(own)
        args += own * 2  # the expression appears twice
        return f"{expr} IS NULL, {expr} {'DESC' if self.descending else 'ASC'}"


def parse_sort(text: str) -> Sort:
    """``metrics.acc`` (ascending), ``-metrics.acc`` or ``metrics.acc:desc`` (descending)."""
    spec, descending = text.strip(), False
    if spec.startswith("-"):
        spec, descending = spec[1:], True
    base, colon, direction = spec.rpartition(":")
    if colon and direction in ("asc", "desc"):
        spec, descending = base, direction == "desc"
    return Sort(parse_field(spec, what="sort field", source=text), descending)


# ----------------------------------------------------------------- --where
@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    column: int


def _tokens(source: str) -> list[_Tok]:
    tokens, pos = [], 0
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        if match is None and source[pos] in "'\"":
            raise _error("unterminated string", source, pos + 1, f"end it with {source[pos]}")
        if match is None:
            raise _error(f"unexpected {source[pos]!r}", source, pos + 1,
                         "quote text values: params.optimizer == 'adam'")
        kind = match.lastgroup or ""
        if kind != "space":
            text = match.group()
            if kind == "field" and text.lower() in _KEYWORDS:
                kind = text.lower()
            tokens.append(_Tok(kind, text, pos + 1))
        pos = match.end()
    tokens.append(_Tok("end", "", len(source) + 1))
    return tokens


class _Parser:
    """Recursive descent: or_expr := and_expr ('or' and_expr)*; and_expr := unary ('and' unary)*;
    unary := 'not' unary | '(' or_expr ')' | FIELD OP VALUE."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokens(source)
        self.pos = 0
        self.args: list[Any] = []

    def peek(self) -> _Tok:
        return self.tokens[self.pos]

    def take(self) -> _Tok:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def fail(self, message: str, tok: _Tok, hint: str) -> QueryError:
        return _error(message, self.source, tok.column, hint)

    def parse(self) -> str:
        if self.peek().kind == "end":
            raise self.fail("empty expression", self.peek(), "e.g. --where 'metrics.acc > 0.9'")
        sql = self.or_expr()
        if self.peek().kind != "end":
            tok = self.peek()
            raise self.fail(f"unexpected {tok.text!r}", tok, "join conditions with 'and' or 'or'")
        return sql

    def or_expr(self) -> str:
        parts = [self.and_expr()]
        while self.peek().kind == "or":
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def and_expr(self) -> str:
        parts = [self.unary()]
        while self.peek().kind == "and":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def unary(self) -> str:
        tok = self.take()
        if tok.kind == "not":
            return f"(NOT coalesce({self.unary()}, 0))"
        if tok.text == "(":
            inner = self.or_expr()
            close = self.take()
            if close.text != ")":
                raise self.fail("missing ')'", close, "close every '(' you open")
            return inner
        if tok.kind != "field":
            raise self.fail(f"expected a field, found {tok.text or 'the end'!r}", tok,
                            "a condition is FIELD OP VALUE, e.g. metrics.acc > 0.9")
        field = parse_field(tok.text, column=tok.column, source=self.source)
        op = self.take()
        if op.kind != "op":
            raise self.fail(f"expected a comparison after {tok.text!r}, found {op.text or 'the end'!r}", op,
                            "use one of == != < <= > >=")
        value = self.take()
        expr = field.sql(self.args)
        if value.kind == "null":
            if _OPERATORS[op.text] not in ("=", "!="):
                raise self.fail(f"null compares only with == or !=, not {op.text!r}", op, "e.g. params.x != null")
            return f"({expr} IS {'NOT ' if _OPERATORS[op.text] == '!=' else ''}NULL)"
        if value.kind == "number":
            self.args.append(float(value.text))
        elif value.kind == "string":
            self.args.append(_unquote(value.text))
        elif value.kind in ("true", "false"):
            self.args.append(1 if value.kind == "true" else 0)
        else:
            raise self.fail(f"expected a value after {op.text!r}, found {value.text or 'the end'!r}", value,
                            "a value is a number, a quoted string, true, false or null")
        return f"({expr} {_OPERATORS[op.text]} ?)"


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _error(message: str, source: str, column: int, hint: str) -> QueryError:
    shown = source[: column - 1] + ">>>" + source[column - 1:]
    return QueryError(f"{message} at column {column} of {source!r} (here: {shown.strip()!r}); {hint}")


def compile_where(source: str) -> tuple[str, list[Any]]:
    """``--where`` text -> an SQL condition on ``runs`` and its parameters."""
    parser = _Parser(source)
    return parser.parse(), parser.args


# ------------------------------------------------------------------ finding
@dataclass
class Found:
    """The runs a query matched (in order), how many matched in all, and each run's last metric values."""

    runs: list[RunRecord]
    total: int
    metrics: dict[str, dict[str, float]]


def find_runs(store: Store, workspace: Workspace, *, experiment: str | None = None, status: str | None = None,
              sweep_id: str | None = None, where: str | None = None, sort: str | None = None,
              limit: int | None = None) -> Found:
    """Runs matching every filter given, newest first unless ``sort`` says otherwise."""
    conditions, args = ["1"], []
    for column, value in (("experiment", experiment), ("status", status), ("sweep_id", sweep_id)):
        if value is not None:
            conditions.append(f"runs.{column} = ?")
            args.append(value)
    if where is not None:
        condition, where_args = compile_where(where)
        conditions.append(condition)
        args += where_args
    order_args: list[Any] = []
    order = "runs.created DESC, runs.rowid DESC"
    if sort:
        order = f"{parse_sort(sort).sql(order_args)}, {order}"
    ensure_indexed(store, workspace)
    condition_sql = " AND ".join(conditions)
    runs = store.query(condition_sql, [*args, *order_args], order, limit)
    total = store.count_where(condition_sql, args) if limit and len(runs) == limit else len(runs)
    return Found(runs, total, store.last_metrics_of([r.id for r in runs]))


def ensure_indexed(store: Store, workspace: Workspace) -> int:
    """Fill ``params`` and ``metric_last`` of runs recorded before they were kept on write (once each).

    A run's params come from its stored ``config.yaml``; a run without one gets ``{}``. Returns how many
    runs were brought up to date.
    """
    done = 0
    while ids := store.unindexed_runs():
        started = time.monotonic()
        store.index_runs({run_id: params_from_config(workspace, run_id) for run_id in ids})
        done += len(ids)
        log.info("indexed %d older runs for queries in %.1fs", len(ids), time.monotonic() - started)
    return done


def params_from_config(workspace: Workspace, run_id: str) -> dict[str, Any]:
    import yaml

    path = workspace.run_paths(run_id).config  # written by mltrain at submit; still, bounded
    try:
        if path.stat().st_size > 1 << 20:
            return {}
        text = path.read_text(errors="replace")
    except OSError:
        return {}

    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    params = config.get("params") if isinstance(config, dict) else None
    return flatten(params) if isinstance(params, dict) else {}


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"depth": 4}}`` -> ``{"model.depth": 4}``."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing(runs: Sequence[RunRecord]) -> list[str]:
    """The param names whose values are not the same in every run (what tells a sweep's trials apart)."""
    keys = sorted({key for run in runs for key in (run.params or {})})
    return [key for key in keys if len({repr((run.params or {}).get(key)) for run in runs}) > 1]


__all__ = ["ATTRIBUTES", "Field", "Found", "QueryError", "Sort", "compile_where", "differing", "ensure_indexed",
           "find_runs", "flatten", "parse_columns", "parse_field", "parse_sort"]
