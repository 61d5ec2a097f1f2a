"""Typed schemas for everything a user can configure, and their validation.

The primary schema is registered in Hydra's ConfigStore, so a typo'd top-level
key fails while Hydra composes. Group options (``environment``, ``compute``,
``framework``) are discriminated by their ``type`` field and validated against
the matching dataclass right after composition -- which also covers options a
project adds under its own ``./conf`` without naming a schema. Either way the
error names the key and lists what is valid, before anything runs.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mltrain.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf.errors import OmegaConfBaseException

# omegaconf.MISSING (a required value), spelled out so that importing the schemas does not
# import OmegaConf: a submit whose config comes whole from the composition cache never needs it.
MISSING: Any = "???"

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------- environment
@dataclass
class UserManagedEnvironment:
    """Use an existing interpreter as is; nothing is installed, ``pip freeze`` is recorded."""

    type: str = "user_managed"
    interpreter: str | None = None  # default: the interpreter running mltrain


@dataclass
class VenvEnvironment:
    """A virtualenv built once per content hash (packages + requirements) and reused."""

    type: str = "venv"
    python: str | None = None  # base interpreter; default: the one running mltrain
    packages: list[str] = field(default_factory=list)
    requirements: str | None = None  # path relative to source_dir
    pip_args: list[str] = field(default_factory=list)
    installer: str = "auto"  # auto (uv when installed, else pip) | uv | pip
    system_site_packages: bool = False


@dataclass
class DockerEnvironment:
    """A container image: prebuilt (``image``), generated (``base_image`` + pip), or the user's ``dockerfile``.

    Built images are tagged by content hash and reused; exactly one of
    ``image``, ``base_image``, ``dockerfile`` must be set.
    """

    type: str = "docker"
    image: str | None = None  # used as is (pulled if missing)
    base_image: str | None = None  # mltrain writes the Dockerfile: FROM base_image + ENV + pip install
    packages: list[str] = field(default_factory=list)
    requirements: str | None = None  # relative to source_dir
    env: dict[str, str] = field(default_factory=dict)  # ENV baked into the image
    dockerfile: str | None = None  # the user's own, relative to source_dir
    context: str | None = None  # build context for ``dockerfile`` (default: the Dockerfile's folder)
    build_args: dict[str, str] = field(default_factory=dict)
    python: str = "python3"  # interpreter inside the image
    pip_args: list[str] = field(default_factory=list)
    pip_index_url: str | None = None  # a private index / mirror
    ca_bundle: str | None = None  # host CA bundle trusted during the build (TLS-intercepting proxies)
    wheels: str | None = None  # folder of wheels (relative to source_dir) copied into the build, --find-links
    labels: dict[str, str] = field(default_factory=dict)  # on the built image


# -------------------------------------------------------------------- compute
@dataclass
class LocalCompute:
    """This machine; the script runs in its own process group."""

    type: str = "local"
    cancel_grace: float = 10.0  # seconds between TERM and KILL on cancel


@dataclass
class DockerCompute:
    """A Docker engine: the local one by default, or any engine at ``base_url``."""

    type: str = "docker"
    base_url: str | None = None  # unix://, tcp://host:2376, ssh://user@host; default: $DOCKER_HOST or local socket
    tls_verify: bool = False
    tls_ca_cert: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    user: str | None = None  # default: the caller's uid:gid
    mem_limit: str | None = None  # e.g. 4g
    cpus: float | None = None
    shm_size: str | None = None  # e.g. 1g
    gpus: str | None = None  # "all", a count ("2") or device ids ("0,1")
    volumes: list[str] = field(default_factory=list)  # host:container[:ro|rw]
    allow_engine_socket: bool = False  # let compute.volumes hand the job the engine's socket (root on its host)
    network: str | None = None  # default: the engine's default bridge
    keep_container: bool = False  # keep a failed run's container for inspection
    cancel_grace: float = 10.0
    timeout: float = 60.0  # seconds for one engine API call
    code_transfer: str = "auto"  # auto: bind mount on a local (unix://) engine, copy on a remote one | mount | copy
    labels: dict[str, str] = field(default_factory=dict)  # extra container labels


@dataclass
class SshCompute:
    """A remote machine reached over SSH; nothing to install there but Python (or Docker)."""

    type: str = "ssh"
    host: str = MISSING  # a hostname, an address, or a Host alias from ~/.ssh/config
    port: int | None = None  # default: ~/.ssh/config, else 22
    user: str | None = None  # default: ~/.ssh/config, else the local user
    key_file: str | None = None  # default: ~/.ssh/config IdentityFile, else the SSH agent and default keys
    known_hosts: str | None = None  # default: ~/.ssh/known_hosts
    host_key_policy: str = "strict"  # strict: unknown or changed keys refused | accept_new
    fingerprint: str | None = None  # pin the host key: SHA256:... (as `ssh-keygen -lf` prints it)
    ssh_config: str | None = None  # default: ~/.ssh/config
    connect_timeout: float = 10.0
    keepalive: float = 10.0  # seconds between keepalives; a dead link is noticed within a few of these
    remote_dir: str = "~/.mltrain"  # blob cache, environments and run folders on the remote
    cancel_grace: float = 10.0
    python: str = "python3"  # the host's Python 3 that runs mltrain's helper there (stdlib only, >= 3.8)


@dataclass
class SparkCompute:
    """A Spark master: local[*] by default, or spark://, yarn, k8s://; optionally submitted from an edge node."""

    type: str = "spark"
    master: str = "local[*]"
    deploy_mode: str = "client"  # client | cluster
    conf: dict[str, Any] = field(default_factory=dict)  # each becomes --conf key=value (nested keys are joined by dots)
    driver_memory: str | None = None
    driver_cores: int | None = None
    executor_memory: str | None = None
    executor_cores: int | None = None
    num_executors: int | None = None
    packages: list[str] = field(default_factory=list)
    jars: list[str] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)
    spark_home: str | None = None  # default: $SPARK_HOME, else the environment's pyspark
    master_ui: str | None = None  # standalone master's web UI (status, app links); default: http://<master host>:8080
    connect_timeout: float = 10.0  # seconds to reach the master's port before giving up
    ssh: dict[str, Any] | None = None  # submit from an edge node: the keys of compute=ssh (host, user, ...)
    cancel_grace: float = 10.0


