"""The bases of every group option's config dataclass: a compute target's, an environment kind's, a framework's.

Each option of the ``compute``, ``environment`` and ``framework`` config groups is a dataclass
that lives beside the code it configures (``mltrain/targets/<name>/config.py``, the environment
kind's module, the framework's module) and is found through that group's registry
(``mltrain.targets``, ``mltrain.environments``, ``mltrain.frameworks``). This module imports
nothing but the standard library: the schemas are read on every submit, even a cached one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# omegaconf.MISSING (a required value), spelled out so that importing the schemas does not
# import OmegaConf: a submit whose config comes whole from the composition cache never needs it.
MISSING: Any = "???"

ARGS_STYLES = ("argparse", "hydra")


@dataclass
class GroupConfig:
    """One option of a config group; ``type`` names its kind in the group's registry."""

    type: str = ""

    def check(self) -> None:
        """Refuse, with a one-line ConfigError, values the types alone cannot rule out (called once composed)."""


@dataclass
class ComputeConfig(GroupConfig):
    """A compute target's settings (``compute=...``); every target can be canceled."""

    cancel_grace: float = 10.0  # seconds between TERM and KILL on cancel


@dataclass
class EnvironmentConfig(GroupConfig):
    """An environment kind's settings (``environment=...``)."""


@dataclass
class FrameworkConfig(GroupConfig):
    """A framework's settings (``framework=...``): how the job's argv is made."""

    args_style: str = "argparse"  # argparse: --key value | hydra: key=value

    def check(self) -> None:
        if self.args_style not in ARGS_STYLES:
            from mltrain.errors import ConfigError

            raise ConfigError(f"framework.args_style={self.args_style!r}: choose one of {', '.join(ARGS_STYLES)}")
