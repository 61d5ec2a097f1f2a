"""The seam for "with what software": how an environment is fingerprinted and prepared.

Environments and targets are separate rooms: an environment knows how to make
an interpreter ready; a target knows where to run it. A target asks the
environment, never the other way round.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from mltrain.config.groups import EnvironmentConfig
    from mltrain.hosts.runner import Runner
    from mltrain.targets.base import Executor

LogFn = Callable[[str], None]


def default_cache_dir() -> Path:
    """``$MLTRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/mltrain`` (``~/.cache/mltrain``): shared by all projects."""
    explicit = os.environ.get("MLTRAIN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mltrain"


def digest(data: Any) -> str:
    """A stable content hash of JSON-able data."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def current_interpreter() -> str:
    return sys.executable


@dataclass(frozen=True)
class PreparedEnvironment:
    """What a target needs to start the script."""

    interpreter: str  # an absolute path, never a PATH lookup or a shim
    fingerprint: str
    description: str
    freeze: str | None = None  # installed distributions, one ``name==version`` a line
    image: str | None = None  # the container image to run in, for environments that make one


@dataclass(frozen=True)
class Requirements:
    """What an environment asks for, for a target that installs it its own way (Ray's runtime_env ``pip``)."""

    interpreter: str | None = None  # the interpreter the user named; None: the target's own
    packages: tuple[str, ...] = ()  # pip requirement lines
    pip_args: tuple[str, ...] = ()


class Environment(ABC):
    """One kind of environment, built from its typed config (an ``EnvironmentConfig`` beside it).

    A subclass declares its ``kind`` (its key in ``mltrain.environments``) and ``config_class``.
    """

    kind: ClassVar[str]
    config_class: ClassVar[type[EnvironmentConfig]]
    provides_image: ClassVar[bool] = False  # True: prepare() yields a container image, not a host interpreter

    def __init__(self, config: EnvironmentConfig, *, source_dir: Path, cache_dir: Path | None = None,
                 target: Executor | None = None) -> None:
        self.config = config
        self.source_dir = source_dir
        self.cache_dir = cache_dir or default_cache_dir()
        self.target = target  # the executor it is for (None: this machine); fingerprint() needs it

    def runner(self, target: Executor | None = None) -> Runner:
        """Where this environment's commands run: ``target``'s machine, else the one it was made for."""
        chosen = target if target is not None else self.target
        if chosen is None:
            from mltrain.hosts.runner import LOCAL

            return LOCAL
        return chosen.runner()

    @abstractmethod
    def fingerprint(self) -> str:
        """Content hash of everything that decides what gets installed."""

    @abstractmethod
    def is_prepared(self, target: Executor | None) -> bool:
        """Cheap check (no build): is the environment for this fingerprint ready on ``target``?"""

    @abstractmethod
    def prepare(self, log: LogFn, target: Executor | None) -> PreparedEnvironment:
        """Make it ready on ``target`` (build when needed, under a lock) and say how to use it.

        ``target`` is the executor (None: this machine); an environment asks it for what it
        needs (``target.runner()``, ``target.docker_engine()``) and never asks which kind it is.
        """

    def requirements(self) -> Requirements:
        """What to install, for a target that installs it itself (``Executor.own_environment``)."""
        from mltrain.errors import ConfigError

        raise ConfigError(f"environment={self.kind} cannot be made by the target's own mechanism; "
                          "use environment=venv or environment=user_managed")

    def describe(self) -> str:
        return self.kind
