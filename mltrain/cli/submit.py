"""``mltrain <overrides>`` (a run) and ``mltrain -m <overrides>`` (a sweep): submitting, through Hydra or around it.

The common ``[--detach] [-cn NAME] [-cd DIR] key=value ...`` is parsed here
without importing Hydra; anything else goes through Hydra's own parser and
runner (``mltrain.hydra_compat``), which know every flag, help text and
completion. A sweep runs through Hydra's runner with mltrain's sweeper and
launcher (the config's defaults).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from mltrain.cli.output import info, out, run_ended, usage_error
from mltrain.errors import ConfigError, MltrainError, UsageError

_PLAIN_OPTIONS = {"-cn": "config_name", "--config-name": "config_name",
                  "-cd": "config_dir", "--config-dir": "config_dir", "--idempotency-key": "idempotency_key"}
MAX_KEY = 200
_HYDRA_SWEEP_FLAGS = ("-m", "--multirun", "--detach")
PLUGIN_KINDS = ("sweeper", "launcher")


def plain_submit(args: list[str]) -> argparse.Namespace | None:
    """The common ``[--detach] [-cn NAME] [-cd DIR] key=value ...`` without importing Hydra (~0.1 s).

    Anything else (``-m``, ``--cfg``, ``--info``, help, completion, a typo'd flag) returns
    None and goes through Hydra's own parser, which knows every flag and error message.
    """
    parsed = argparse.Namespace(overrides=[], config_name=None, config_dir=None, detach=False, quiet=False,
                                idempotency_key=None)
    rest = iter(args)
    for arg in rest:
        name, eq, value = arg.partition("=")
        if arg in ("--detach", "--quiet"):
            setattr(parsed, arg[2:], True)
        elif name in _PLAIN_OPTIONS:
            value = value if eq else next(rest, "")
            if not value or value.startswith("-"):
                return None
            setattr(parsed, _PLAIN_OPTIONS[name], value)
        elif arg.startswith("-"):
            return None
        else:
            parsed.overrides.append(arg)
    return parsed


def command(args: list[str]) -> int:
    if "--" in args:  # the script's own arguments, passed literally (a Hydra app's overrides: README, Hydra apps)
        from mltrain.config.compose import script_args_override

        at = args.index("--")
        if any(a.startswith("args=") for a in args[:at]):
            raise UsageError("give the script's arguments either as args=[...] or after --, not both")
        args = [*args[:at], script_args_override(args[at + 1:])]
    parsed = plain_submit(args)
    if parsed is None:
        from mltrain.hydra_compat import args_parser

        parser = args_parser()
        parser.error = _usage  # type: ignore[method-assign]
        parser.add_argument("--detach", action="store_true", help="print the run (or sweep) id and return at once")
        parser.add_argument("--idempotency-key", metavar="K",
                            help="if a run was submitted with K before, return that run instead of a new one")
        parser.add_argument("--quiet", action="store_true", help="no progress display")
        parsed = parser.parse_args(args)
        use_config_dir(parsed)
        hydra_only = parsed.cfg or parsed.info or parsed.shell_completion or parsed.hydra_help or parsed.help
        if hydra_only:
            return _through_hydra(parsed, parser)
        if parsed.multirun:
            if parsed.idempotency_key is not None:
                # A sweep is already idempotent by its command: running it again resumes it and skips
                # every trial that completed (README, "Detach, resume, reuse").
                raise UsageError("--idempotency-key is for single runs; to retry a sweep, run the same "
                                 "mltrain -m command again: it resumes and re-runs no completed trial")
            from mltrain.sweep.session import CONTROLLER_ENV

            # a detached controller writes to its log: the trial lines say it all there
            with progress(parsed.quiet or bool(os.environ.get(CONTROLLER_ENV))):
                return run_multirun(parsed, parser, [a for a in args if a != "--quiet"])
    use_config_dir(parsed)
    key = parsed.idempotency_key
    if key is not None and (not key.strip() or len(key) > MAX_KEY or not key.isprintable()):
        raise UsageError(f"--idempotency-key must be 1 to {MAX_KEY} printable characters, e.g. the CI job's id")
    from mltrain.run import Run, submit
    from mltrain.targets.base import CTRL_C

    run: Run | None = None
    try:
        with progress(parsed.quiet):  # a Ctrl-C until the run is returned is submit's to cancel
            run = submit(parsed.overrides, config_name=parsed.config_name, show_output=not parsed.detach,
                         idempotency_key=key)
        if parsed.detach:
            out(run.id)
            return 0
        if run.existing:
            info(f"run {run.id} was submitted before with idempotency key {key}; following it "
                 f"(mltrain runs show {run.id})")
        else:
            info(f"run {run.id} started (mltrain runs show {run.id})")
        record = run.wait(show_output=True)
    except KeyboardInterrupt:  # landed outside wait()'s own catch: still one Ctrl-C, one cancel
        if run is None or parsed.detach:
            raise
        record = run.cancel(CTRL_C)
    return run_ended(record, run.workspace)


def _usage(message: str) -> Any:
    raise usage_error("mltrain", message)


def progress(quiet: bool) -> Any:
    """The one choice of progress display for this command (``mltrain.util.progress``)."""
    import sys

    from mltrain.util import progress as displays

    return displays.installed(displays.choose(sys.stderr, quiet=quiet))


def use_config_dir(parsed: argparse.Namespace) -> None:
    """``-cd DIR`` is the project's conf dir: the search-path plugin reads it from the environment."""
    if parsed.config_dir:
        os.environ["MLTRAIN_CONFIG_DIR"] = os.path.abspath(parsed.config_dir)
        parsed.config_dir = None


def register_plugins() -> None:
    """Make mltrain's launcher and sweeper classes known to Hydra before its runner instantiates them.

    Hydra finds plugins by walking the ``hydra_plugins`` namespace, which setuptools' editable
    installs hide behind a path hook; registering (idempotent) works for every install.
    """
    from hydra.core.plugins import Plugins

    from hydra_plugins.mltrain_plugins.launcher import MltrainLauncher
    from hydra_plugins.mltrain_plugins.sweeper import MltrainSweeper

    Plugins.instance().register(MltrainLauncher)
    Plugins.instance().register(MltrainSweeper)


def _run_hydra(parsed: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Hydra's runner, as ``@hydra.main`` would call it, with mltrain's task (``prepare_hydra`` done)."""
    from mltrain.config.compose import CONFIG_NAME, CONFIG_PATH
    from mltrain.hydra_compat import run_hydra
    from mltrain.sweep.trial import TrialTask

    register_plugins()
    run_hydra(parsed, parser, TrialTask(), CONFIG_PATH, CONFIG_NAME)


def _through_hydra(parsed: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Hydra's own flags (--cfg, --info, completion, help) go through Hydra's runner, which prints and returns."""
    from mltrain.config.compose import prepare_hydra

    prepare_hydra()
    _run_hydra(parsed, parser)
    return 0


# ------------------------------------------------------------------ mltrain -m
def run_multirun(parsed: argparse.Namespace, parser: argparse.ArgumentParser, args: list[str]) -> int:
    """Run the sweep through Hydra's runner (mltrain's sweeper and launcher are the config's defaults)."""
    from mltrain.cli.output import exit_code, sweep_table
    from mltrain.config.compose import prepare_hydra
    from mltrain.sweep.session import CONTROLLER_ENV, SweepSession, begin, end

    prepare_hydra()
    if parsed.detach:
        _check_detachable(parsed)
    # Read once and dropped: the trials' own processes must not think they are sweep controllers.
    controller_of = os.environ.pop(CONTROLLER_ENV, None) or None
    session = SweepSession(args=[a for a in args if a not in _HYDRA_SWEEP_FLAGS], detach=parsed.detach,
                           sweep_id=controller_of, report=info)
    begin(session)
    try:
        _run_hydra(parsed, parser)
    except KeyboardInterrupt:
        if session.outcome is None:
            raise
    except MltrainError:
        raise
    except Exception as exc:
        problem = plugin_error(parsed, exc)
        if problem is None:
            raise
        raise problem from exc
    finally:
        end()
    if session.detached:
        info(f"sweep {session.sweep} goes on in the background (mltrain sweeps attach {session.sweep})")
        out(str(session.sweep))
        return 0
    if session.outcome is None:  # another launcher ran the trials one by one, and none failed
        info("the trials ran one after another through a Hydra launcher other than mltrain's, with no sweep "
             "record (mltrain runs list shows their runs; mltrain's launcher, the default, keeps one)")
        return 0
    from pathlib import Path

    from mltrain.store.db import Store
    from mltrain.store.workspace import Workspace
    from mltrain.sweep.report import sweep_report

    assert session.sweep_dir is not None
    workspace = Workspace(Path(session.sweep_dir).parents[1])
    with Store(workspace.db_path, create=False) as store:
        out(sweep_table(sweep_report(store, workspace, store.get_sweep(session.outcome.sweep_id))))
    return exit_code(session.outcome.status)


def _check_detachable(parsed: argparse.Namespace) -> None:
    """``--detach`` hands the sweep to a controller process, which only mltrain's launcher does; another
    launcher would run every trial here and now, so say so before any starts (one extra composition)."""
    from omegaconf import OmegaConf

    from hydra_plugins.mltrain_plugins import LAUNCHER
    from mltrain.config.compose import compose

    try:
        target = OmegaConf.select(compose(parsed.overrides, parsed.config_name, multirun=True),
                                  "hydra.launcher._target_")
    except Exception:
        return  # Hydra reports it in a moment
    if target != LAUNCHER:
        raise ConfigError(f"--detach needs mltrain's launcher (hydra/launcher=mltrain, the default), not {target}, "
                          "which runs the trials in this process; drop --detach or the launcher override")


def plugin_error(parsed: argparse.Namespace, exc: Exception) -> ConfigError | None:
    """Why Hydra could not set up ``hydra.sweeper`` / ``hydra.launcher``, as one line; None if that was not it.

    Hydra reports a plugin it cannot use as a bare RuntimeError, ImportError or AssertionError. On that
    (rare) path the config is composed again and each plugin's ``_target_`` checked against the installed
    ones: mltrain works with any installed Hydra sweeper or launcher (its own are the defaults), and an
    unknown class is named with the choices.
    """
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher
    from hydra.plugins.sweeper import Sweeper
    from omegaconf import DictConfig, OmegaConf

    from mltrain.config.compose import compose, group_options
    from mltrain.hydra_compat import plugin_being_set_up

    try:
        cfg = compose(parsed.overrides, parsed.config_name, multirun=True)
    except Exception:
        return None
    targets = {}
    for kind, base in zip(PLUGIN_KINDS, (Sweeper, Launcher), strict=True):
        node = OmegaConf.select(cfg, f"hydra.{kind}")
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        installed = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(base)}
        choices = f"hydra/{kind}=NAME ({', '.join(group_options(f'hydra/{kind}'))}; mltrain is the default)"
        if target is None:
            return ConfigError(f"hydra.{kind} is not set; choose one with {choices}")
        if target not in installed:
            return ConfigError(
                f"hydra.{kind}._target_={target} is not an installed Hydra {kind} (Hydra loads {kind}s only from "
                f"the hydra_plugins package); choose one with {choices}, or install the plugin that provides it")
        targets[kind] = target
    # Both are installed classes: blame the one Hydra was setting up when it failed.
    failing = plugin_being_set_up(exc)
    if failing is None:
        return None
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    detail = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return ConfigError(f"hydra.{failing} ({targets[failing]}) could not be set up: {detail}")