# ------------------------------------------------------------------ framework
@dataclass
class PythonFramework:
    """``<interpreter> script args --param value``."""

    type: str = "python"
    args_style: str = "argparse"  # argparse: --key value | hydra: key=value


@dataclass
class PySparkFramework:
    """``spark-submit [options] script args``: the script is a Spark driver."""

    type: str = "pyspark"
    args_style: str = "argparse"


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


def validate_sweep(node: Any) -> SweepConfig:
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


GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "environment": {"user_managed": UserManagedEnvironment, "venv": VenvEnvironment, "docker": DockerEnvironment},
    "compute": {"local": LocalCompute, "docker": DockerCompute, "ssh": SshCompute, "spark": SparkCompute},
    "framework": {"python": PythonFramework, "pyspark": PySparkFramework},
}

ARGS_STYLES = ("argparse", "hydra")
INSTALLERS = ("auto", "uv", "pip")


@dataclass(frozen=True)
class MltrainConfig:
    """The validated configuration: plain values, interpolations resolved."""

    experiment: str | None
    source_dir: str
    script: str
    args: list[str]
    params: dict[str, Any]
    env_vars: dict[str, str]
    environment: Any
    compute: Any
    framework: Any
    snapshot: SnapshotConfig
    workspace: WorkspaceConfig
    secret_env: list[str] = field(default_factory=list)


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


