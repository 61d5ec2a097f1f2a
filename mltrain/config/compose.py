"""Compose a config exactly as the ``mltrain`` command does, for the CLI and the Python API alike."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mltrain.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIG_PATH = "pkg://mltrain.conf"
CONFIG_NAME = "config"


def prepare_hydra() -> None:
    """Process-wide set-up done once before Hydra composes anything for mltrain."""
    from hydra.core.plugins import Plugins
    from hydra.core.utils import setup_globals

    from hydra_plugins.mltrain_plugins import store_configs
    from hydra_plugins.mltrain_plugins.searchpath import MltrainSearchPathPlugin
    from mltrain.config.bounds import install as install_bounds
    from mltrain.config.schema import register_configs
    from mltrain.sweep.session import register_resolver

    # Hydra's own reporter prints multi-line messages and calls sys.exit; with this set it
    # re-raises instead, and mltrain's single error boundary turns the error into one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    register_configs()
    setup_globals()  # Hydra's resolvers (${now:...}, ${python_version:}), as in any @hydra.main app
    # Hydra finds plugins by walking the hydra_plugins namespace, which setuptools' editable
    # installs hide behind a path hook; registering (idempotent) works for every install.
    Plugins.instance().register(MltrainSearchPathPlugin)
    install_bounds()  # every config file Hydra reads is size- and alias-checked first (mltrain.config.bounds)
    store_configs()  # hydra/launcher=mltrain, hydra/sweeper=mltrain: the config's defaults name them
    register_resolver()  # ${mltrain_sweep_dir:}


def compose(overrides: Sequence[str] = (), config_name: str | None = None, *, multirun: bool = False) -> DictConfig:
    """Compose mltrain's config (packaged groups + the project's ./conf) with ``overrides``."""
    from hydra.types import RunMode

    from mltrain.hydra_compat import config_loader

    prepare_hydra()
    try:
        return config_loader(CONFIG_PATH).load_configuration(
            config_name=config_name or CONFIG_NAME,
            overrides=list(overrides),
            run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN,
        )
    except Exception as exc:  # Hydra raises several unrelated types; translate the known ones
        raise translate_hydra_error(exc) from exc


def script_args_override(values: Sequence[str]) -> str:
    """``args=[...]`` holding ``values`` literally: what follows ``--`` on mltrain's command line.

    Each value is quoted for Hydra's grammar (``+db.extra=1``, ``~key``, spaces, quotes pass untouched) and
    ``$`` is escaped, so ``${oc.env:...}`` reaches the script as typed and is resolved by the job (a Hydra
    app resolves it in its own process), not by mltrain when it submits.
    """
    def quote(value: str) -> str:  # Hydra unescapes backslashes only before a quote or at the end
        value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
        return "'" + value.replace("'", "\\'").replace("${", "\\${") + "'"

    return f"args=[{','.join(quote(v) for v in values)}]"


def group_options(group: str) -> list[str]:
    """The options a config group has, as Hydra finds them (``hydra/launcher`` -> basic, mltrain)."""
    from mltrain.hydra_compat import config_loader

    prepare_hydra()
    return list(config_loader(CONFIG_PATH).get_group_options(group))


def strip_hydra(cfg: DictConfig) -> DictConfig:
    """The job's config without Hydra's own node, as stored with a run."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    job = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    assert isinstance(job, DictConfig)
    with open_dict(job):
        job.pop("hydra", None)
    return job


_MISSING_OPTION = re.compile(r"Could not find '([^']+)/([^']+)'")
_MISSING_PRIMARY = re.compile(r"Cannot find primary config '([^']+)'")


def _conf_dir_for_hints() -> str:
    """Where this project's own config groups go, as a hint names it: the folder mltrain reads them from, or,
    where none exists yet, ``.mltrain/conf`` beside a Hydra app's ``./conf`` and ``conf`` otherwise."""
    from mltrain.config.cache import OWN_CONF, is_hydra_app_conf, project_conf_dir

    try:
        found = project_conf_dir()
    except ConfigError:
        found = None
    if found is not None:
        relative = os.path.relpath(found)
        return found if relative.startswith("..") else relative
    return OWN_CONF if is_hydra_app_conf("conf") else "conf"


