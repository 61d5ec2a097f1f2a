"""The run spec: a frozen, pure description of one run, made from a validated config.

No file system, no network here; the checks that need I/O (does the script
exist?) happen when the spec is compiled into a plan.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mltrain.config import MltrainConfig, SnapshotConfig
from mltrain.errors import SourceError


def _flatten(params: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items += _flatten(value, f"{name}.")
        else:
            items.append((name, value))
    return items


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return "null" if value is None else str(value)


@dataclass(frozen=True)
class RunSpec:
    experiment: str
    source_dir: Path  # absolute
    script: str  # posix path inside source_dir
    args: tuple[str, ...]
    params: tuple[tuple[str, Any], ...]  # flattened: ("model.depth", 4)
    env_vars: tuple[tuple[str, str], ...]
    environment: Any
    compute: Any
    framework: Any
    snapshot: SnapshotConfig
    workspace_dir: str | None
    overrides: tuple[str, ...]
    config_yaml: str  # as composed, interpolations unresolved (secrets stay references)

    @classmethod
    def from_config(cls, cfg: MltrainConfig, config_yaml: str, overrides: tuple[str, ...] | list[str],
                    cwd: Path | None = None) -> RunSpec:
        base = cwd or Path(os.getcwd())
        source_dir = Path(os.path.normpath(base / os.path.expanduser(cfg.source_dir)))
        script = PurePosixPath(cfg.script)
        if script.is_absolute():
            try:
                script = PurePosixPath(Path(script).relative_to(source_dir).as_posix())
            except ValueError:
                raise SourceError(
                    f"script {cfg.script} is outside source_dir {source_dir}; move it there or set source_dir"
                ) from None
        if ".." in script.parts:
            normal = PurePosixPath(os.path.normpath(str(script)))
            if normal.parts and normal.parts[0] == "..":
                raise SourceError(
                    f"script {cfg.script} is outside source_dir {source_dir}; move it there or set source_dir"
                )
            script = normal
        return cls(
            experiment=cfg.experiment or base.name or "default",
            source_dir=source_dir,
            script=str(script),
            args=tuple(cfg.args),
            params=tuple(_flatten(cfg.params)),
            env_vars=tuple(sorted(cfg.env_vars.items())),
            environment=cfg.environment,
            compute=cfg.compute,
            framework=cfg.framework,
            snapshot=cfg.snapshot,
            workspace_dir=cfg.workspace.dir,
            overrides=tuple(overrides),
            config_yaml=config_yaml,
        )

    def param_args(self) -> list[str]:
        """Params as the script receives them: ``--key value`` or, for Hydra scripts, ``key=value``."""
        if getattr(self.framework, "args_style", "argparse") == "hydra":
            return [f"{key}={_render(value)}" for key, value in self.params]
        out: list[str] = []
        for key, value in self.params:
            out += [f"--{key}", _render(value)]
        return out

    def script_argv(self) -> list[str]:
        """Script path (relative to the staged code) and its arguments, without the interpreter."""
        return [self.script, *self.args, *self.param_args()]


def check_source(spec: RunSpec) -> None:
    """The I/O checks a spec cannot do itself: source_dir and script exist where they should."""
    if not spec.source_dir.exists():
        raise SourceError(f"source_dir {spec.source_dir} does not exist; set source_dir=PATH to your code")
    if not spec.source_dir.is_dir():
        raise SourceError(f"source_dir {spec.source_dir} is a file, not a directory; set source_dir to its folder")
    script = spec.source_dir / spec.script
    if not script.exists():
        raise SourceError(f"script {spec.script} not found in {spec.source_dir}; check the name or set source_dir")
    if not script.is_file():
        raise SourceError(f"script {spec.script} is not a file")
    real_root = os.path.realpath(spec.source_dir)
    if os.path.commonpath([real_root, os.path.realpath(script)]) != real_root:
        raise SourceError(f"script {spec.script} leads outside source_dir {spec.source_dir} (a link?)")
