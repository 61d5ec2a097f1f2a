"""Typed schemas for everything a user can configure, and their validation.

The primary schema is registered in Hydra's ConfigStore, so a typo'd top-level
key fails while Hydra composes. Group options (``environment``, ``compute``,
``framework``) are discriminated by their ``type`` field and validated against
the matching dataclass right after composition -- which also covers options a
project adds under its own ``./conf`` without naming a schema. Either way the
error names the key and lists what is valid, before anything runs.

The group schemas are not kept here: each kind's config dataclass lives beside
its code and is found through its group's registry (``GROUP_SCHEMAS``, derived
from ``mltrain.targets``, ``mltrain.environments`` and ``mltrain.frameworks``),
which imports a kind's config module only when a config of that kind is read.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mltrain.config.groups import MISSING, ComputeConfig, EnvironmentConfig, FrameworkConfig, GroupConfig
from mltrain.config.resources import ResourceRequest, ResourcesConfig
from mltrain.environments import ENVIRONMENTS
from mltrain.errors import ConfigError
from mltrain.frameworks import FRAMEWORKS
from mltrain.targets import TARGETS

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    from mltrain.util.registry import Registry

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# config group -> {type -> config dataclass}: the registries themselves (read lazily, one kind at a time)
GROUP_SCHEMAS: Mapping[str, Registry[Any, Any]] = {
    "environment": ENVIRONMENTS, "compute": TARGETS, "framework": FRAMEWORKS,
}


# ---------------------------------------------------------------------- sweep
@dataclass
class EarlyTerminationConfig:
    """Stop poor trials while they run, judged on the primary metric as they stream it (HyperDrive's policies).

    An *interval* is one report of the primary metric: the policy acts at the
    N-th report of a trial when N >= ``delay_evaluation`` and N is a multiple of
    ``evaluation_interval``, comparing with the other trials' N-th reports once
    ``min_trials`` trials (this one included) have made N of them.
    """

    policy: str | None = None  # bandit | median | truncation; null: trials always run to the end
    evaluation_interval: int = 1
    delay_evaluation: int = 0
    min_trials: int = 3
    slack_factor: float | None = None  # bandit: stop when worse than the best by this ratio
    slack_amount: float | None = None  # bandit: stop when worse than the best by this much
    truncation_percentage: int | None = None  # truncation: stop the worst N% at each interval


@dataclass
class SweepConfig:
    """How ``mltrain -m`` runs the trials of a sweep (HyperDrive's run config)."""

    sampler: str = "grid"  # grid | random | tpe
    n_trials: int | None = None  # random/tpe: how many; grid: at most this many combinations
    max_trials: int = 10_000  # a sweep planning more trials than this is refused before any is built
    max_concurrent: int | None = None  # default: the CPU count on compute=local, 4 on other targets
    primary_metric: str | None = None  # ranks trials: the last value each logged
    goal: str = "min"  # min | max
    max_failures: int | None = None  # start no more trials after this many failed; null: never stop
    seed: int | None = None  # random/tpe; null: drawn once and kept with the sweep
    space: dict[str, str] = field(default_factory=dict)  # key -> Hydra sweep syntax, e.g. tag(log, interval(1e-4, 1))
    early_termination: EarlyTerminationConfig = field(default_factory=EarlyTerminationConfig)


SAMPLERS = ("grid", "random", "tpe")
GOALS = ("min", "max")
POLICIES = ("bandit", "median", "truncation")


def _at_least(value: float | None, low: float, key: str) -> None:
    if value is not None and value < low:
        raise ConfigError(f"sweep.{key}={value}: must be at least {low}")


def validate_sweep(node: DictConfig | None) -> SweepConfig:
    """The ``sweep`` block as a checked SweepConfig (defaults when the config has none)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepConfig), node if node is not None else {})
        sweep: SweepConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except ConfigKeyError as exc:
        valid = ", ".join(f.name for f in dataclasses.fields(SweepConfig))
        raise ConfigError(f"sweep.{getattr(exc, 'full_key', '?')}: unknown key (valid keys: {valid})") from exc
    except OmegaConfBaseException as exc:
        raise ConfigError(f"sweep.{getattr(exc, 'full_key', None) or '?'}: {_describe(exc)}") from exc
    for key, value, choices in (("sampler", sweep.sampler, SAMPLERS), ("goal", sweep.goal, GOALS),
                                ("early_termination.policy", sweep.early_termination.policy, (None, *POLICIES))):
        if value not in choices:
            raise ConfigError(f"sweep.{key}={value!r}: choose one of {', '.join(c for c in choices if c)}")
    et = sweep.early_termination
    bounds: list[tuple[str, float | None, float]] = [
        ("max_concurrent", sweep.max_concurrent, 1), ("n_trials", sweep.n_trials, 1),
        ("max_trials", sweep.max_trials, 1), ("max_failures", sweep.max_failures, 1),
        ("early_termination.evaluation_interval", et.evaluation_interval, 1),
        ("early_termination.delay_evaluation", et.delay_evaluation, 0),
        ("early_termination.min_trials", et.min_trials, 1), ("early_termination.slack_factor", et.slack_factor, 0),
        ("early_termination.slack_amount", et.slack_amount, 0),
    ]
    for bound_key, bound_value, low in bounds:
        _at_least(bound_value, low, bound_key)
    if sweep.sampler != "grid" and sweep.n_trials is None:
        raise ConfigError(f"sweep.sampler={sweep.sampler} needs sweep.n_trials=N (how many trials to run)")
    if sweep.primary_metric is None:
        needs = "sweep.sampler=tpe" if sweep.sampler == "tpe" else (
            f"sweep.early_termination.policy={et.policy}" if et.policy else None)
        if needs:
            raise ConfigError(f"{needs} needs sweep.primary_metric=NAME (the metric the trials log)")
    slacks = [k for k in ("slack_factor", "slack_amount") if getattr(et, k) is not None]
    if et.policy == "bandit" and len(slacks) != 1:
        raise ConfigError("sweep.early_termination.policy=bandit needs exactly one of "
                          "sweep.early_termination.slack_factor or .slack_amount")
    if et.policy == "truncation" and not (et.truncation_percentage and 0 < et.truncation_percentage < 100):
        raise ConfigError("sweep.early_termination.policy=truncation needs "
                          "sweep.early_termination.truncation_percentage between 1 and 99")
    for key, owner in [(k, "bandit") for k in slacks] + [("truncation_percentage", "truncation")]:
        if getattr(et, key) is not None and et.policy != owner:
            raise ConfigError(f"sweep.early_termination.{key} has no effect with policy={et.policy}; "
                              f"it belongs to policy={owner}")
    return sweep


# ------------------------------------------------------------------- primary
@dataclass
class SnapshotConfig:
    max_files: int = 200_000
    max_bytes: int = 5 * 1024**3
    allow_large_root: bool = False  # allow source_dir to be /, a mount point, or (a folder holding) $HOME


@dataclass
class WorkspaceConfig:
    dir: str | None = None  # default: $MLTRAIN_HOME, else ./.mltrain


@dataclass
class TrackingConfig:
    """Where runs are mirrored besides the run history (``mltrain.tracking.mlflow``)."""

    mlflow: bool = False  # true: mirror to $MLFLOW_TRACKING_URI, else to the workspace's own MLflow store
    mlflow_uri: str | None = None  # mirror to this MLflow tracking URI (sqlite:///..., http://host:5000)


@dataclass
class PrimarySchema:
    """The top-level keys; group nodes are typed ``Any`` here and checked by ``validate``."""

    experiment: str | None = None
    source_dir: str = "."
    script: str = MISSING
    args: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    secret_env: list[str] = field(default_factory=list)  # variables whose values are masked in the run's output
    environment: Any = MISSING
    compute: Any = MISSING
    framework: Any = MISSING
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)  # read by mltrain -m, not by a single run
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)  # GPUs, CPUs, memory for the job
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass(frozen=True)
class MltrainConfig:
    """The validated configuration: plain values, interpolations resolved."""

    experiment: str | None
    source_dir: str
    script: str
    args: list[str]
    params: dict[str, Any]
    env_vars: dict[str, str]
    environment: EnvironmentConfig
    compute: ComputeConfig
    framework: FrameworkConfig
    snapshot: SnapshotConfig
    workspace: WorkspaceConfig
    secret_env: list[str] = field(default_factory=list)
    resources: ResourceRequest = field(default_factory=ResourceRequest)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def register_configs() -> None:
    """Register the primary schema (``mltrain_schema``) in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = OmegaConf.structured(PrimarySchema)
    # params and env_vars are the user's own namespaces: `params.lr=0.1` adds a key without `+`.
    OmegaConf.set_struct(node.params, False)
    OmegaConf.set_struct(node.env_vars, False)
    OmegaConf.set_struct(node.sweep.space, False)
    ConfigStore.instance().store(name="mltrain_schema", node=node)


# ------------------------------------------------------------ suggestions
def keys_under(path: str) -> list[str]:
    """The keys the schemas allow under the dotted ``path`` ("" for the top level); [] when unknown.

    A group's keys are those of every registered kind (``compute.cancel_grase`` is checked against every
    compute type's keys: the chosen type is not known when an override fails)."""
    parts = [p for p in path.split(".") if p]
    if parts and parts[0] in GROUP_SCHEMAS:
        registry = GROUP_SCHEMAS[parts[0]]
        classes = [registry.config_class(kind) for kind in registry.kinds()]
        return sorted({name for cls in classes for name in _fields_at(cls, parts[1:])})
    return _fields_at(PrimarySchema, parts)


def _fields_at(cls: Any, parts: list[str]) -> list[str]:
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            return []
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return []
        cls = hints[part]
    if not dataclasses.is_dataclass(cls):
        return []
    return [f.name for f in dataclasses.fields(cls)]


def unknown_key_message(key: str) -> str:
    """``unknown key 'scirpt' in the overrides; did you mean script?`` -- or the ``+key=VALUE`` hint when
    nothing is close."""
    from mltrain.config.suggest import close

    parent, _, leaf = key.rpartition(".")
    found = [f"{parent}.{m}" if parent else m for m in close(leaf, keys_under(parent))]
    if found:
        return f"unknown key {key!r} in the overrides; did you mean {' or '.join(found)}?"
    return f"unknown key {key!r} in the overrides; check its spelling, or add it with +{key}=VALUE"


def _describe(exc: OmegaConfBaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return msg.rstrip(".")


def _unknown_key(group: str, kind: str, key: object) -> ConfigError:
    from mltrain.config.suggest import did_you_mean

    names = [f.name for f in dataclasses.fields(GROUP_SCHEMAS[group][kind])]
    hint = did_you_mean(str(key), names)
    return ConfigError(f"{group}.{key}: unknown key for {group} type {kind!r}{';' if hint else ''}{hint} "
                       f"(valid keys: {', '.join(names)})")


def _check_group_keys(cfg: DictConfig) -> None:
    """A key no option of its kind has is named first: a typo (``hots:``) must not read as a missing ``host``."""
    from omegaconf import DictConfig

    for group, registry in GROUP_SCHEMAS.items():
        node = cfg.get(group) if isinstance(cfg, DictConfig) else None
        if not isinstance(node, DictConfig):
            continue
        kind = node.get("type")
        if isinstance(kind, str) and kind in registry:
            valid = {f.name for f in dataclasses.fields(registry[kind])}
            for key in node:
                if key not in valid:
                    raise _unknown_key(group, kind, key)


def validate_group(group: str, node: object) -> GroupConfig:
    """One group's composed node as its kind's checked config dataclass (the kind from ``node.type``)."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

    choices = GROUP_SCHEMAS[group]
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{group}: expected a config group, got {node!r}; choose one with {group}=<option>")
    kind = node.get("type")
    if kind is None:
        raise ConfigError(f"{group}.type is missing; set it to one of: {', '.join(sorted(choices))}")
    if kind not in choices:
        raise ConfigError(f"{group}.type={kind!r} is not known; valid types: {', '.join(sorted(choices))}")
    cls = choices[kind]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), node)
        config = OmegaConf.to_object(merged)
    except ConfigKeyError as exc:
        # OmegaConf's exceptions carry the key as an optional attribute
        raise _unknown_key(group, kind, getattr(exc, "key", None) or "?") from exc
    except ValidationError as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", "?")
        raise ConfigError(f"{group}.{key}: {_describe(exc)}") from exc
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{group}.{exc.full_key}: missing required value") from exc
    if not isinstance(config, GroupConfig):
        raise TypeError(f"{group} type {kind!r}: OmegaConf made a {type(config).__name__}, not a {cls.__name__}")
    config.check()
    return config


def _check_framework_target(framework: str, compute: str) -> None:
    """The target says which frameworks it can start (``Executor.supports``); the message lists the ways out."""
    if TARGETS.impl(compute).supports(framework):
        return
    others = [k for k in TARGETS.kinds() if TARGETS.impl(k).supports(framework)]
    own = [f for f in FRAMEWORKS.kinds() if TARGETS.impl(compute).supports(f)]
    fixes = [f"add framework={own[0]}" if len(own) == 1 else f"use one of framework={', framework='.join(own)}"]
    if others:
        fixes.append(f"use compute={' or compute='.join(others)}")
    raise ConfigError(f"framework={framework} cannot run on compute={compute}: {', or '.join(fixes)}")


def validate(cfg: DictConfig) -> MltrainConfig:
    """Turn a composed config (hydra node already removed) into typed, checked values."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    _check_group_keys(cfg)
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        hint = "e.g. mltrain script=train.py" if missing[0] == "script" else f"e.g. {missing[0]}=VALUE"
        raise ConfigError(f"missing required value: {', '.join(missing)} ({hint})")
    try:
        schema = OmegaConf.structured(PrimarySchema)
        merged = OmegaConf.merge(schema, cfg)
        assert isinstance(merged, DictConfig)
        top = {k: merged[k] for k in ("experiment", "source_dir", "script")}
        args = [str(a) for a in OmegaConf.to_container(merged.args, resolve=True)]  # type: ignore[union-attr]
        params = OmegaConf.to_container(merged.params, resolve=True)
        env_vars = {str(k): str(v) for k, v in OmegaConf.to_container(merged.env_vars, resolve=True).items()}  # type: ignore[union-attr]
        secret_env = [str(n) for n in OmegaConf.to_container(merged.secret_env, resolve=True)]  # type: ignore[union-attr]
        snapshot = OmegaConf.to_object(merged.snapshot)
        workspace = OmegaConf.to_object(merged.workspace)
        resources_config = OmegaConf.to_object(merged.resources)
        tracking = OmegaConf.to_object(merged.tracking)
    except ConfigKeyError as exc:
        valid = ", ".join(f.name for f in dataclasses.fields(PrimarySchema))
        raise ConfigError(f"{getattr(exc, 'full_key', '?')}: unknown key (valid keys: {valid})") from exc
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(f"{key}: {_describe(exc)}") from exc
    for key in ("max_files", "max_bytes"):
        value = getattr(snapshot, key)
        if value < 1:
            raise ConfigError(f"snapshot.{key}={value}: must be at least 1 (it bounds what a snapshot may hold)")
    for name in env_vars:
        if not ENV_NAME.match(name):
            raise ConfigError(f"env_vars.{name}: not a valid environment variable name (letters, digits, _)")
    for name in secret_env:
        if not ENV_NAME.match(name):
            raise ConfigError(f"secret_env: {name!r} is not an environment variable name (letters, digits, _); "
                              "list the names of variables, e.g. secret_env=[MY_TOKEN]")
    environment = validate_group("environment", merged.get("environment"))
    compute = validate_group("compute", merged.get("compute"))
    framework = validate_group("framework", merged.get("framework"))
    assert isinstance(environment, EnvironmentConfig) and isinstance(compute, ComputeConfig)
    assert isinstance(framework, FrameworkConfig)
    _check_framework_target(framework.type, compute.type)
    assert isinstance(params, dict)
    return MltrainConfig(
        experiment=top["experiment"],
        source_dir=str(top["source_dir"]),
        script=str(top["script"]),
        args=args,
        params={str(k): v for k, v in params.items()},
        env_vars=env_vars,
        environment=environment,
        compute=compute,
        framework=framework,
        snapshot=snapshot,  # type: ignore[arg-type]
        workspace=workspace,  # type: ignore[arg-type]
        secret_env=secret_env,
        resources=ResourceRequest.parse(resources_config),  # type: ignore[arg-type]
        tracking=tracking,  # type: ignore[arg-type]
    )


def schema_files() -> list[str | None]:
    """The source files that say what a valid config is: this module, the group bases, every registered kind's
    config module (found, not imported). The composition cache keys on them: an edited schema recomposes."""
    import importlib.util

    modules = [__name__, "mltrain.config.groups", "mltrain.config.resources",
               *(m for registry in GROUP_SCHEMAS.values() for m in registry.config_modules())]
    found = []
    for module in dict.fromkeys(modules):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        found.append(spec.origin if spec is not None else None)
    return found


def config_to_plain(cfg: MltrainConfig) -> dict[str, Any]:
    """JSON-able values of a validated config (the composition cache stores them)."""
    return dataclasses.asdict(cfg)


def config_from_plain(data: dict[str, Any]) -> MltrainConfig:
    """The inverse of :func:`config_to_plain`; groups are rebuilt by their ``type``."""
    groups = {g: GROUP_SCHEMAS[g][data[g]["type"]](**data[g]) for g in GROUP_SCHEMAS}  # the registries' classes
    return MltrainConfig(**{**data, **groups, "snapshot": SnapshotConfig(**data["snapshot"]),
                            "workspace": WorkspaceConfig(**data["workspace"]),
                            "resources": ResourceRequest.from_dict(data["resources"]),
                            "tracking": TrackingConfig(**data.get("tracking", {}))})