def translate_hydra_error(exc: BaseException) -> BaseException:
    """Turn Hydra's multi-line composition errors into one ConfigError line with a hint."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from yaml import MarkedYAMLError

    from mltrain.config.schema import unknown_key_message
    from mltrain.config.suggest import did_you_mean, grammar_message

    if isinstance(exc, MarkedYAMLError):
        return _yaml_error(exc)
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if isinstance(exc, MissingConfigException):
        match = _MISSING_OPTION.search(text)
        options = [o for o in (getattr(exc, "options", None) or [])]
        if match:
            group, name = match.groups()
            valid = ", ".join(options) if options else "none found"
            hint = did_you_mean(name, options)
            return ConfigError(
                f"unknown {group} option {name!r}{';' if hint else ''}{hint} (available: {valid}); "
                f"add {_conf_dir_for_hints()}/{group}/{name}.yaml to define it"
            )
        match = _MISSING_PRIMARY.search(text)
        if match:
            return ConfigError(
                f"config {match.group(1)!r} not found; -cn NAME must name a file in ./conf or mltrain's packaged conf"
            )
        return ConfigError(first)
    if isinstance(exc, OverrideParseException):
        return ConfigError(grammar_message(str(exc.override), first))
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        cause_text = str(cause) if cause is not None else ""
        key_match = re.search(r"Could not override '([^']+)'", text)
        if key_match and ("not in struct" in cause_text or "not in '" in cause_text):
            return ConfigError(unknown_key_message(key_match.group(1)))
        detail = cause_text.splitlines()[0] if cause_text else ""
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        message = lines[0]
        if detail and detail not in message:
            message = f"{message} {detail}"
        return ConfigError(message)
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None)
        return ConfigError(f"{key}: {first}" if key else first)
    return exc


def _yaml_error(exc: Any) -> ConfigError:
    """PyYAML's multi-line report as one line: where, what, and in what construct."""
    mark = exc.problem_mark or exc.context_mark
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else "a config file"
    context = f" ({exc.context})" if exc.context else ""
    return ConfigError(f"{where}: not valid YAML: {exc.problem or 'cannot be parsed'}{context}")


def compose_validated(overrides: Sequence[str] = (), config_name: str | None = None) -> tuple[Any, str]:
    """Compose and validate; returns (MltrainConfig, the job config as YAML, without ``hydra``).

    A config composed before from the same files and overrides comes from the
    composition cache (``mltrain.config.cache``) without loading Hydra; one
    with no interpolation at all comes back validated, without loading OmegaConf.
    """
    from mltrain.config import cache as compose_cache
    from mltrain.config.schema import config_from_plain, config_to_plain, validate

    use_cache = compose_cache.enabled() and not any(o.lstrip("+~").startswith("hydra") for o in overrides)
    cache_key = compose_cache.key(overrides, config_name) if use_cache else None
    cached = compose_cache.load(cache_key) if cache_key else None
    if cached is not None and cached.validated is not None:
        try:
            return config_from_plain(cached.validated), cached.yaml
        except (TypeError, KeyError, ValueError, AttributeError):
            cached = None  # a damaged entry: compose afresh (storing overwrites it)
    if cached is not None:
        from omegaconf import DictConfig, OmegaConf

        job = OmegaConf.create(cached.job)
        assert isinstance(job, DictConfig)
        return validate(job), cached.yaml
    from omegaconf import OmegaConf

    full = compose(overrides, config_name)
    job = strip_hydra(full)
    cfg = validate(job)
    text = OmegaConf.to_yaml(job)
    if cache_key and not full.hydra.searchpath:  # extra search paths hold files the key does not cover
        container = OmegaConf.to_container(job, resolve=False)
        assert isinstance(container, dict)
        compose_cache.store(cache_key, container, text, config_to_plain(cfg))
    return cfg, text
