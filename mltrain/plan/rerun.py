"""Rerunning a recorded run: its stored config and stored snapshot (handed to the plan as given), not today's files.

Overrides apply on top of the stored config: ``key=value`` sets a value,
``group=option`` (``compute=my_box``) swaps in that group option from the
current config search path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mltrain.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from mltrain.results import Run
    from mltrain.store.db import RunRecord
    from mltrain.store.workspace import Workspace


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


def rerun(workspace: Workspace, parent: RunRecord, overrides: Sequence[str], *, show_output: bool = False) -> Run:
    """Run ``parent`` again: its stored config with ``overrides`` on top, from its stored snapshot.

    The snapshot is handed to the plan as given, with the git state and uncommitted changes recorded with
    it: today's files in the source directory play no part.
    """
    from omegaconf import OmegaConf

    from mltrain.config.compose import prepare_hydra
    from mltrain.config.schema import validate
    from mltrain.config.spec import RunSpec
    from mltrain.plan.compile import compile
    from mltrain.plan.execute import execute
    from mltrain.plan.stages import SnapshotRef, Stage

    if not parent.snapshot_id:
        raise StoreError(f"run {parent.id} has no stored snapshot (it failed before one was taken); cannot rerun it")
    prepare_hydra()
    paths = workspace.run_paths(parent.id)
    cfg = apply_overrides(OmegaConf.load(paths.config), overrides)  # type: ignore[arg-type]
    OmegaConf.update(cfg, "workspace.dir", str(workspace.root), force_add=True)
    spec = RunSpec.from_config(validate(cfg), OmegaConf.to_yaml(cfg), [*parent.overrides, *overrides],
                               cwd=Path(parent.source_dir))
    patch = str(paths.git_patch) if paths.git_patch.exists() else None
    given = {Stage.SNAPSHOT: SnapshotRef(parent.snapshot_id, parent.git, patch)}
    return execute(compile(spec), given=given, show_output=show_output, parent_id=parent.id)
