"""Rerunning a recorded run: its stored config and stored snapshot, not today's files.

Overrides apply on top of the stored config: ``key=value`` sets a value,
``group=option`` (``compute=my_box``) swaps in that group option from the
current config search path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mltrain.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig


def apply_overrides(stored: DictConfig, overrides: Sequence[str]) -> DictConfig:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    from omegaconf import DictConfig, OmegaConf, open_dict

    from mltrain.config.compose import compose
    from mltrain.config.schema import GROUP_SCHEMAS

    cfg = OmegaConf.create(OmegaConf.to_container(stored, resolve=False))
    assert isinstance(cfg, DictConfig)
    parser = OverridesParser.create()
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except OverrideParseException as exc:
            raise ConfigError(f"malformed override {text!r}: {str(exc).splitlines()[0]}") from exc
        key = override.key_or_group
        if override.is_sweep_override():
            raise ConfigError(f"{text}: a rerun takes single values, not sweeps")
        with open_dict(cfg):
            if key in GROUP_SCHEMAS:
                option = compose([f"{key}={override.value()}", "script=_"])[key]
                cfg[key] = option
            elif override.is_delete():
                OmegaConf.update(cfg, key, None, force_add=True)
            else:
                OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)
    return cfg
