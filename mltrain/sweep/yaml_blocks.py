"""``OmegaConf.to_yaml`` for a sweep's trials, each top-level block emitted once rather than once a trial.

Every trial records its whole config as YAML (``RunSpec.config_yaml``, the run's ``config.yaml``).
PyYAML's emitter is pure Python: ~5 ms a trial here, a third of the sweep controller's serial work
per trial. But trials differ only in a block or two (``params``), and YAML of a mapping in block
style is its top-level entries' YAML one after the other. So each top-level entry's text is kept,
keyed by the exact (``repr``: ``1``, ``1.0`` and ``True`` differ) plain value it was emitted from,
and only a changed entry is emitted again -- by OmegaConf itself, so the text is what ``to_yaml``
writes. ``tests/sweep/test_sweep_compose.py`` checks both agree.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


class YamlBlocks:
    """One per sweep: the last text of each top-level entry, and the value it was made from."""

    def __init__(self) -> None:
        self._blocks: dict[str, tuple[str, str]] = {}

    def to_yaml(self, cfg: DictConfig, container: dict[str, Any]) -> str:
        """``OmegaConf.to_yaml(cfg)``; ``container`` is ``OmegaConf.to_container(cfg, resolve=False)``."""
        if not container or not all(isinstance(key, str) for key in container):
            return OmegaConf.to_yaml(cfg)
        parts = []
        for key, value in container.items():
            made_from = repr(value)
            block = self._blocks.get(key)
            if block is None or block[0] != made_from:
                block = self._blocks[key] = (made_from, _block(cfg, key, value))
            parts.append(block[1])
        return "".join(parts)


_PLAIN = (str, int, float, type(None))  # bool is an int


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _block(cfg: DictConfig, key: str, value: Any) -> str:
    """``OmegaConf.to_yaml`` of ``{key: value}``: dumped as it does, straight from plain data; through
    OmegaConf (which spells enums, paths and the like its own way) for anything else."""
    if not _plain(value):
        return OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [key]))
    import yaml
    from omegaconf._utils import get_omega_conf_dumper

    text: str = yaml.dump({key: value}, default_flow_style=False, allow_unicode=True, sort_keys=False,
                          Dumper=get_omega_conf_dumper())
    return text
