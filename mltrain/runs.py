"""A run in the history (``Run``): what ``mltrain.submit`` returns, and what ``Run.get(id)`` rebuilds later.

Its own module, below both ``mltrain.run`` (the submit API) and ``mltrain.plan.execute`` (which makes one),
so neither has to import the other.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from mltrain.errors import RunFailed
from mltrain.store.db import COMPLETED, RunRecord, Store
from mltrain.store.workspace import Workspace
from mltrain.targets.base import Handle, cancel_run, follow, reconcile


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


class Run:
    """A run in the history: look at it, wait for it, cancel it. Rebuildable from its id.

    ``existing`` is True when ``submit`` returned the run an earlier submit started under the same
    idempotency key (``wait`` then follows that run from the start of its log).
    """

    def __init__(self, run_id: str, workspace: Workspace, *, _handle: Handle | None = None,
                 _offset: int = 0, existing: bool = False) -> None:
        self.id = run_id
        self.workspace = workspace
        self.existing = existing
        self._handle = _handle
        self._offset = _offset

    @classmethod
    def get(cls, run_id: str, workspace: Workspace | str | None = None) -> Run:
        ws = workspace if isinstance(workspace, Workspace) else Workspace.locate(workspace)
        with Store(ws.db_path, create=False) as store:
            record = store.get(run_id)
        return cls(record.id, ws)

    def _store(self) -> Store:
        return Store(self.workspace.db_path, create=False)

    @property
    def record(self) -> RunRecord:
        with self._store() as store:
            return reconcile(store, self.workspace, store.get(self.id))

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def paths(self) -> Any:
        return self.workspace.run_paths(self.id)

    def wait(self, show_output: bool = False, raise_on_failure: bool = False, *,
             out: Callable[[bytes], None] | None = None, stop: Callable[[], str | None] | None = None) -> RunRecord:
        """Block until the run ends (streaming its output if asked); one Ctrl-C cancels it.

        ``out`` receives the output instead of stdout; a reason ``stop`` returns cancels the run.
        """
        with self._store() as store:
            record = follow(store, self.workspace, store.get(self.id),
                            out=out or (_write_stdout if show_output else None), offset=self._offset,
                            handle=self._handle, stop=stop)
        if raise_on_failure and record.status != COMPLETED:
            raise RunFailed(f"run {record.id} {record.status.lower()}: {record.reason}")
        return record

    def cancel(self) -> RunRecord:
        with self._store() as store:
            return cancel_run(store, self.workspace, store.get(self.id), handle=self._handle)

    def logs(self) -> str:
        paths = self.paths
        return paths.log.read_bytes().decode(errors="replace") if paths.log.exists() else ""

    def metrics(self) -> list[tuple[str, int | None, float, float | None]]:
        with self._store() as store:
            return store.metrics(self.id)

    def __repr__(self) -> str:
        return f"Run({self.id!r})"


__all__ = ["Run"]