def _describe(exc: OmegaConfBaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return msg.rstrip(".")


def _validate_group(group: str, node: Any) -> Any:
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
    schema = OmegaConf.structured(choices[kind])
    try:
        merged = OmegaConf.merge(schema, node)
        return OmegaConf.to_object(merged)
    except ConfigKeyError as exc:
        key = getattr(exc, "key", None) or "?"
        valid = ", ".join(f.name for f in dataclasses.fields(choices[kind]))
        raise ConfigError(
            f"{group}.{key}: unknown key for {group} type {kind!r} (valid keys: {valid})"
        ) from exc
    except ValidationError as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", "?")
        raise ConfigError(f"{group}.{key}: {_describe(exc)}") from exc
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{group}.{exc.full_key}: missing required value") from exc


_GENERATED, _OWN = ("base_image",), ("dockerfile",)
DOCKER_ONLY_WITH: dict[str, tuple[str, ...]] = {  # keys that act only with some ways of making the image
    "packages": _GENERATED, "requirements": _GENERATED, "env": _GENERATED, "pip_args": _GENERATED,
    "pip_index_url": _GENERATED, "ca_bundle": _GENERATED, "wheels": _GENERATED,
    "context": _OWN, "build_args": _OWN, "labels": _GENERATED + _OWN,
}


def _check_docker_keys(env: DockerEnvironment, source: str) -> None:
    """A key that would be silently ignored with this ``source`` is an error that says where it belongs."""
    for key, allowed in DOCKER_ONLY_WITH.items():
        if getattr(env, key) and source not in allowed:
            hint = (
                "do that in your Dockerfile" if source == "dockerfile"
                else f"it needs environment.{' or environment.'.join(allowed)} instead of environment.{source}"
            )
            raise ConfigError(f"environment.{key} has no effect with environment.{source}; {hint}")


PYSPARK_TARGETS = ("local", "spark")


def _check_framework_target(framework: str, compute: str) -> None:
    """compute=spark starts only Spark applications; spark-submit runs only where mltrain can start it."""
    if compute == "spark" and framework != "pyspark":
        raise ConfigError(f"compute=spark submits Spark applications with spark-submit: add framework=pyspark "
                          f"(framework={framework} is not one)")
    if framework == "pyspark" and compute not in PYSPARK_TARGETS:
        raise ConfigError(f"framework=pyspark cannot run on compute={compute}: use compute=spark (with compute.ssh "
                          "for a cluster's edge node) or compute=local")


def validate(cfg: Any) -> MltrainConfig:
    """Turn a composed config (hydra node already removed) into typed, checked values."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

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
    groups = {g: _validate_group(g, merged.get(g)) for g in GROUP_SCHEMAS}
    framework = groups["framework"]
    if getattr(framework, "args_style", "argparse") not in ARGS_STYLES:
        raise ConfigError(f"framework.args_style={framework.args_style!r}: choose one of {', '.join(ARGS_STYLES)}")
    _check_framework_target(framework.type, groups["compute"].type)
    env = groups["environment"]
    if isinstance(env, VenvEnvironment) and env.installer not in INSTALLERS:
        raise ConfigError(f"environment.installer={env.installer!r}: choose one of {', '.join(INSTALLERS)}")
    if isinstance(env, DockerEnvironment):
        sources = [k for k in ("image", "base_image", "dockerfile") if getattr(env, k)]
        if len(sources) != 1:
            raise ConfigError(
                "environment: set exactly one of environment.image (prebuilt), environment.base_image "
                f"(mltrain writes the Dockerfile) or environment.dockerfile (your own); got {sources or 'none'}"
            )
        _check_docker_keys(env, sources[0])
    assert isinstance(params, dict)
    return MltrainConfig(
        experiment=top["experiment"],
        source_dir=str(top["source_dir"]),
        script=str(top["script"]),
        args=args,
        params={str(k): v for k, v in params.items()},
        env_vars=env_vars,
        environment=env,
        compute=groups["compute"],
        framework=framework,
        snapshot=snapshot,  # type: ignore[arg-type]
        workspace=workspace,  # type: ignore[arg-type]
        secret_env=secret_env,
    )


def config_to_plain(cfg: MltrainConfig) -> dict[str, Any]:
    """JSON-able values of a validated config (the composition cache stores them)."""
    return dataclasses.asdict(cfg)


def config_from_plain(data: dict[str, Any]) -> MltrainConfig:
    """The inverse of :func:`config_to_plain`; groups are rebuilt by their ``type``."""
    groups = {g: GROUP_SCHEMAS[g][data[g]["type"]](**data[g]) for g in GROUP_SCHEMAS}
    return MltrainConfig(**{**data, **groups, "snapshot": SnapshotConfig(**data["snapshot"]),
                            "workspace": WorkspaceConfig(**data["workspace"])})
