"""What the ``mltrain`` command tells the sweep plugins, and what they hand back.

Hydra gives a sweeper and a launcher only the config and the task function.
The command line's own flags (``--detach``), the sweep a controller process
carries on, where progress lines go, and the sweep's outcome travel here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CONTROLLER_ENV = "MLTRAIN_SWEEP_ID"  # set for a controller process: the sweep it carries on


def _quiet(line: str) -> None:
    pass


@dataclass
class SweepSession:
    args: list[str] = field(default_factory=list)  # the command line minus --detach: what a controller re-runs
    detach: bool = False
    sweep_id: str | None = None  # a controller process: carry on this sweep
    report: Callable[[str], None] = _quiet  # one progress line for the user
    sweep: str | None = None  # the sweep's id once it has one
    sweep_dir: str | None = None  # its folder: Hydra's hydra.sweep.dir (${mltrain_sweep_dir:})
    detached: bool = False  # the sweep went on in a controller process
    outcome: Any = None  # the controller's SweepOutcome once the sweep ended


_current: list[SweepSession] = []


def begin(session: SweepSession) -> None:
    _current.append(session)


def end() -> None:
    if _current:
        _current.pop()


def current() -> SweepSession | None:
    """The session of the ``mltrain -m`` this process runs; None for anything else (e.g. a plain Hydra app)."""
    return _current[-1] if _current else None


def sweep_dir_resolver() -> str:
    """``${mltrain_sweep_dir:}``: the running sweep's folder, named by its id (``${now:}`` has 1 s resolution)."""
    session = current()
    if session is not None and session.sweep_dir:
        return session.sweep_dir
    return ".mltrain/sweeps/unnamed"


def register_resolver() -> None:
    """``${mltrain_sweep_dir:}`` (idempotent; see config.compose.prepare_hydra)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("mltrain_sweep_dir"):
        OmegaConf.register_new_resolver("mltrain_sweep_dir", sweep_dir_resolver)
