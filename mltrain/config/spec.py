"""The run spec: a frozen, pure description of one run, made from a validated config.

No file system, no network here; the checks that need I/O (does the script
exist?) happen when the spec is compiled into a plan.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mltrain.config.groups import ComputeConfig, EnvironmentConfig, FrameworkConfig
from mltrain.config.resources import ResourceRequest
from mltrain.config.schema import MltrainConfig, SnapshotConfig
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


HYDRA_RUN_DIR = "hydra.run.dir=${oc.env:MLTRAIN_OUTPUT_DIR}/hydra"
_OC_ENV = re.compile(r"\$\{oc\.env:\s*([A-Za-z_][A-Za-z0-9_]*)")
_CREDENTIAL = re.compile(r"(^|[_.-])(password|passphrase|passwd|secret|token|api_?key)($|[_.-])", re.IGNORECASE)


def names_a_credential(key: str) -> bool:
    """``password``, ``NPM_TOKEN``, ``s3a.secret.key``: a setting whose value is kept out of records and exports."""
    return bool(_CREDENTIAL.search(key))


def _credential_settings(node: Any, name: str = "", inside: bool = False) -> list[str]:
    """String values under keys that name a credential (or below such a key), in a config dataclass
    and the dicts and lists it holds: ``password``, ``NPM_TOKEN``, ``spark.hadoop.fs.s3a.secret.key``."""
    inside = inside or names_a_credential(name)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    if isinstance(node, Mapping):
        return [v for key, value in node.items() for v in _credential_settings(value, str(key), inside)]
    if isinstance(node, list | tuple):
        return [v for item in node for v in _credential_settings(item, name, inside)]
    return [node] if isinstance(node, str) and inside else []


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
    environment: EnvironmentConfig
    compute: ComputeConfig
    framework: FrameworkConfig
    snapshot: SnapshotConfig
    workspace_dir: str | None
    overrides: tuple[str, ...]
    config_yaml: str  # as composed, interpolations unresolved (secrets stay references)
    secret_env: tuple[str, ...] = ()  # names of variables whose values are masked in the run's output
    resources: ResourceRequest = dataclasses.field(default_factory=ResourceRequest)  # each target maps it
    mlflow_uri: str | None = None  # mirror the run to this MLflow URI; "" the workspace's own store; None: off

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
            secret_env=tuple(cfg.secret_env),
            resources=cfg.resources,
            mlflow_uri=cfg.tracking.mlflow_uri or (
                os.environ.get("MLFLOW_TRACKING_URI", "") if cfg.tracking.mlflow else None),
        )

    def secrets(self, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """The values the run's output must not show (its log is masked where it is written).

        * every ``${oc.env:NAME}`` anywhere in the config (env_vars, params, compute, ...): the value
          of ``NAME`` in ``environ`` (this process's environment, which resolved the config);
        * every name in ``secret_env``: its ``env_vars`` entry, else the variable in ``environ``
          (a local job inherits this environment);
        * ``compute`` / ``environment`` settings named like a credential (``password``,
          ``passphrase``, ``token``, ``secret``, ``api_key`` as a word of the name), at any depth.

        Values shorter than 4 characters are left to the filter to skip. The values live only in
        memory: the stored config keeps the references, and the launch hands them to the filter.
        """
        environ = os.environ if environ is None else environ
        found = [environ[name] for name in _OC_ENV.findall(self.config_yaml) if name in environ]
        env_vars = dict(self.env_vars)
        found += [env_vars.get(name, environ.get(name, "")) for name in self.secret_env]
        found += _credential_settings(self.compute) + _credential_settings(self.environment)
        return tuple(sorted({v for v in found if v}))

    def param_args(self) -> list[str]:
        """Params as the script receives them: ``--key value`` or, for Hydra scripts, ``key=value``."""
        if self.framework.args_style == "hydra":
            return [f"{key}={_render(value)}" for key, value in self.params]
        out: list[str] = []
        for key, value in self.params:
            out += [f"--{key}", _render(value)]
        return out

    def script_argv(self) -> list[str]:
        """Script path (relative to the staged code) and its arguments, without the interpreter.

        A Hydra app (``framework.args_style=hydra``) writes its ``.hydra/``, log and outputs under
        ``$MLTRAIN_OUTPUT_DIR/hydra`` unless its arguments set ``hydra.run.dir``: they come back with the
        run's outputs instead of vanishing with its working directory. Hydra resolves it in the job.
        """
        argv = [self.script, *self.args, *self.param_args()]
        if self.framework.args_style == "hydra" and not any(
                a.lstrip("+").startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in argv[1:]):
            argv.append(HYDRA_RUN_DIR)
        return argv


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
