"""Where a project's run history lives, and the layout of one run's folder.

All paths are built here (as submitit's ``JobPaths`` does) so no other module
joins path strings by hand.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from mltrain.errors import StoreError

DIRNAME = ".mltrain"
# Workspaces this process has made and found writable: a sweep's workers call ``ensure`` for every trial, and
# its three mkdirs and probe file were ~0.3 ms of a trial's controller CPU on the 1,000-trial grid.
_ENSURED: set[Path] = set()


@dataclass(frozen=True)
class RunPaths:
    """The files of one run under ``<workspace>/runs/<run_id>/``."""

    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def overrides(self) -> Path:
        return self.dir / "overrides.json"

    @property
    def plan(self) -> Path:
        return self.dir / "plan.json"

    @property
    def log(self) -> Path:
        return self.dir / "output.log"

    @property
    def outputs(self) -> Path:
        return self.dir / "outputs"

    @property
    def workdir(self) -> Path:
        """A local run's own working directory (the snapshot's tree), removed at finalize."""
        return self.dir / "wd"

    @property
    def workdir_scratch(self) -> Path:
        """The scratch folder of an overlay working directory (overlayfs's ``workdir``), removed at finalize."""
        return self.dir / "wd.work"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def pid(self) -> Path:
        return self.dir / "pid"

    @property
    def exit_code(self) -> Path:
        return self.dir / "exit_code"

    @property
    def cancel_requested(self) -> Path:
        """Written by ``runs cancel`` before it signals the job: the reason a reader records if the job ends first."""
        return self.dir / "cancel_requested"

    @property
    def git_patch(self) -> Path:
        return self.dir / "git.patch"

    @property
    def environment_freeze(self) -> Path:
        return self.dir / "environment.txt"


@dataclass(frozen=True)
class Workspace:
    """``.mltrain/``: ``runs.db``, ``blobs/``, ``checkouts/``, ``cache/``, ``runs/<id>/``."""

    root: Path

    @classmethod
    def locate(cls, explicit: str | os.PathLike[str] | None = None, start: Path | None = None) -> Workspace:
        """``workspace.dir`` > ``$MLTRAIN_HOME`` > the nearest ``.mltrain`` or git root above ``start`` > ``start``."""
        if explicit:
            return cls(Path(explicit).expanduser().absolute())
        env = os.environ.get("MLTRAIN_HOME")
        if env:
            return cls(Path(env).expanduser().absolute())
        here = (start or Path.cwd()).absolute()
        for folder in (here, *here.parents):
            if (folder / DIRNAME).is_dir() or (folder / ".git").exists():
                return cls(folder / DIRNAME)
        return cls(here / DIRNAME)

    @property
    def db_path(self) -> Path:
        return self.root / "runs.db"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def checkouts(self) -> Path:
        return self.root / "checkouts"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run_paths(self, run_id: str) -> RunPaths:
        return RunPaths(self.runs / run_id)

    def exists(self) -> bool:
        return self.db_path.exists()

    def ensure(self) -> Workspace:
        """Create the folders; an unwritable place is a one-line error, not a traceback.

        Checked once per process: later calls only look that ``runs/`` is still there (else check again).
        """
        if self.root in _ENSURED and self.runs.is_dir():
            return self
        try:
            for folder in (self.root, self.runs, self.cache):
                folder.mkdir(parents=True, exist_ok=True)
            self._hide_from_git()
            # pid and thread: a sweep submits trials from several threads of one process at once
            probe = self.root / f".write-test-{os.getpid()}-{threading.get_ident()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            _ENSURED.discard(self.root)
            raise StoreError(
                f"workspace {self.root} is not writable ({exc.strerror}); "
                "set MLTRAIN_HOME or workspace.dir to a writable folder"
            ) from exc
        _ENSURED.add(self.root)
        return self

    def _hide_from_git(self) -> None:
        """A ``.gitignore`` of ``*`` inside, as pytest and mypy do for their caches.

        Without it a workspace inside a repository is untracked content: ``git status``
        lists it and every run's git patch would carry the blob store.
        """
        ignore = self.root / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# written by mltrain: the run history is not source\n*\n")
