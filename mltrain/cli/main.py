"""The ``mltrain`` command: a thin layer over the Python API, with the one error boundary.

``mltrain <overrides>`` submits (Hydra's usual flags work: ``-cn``, ``--cfg job``,
``--info``, ``-m``, shell completion); ``mltrain plan|runs|gc ...`` are subcommands.
Hydra and OmegaConf are imported only on the paths that compose a config, so
``mltrain runs list`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from mltrain.errors import MltrainError, UsageError

USAGE = """\
usage: mltrain [--detach] [--quiet] [-cn NAME] [-cd DIR] [--cfg job] [-m] key=value ...  submit a run (-m: a sweep)
       mltrain plan [--json] [-cn NAME] [-cd DIR] key=value ...     show what a submit would do
       mltrain runs list|show|logs|attach|cancel|metrics|outputs|rerun|diff ...  the run history (runs --help)
       mltrain sweeps list|show|cancel|attach ...                   sweeps and their trials (sweeps --help)
       mltrain gc [--failed] [--older-than DAYS] [--envs DAYS] [--dry-run]  free workspace space

  --detach  print the run (or sweep) id and return; `mltrain runs attach ID` follows it later
  --quiet   hide the progress of environment builds, uploads and sweeps (on stderr; redrawn in place on a terminal)

examples (in examples/quickstart):
  mltrain script=train.py                                   run on this machine, stream output
  mltrain script=train.py params.lr=0.01 params.epochs=20   the script gets --lr 0.01 --epochs 20
  mltrain script=train.py compute=docker environment=docker_python args='[--lr,0.01]'
                                                            in a container (python:3.11-slim)
  mltrain plan script=train.py environment=sklearn          what a submit would do (pinned scikit-learn venv)
  mltrain -m script=train.py params.lr=0.1,0.01,0.001       a sweep (--detach: in the background)
  mltrain -m script=train.py 'params.lr=tag(log,interval(1e-4,0.1))' sweep.sampler=tpe sweep.n_trials=20 \\
      sweep.primary_metric=loss                             Bayesian search
  mltrain runs list --status Failed                         the runs that failed
  mltrain sweeps list                                       the newest sweeps, with their best trial
  mltrain --idempotency-key ci-42 script=train.py           a retry gets the run the first try started

config groups: {groups};
a project's ./conf (or $MLTRAIN_CONFIG_DIR) overrides and adds options.
Set MLTRAIN_FULL_ERROR=1 to see tracebacks.
"""


def usage() -> str:
    """``--help``: the config groups' types come from their registries, and the presets from the packaged conf."""
    from importlib.util import find_spec

    from mltrain.environments import ENVIRONMENTS
    from mltrain.frameworks import FRAMEWORKS
    from mltrain.targets import TARGETS

    spec = find_spec("mltrain.conf")  # the packaged conf (a folder of the repository in an editable install)
    packaged = list(spec.submodule_search_locations or []) if spec is not None else []
    shown = []
    for registry in (ENVIRONMENTS, TARGETS, FRAMEWORKS):
        folders = [os.path.join(path, registry.group) for path in packaged]
        presets = sorted({name[:-5] for folder in folders if os.path.isdir(folder) for name in os.listdir(folder)
                          if name.endswith(".yaml")} - set(registry))
        choices = [*registry.kinds(), *([f"presets: {', '.join(presets)}"] if presets else [])]
        shown.append(f"{registry.group} ({', '.join(choices)})")
    return USAGE.format(groups=",\n".join(shown))

SUBCOMMANDS = ("plan", "runs", "sweeps", "gc")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is mltrain's one error line (usage stays behind --help)."""

    def error(self, message: str) -> Any:  # argparse's own prints usage and exits
        _raise_usage(self.prog, message)


def _raise_usage(prog: str, message: str) -> Any:
    where = prog.removeprefix("mltrain").strip()
    raise UsageError(f"{where + ': ' if where else ''}{message} (see {prog} --help)")


def _err(message: str) -> None:
    sys.stderr.write(f"mltrain: error: {message}\n")


def _info(message: str) -> None:
    sys.stderr.write(f"mltrain: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    _keep_sigint_ignored()
    try:
        if not args or args[0] in ("-h", "--help", "help"):
            sys.stdout.write(usage())
            return 0
        if args[0] == "--version":
            from importlib.metadata import version

            sys.stdout.write(f"mltrain {version('mltrain')}\n")
            return 0
        if args[0] in SUBCOMMANDS:
            return _subcommand(args)
        return _submit_command(args)
    except MltrainError as exc:
        if os.environ.get("MLTRAIN_FULL_ERROR") == "1":
            raise
        _err(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _info("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        from mltrain.config.compose import translate_hydra_error

        translated = translate_hydra_error(exc)
        if os.environ.get("MLTRAIN_FULL_ERROR") == "1":
            raise
        if isinstance(translated, MltrainError):
            _err(str(translated))
            return translated.exit_code
        _err(f"internal error: {type(exc).__name__}: {exc} (set MLTRAIN_FULL_ERROR=1 for the traceback)")
        return 3


def _ignored(signum: int, frame: Any) -> None:
    """SIGINT while mltrain was started with it ignored: still ignored."""


def _keep_sigint_ignored() -> None:
    """Started with SIGINT ignored (``mltrain ... &`` from a script, ``nohup``, some CI runners): keep ignoring it.

    A job started that way is not meant to die of a Ctrl-C in the terminal, so mltrain does not either. But an
    ignored signal stays ignored across ``exec`` and would reach the run's script; a handler that does nothing
    is reset to the default there, so the script starts with SIGINT as it would from a terminal.
    """
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, _ignored)


# --------------------------------------------------------------- submitting
_PLAIN_OPTIONS = {"-cn": "config_name", "--config-name": "config_name",
                  "-cd": "config_dir", "--config-dir": "config_dir", "--idempotency-key": "idempotency_key"}
MAX_KEY = 200


def _plain_submit(args: list[str]) -> argparse.Namespace | None:
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


def _submit_command(args: list[str]) -> int:
    parsed = _plain_submit(args)
    if parsed is None:
        from hydra._internal.utils import get_args_parser

        parser = get_args_parser()
        parser.error = lambda message: _raise_usage("mltrain", message)  # type: ignore[method-assign]
        parser.add_argument("--detach", action="store_true", help="print the run (or sweep) id and return at once")
        parser.add_argument("--idempotency-key", metavar="K",
                            help="if a run was submitted with K before, return that run instead of a new one")
        parser.add_argument("--quiet", action="store_true", help="no progress display")
        parsed = parser.parse_args(args)
        _use_config_dir(parsed)
        hydra_only = parsed.cfg or parsed.info or parsed.shell_completion or parsed.hydra_help or parsed.help
        if hydra_only:
            return _through_hydra(parsed, parser)
        if parsed.multirun:
            if parsed.idempotency_key is not None:
                # A sweep is already idempotent by its command: running it again resumes it and skips
                # every trial that completed (README, "Detach, resume, reuse").
                raise UsageError("--idempotency-key is for single runs; to retry a sweep, run the same "
                                 "mltrain -m command again: it resumes and re-runs no completed trial")
            from mltrain.cli.sweeps import run_multirun
            from mltrain.sweep.session import CONTROLLER_ENV

            # a detached controller writes to its log: the trial lines say it all there
            with _progress(parsed.quiet or bool(os.environ.get(CONTROLLER_ENV))):
                return run_multirun(parsed, parser, [a for a in args if a != "--quiet"])
    _use_config_dir(parsed)
    key = parsed.idempotency_key
    if key is not None and (not key.strip() or len(key) > MAX_KEY or not key.isprintable()):
        raise UsageError(f"--idempotency-key must be 1 to {MAX_KEY} printable characters, e.g. the CI job's id")
    from mltrain.run import submit

    with _progress(parsed.quiet):
        run = submit(parsed.overrides, config_name=parsed.config_name, show_output=not parsed.detach,
                     idempotency_key=key)
    if parsed.detach:
        sys.stdout.write(run.id + "\n")
        return 0
    try:
        if run.existing:
            _info(f"run {run.id} was submitted before with idempotency key {key}; following it "
                  f"(mltrain runs show {run.id})")
        else:
            _info(f"run {run.id} started (mltrain runs show {run.id})")
        record = run.wait(show_output=True)
    except KeyboardInterrupt:  # landed before wait() could catch it: still one Ctrl-C, one cancel
        record = run.cancel()
    return _report_end(record)


def _progress(quiet: bool) -> Any:
    """The one choice of progress display for this command (``mltrain.util.progress``)."""
    from mltrain.util import progress

    return progress.installed(progress.choose(sys.stderr, quiet=quiet))


def _use_config_dir(parsed: argparse.Namespace) -> None:
    """``-cd DIR`` is the project's conf dir: the search-path plugin reads it from the environment."""
    if parsed.config_dir:
        os.environ["MLTRAIN_CONFIG_DIR"] = os.path.abspath(parsed.config_dir)
        parsed.config_dir = None


def _report_end(record: Any) -> int:
    took = f" in {record.duration:.1f}s" if record.duration is not None else ""
    why = f": {record.reason}" if record.reason else ""
    _info(f"run {record.id} {record.status}{took}{why}")
    return {"Completed": 0, "Canceled": 130}.get(record.status, 1)


def _through_hydra(parsed: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Hydra's own flags (--cfg, --info, completion, help) go through Hydra's runner, which prints and returns."""
    from hydra._internal.utils import _run_hydra

    from mltrain.config.compose import CONFIG_NAME, CONFIG_PATH, prepare_hydra
    from mltrain.sweep.trial import TrialTask

    prepare_hydra()
    _run_hydra(args=parsed, args_parser=parser, task_function=TrialTask(), config_path=CONFIG_PATH,
               config_name=CONFIG_NAME)
    return 0


# -------------------------------------------------------------- subcommands
def _amount(text: str) -> float:
    """A number of days or seconds: finite and not negative (``--envs -5`` would spare nothing)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number >= 0")
    return value


def _subcommand(args: list[str]) -> int:
    parser = _Parser(prog="mltrain")
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="show the execution plan; changes nothing")
    plan.add_argument("--json", action="store_true")
    plan.add_argument("-cn", "--config-name", dest="config_name")
    plan.add_argument("-cd", "--config-dir", dest="config_dir", help="the project's conf dir (default: ./conf)")
    plan.add_argument("overrides", nargs="*")

    runs = sub.add_parser("runs", help="the run history")
    runs.add_argument("--workspace", help="workspace folder (default: $MLTRAIN_HOME or ./.mltrain)")
    rsub = runs.add_subparsers(dest="action", required=True)
    lst = rsub.add_parser("list", help="the newest runs: id, status, when, duration, target, script")
    lst.add_argument("--experiment")
    lst.add_argument("--status", choices=["Queued", "Preparing", "Running", "Finalizing", "Completed",
                                          "Failed", "Canceled"])
    lst.add_argument("--limit", type=int, default=50, help="newest N (0: all)")
    lst.add_argument("--json", action="store_true")
    show = rsub.add_parser("show", help="one run: status, timings, config, git state, metrics, snapshot")
    show.add_argument("run_id")
    show.add_argument("--json", action="store_true")
    logs = rsub.add_parser("logs", help="a run's output (-f: follow it while it runs)")
    logs.add_argument("run_id")
    logs.add_argument("-f", "--follow", action="store_true")
    rsub.add_parser("attach", help="stream a run's output until it ends (Ctrl-C cancels it)").add_argument("run_id")
    rsub.add_parser("cancel", help="stop a run: TERM, then KILL after compute.cancel_grace").add_argument("run_id")
    metrics = rsub.add_parser("metrics", help="every metric value a run logged: name, step, value")
    metrics.add_argument("run_id")
    metrics.add_argument("--json", action="store_true")
    outputs = rsub.add_parser("outputs", help="the files a run wrote to $MLTRAIN_OUTPUT_DIR (--download: copy them)")
    outputs.add_argument("run_id")
    outputs.add_argument("--download", metavar="DEST", help="copy the outputs into DEST")
    rerun = rsub.add_parser("rerun", help="run again from the stored snapshot and config")
    rerun.add_argument("run_id")
    rerun.add_argument("--detach", action="store_true")
    rerun.add_argument("overrides", nargs="*")
    diff = rsub.add_parser("diff", help="config and file differences between two runs")
    diff.add_argument("first")
    diff.add_argument("second")

    if args[0] == "sweeps":  # its module pulls in the store; `plan` and `runs` should not pay for it
        from mltrain.cli.sweeps import add_parser as add_sweeps_parser

        add_sweeps_parser(sub)

    gc = sub.add_parser("gc", help="remove what no kept run needs")
    gc.add_argument("--workspace")
    gc.add_argument("--failed", action="store_true", help="also delete failed and canceled runs")
    gc.add_argument("--older-than", type=_amount, metavar="DAYS", help="also delete runs older than DAYS")
    gc.add_argument("--dry-run", action="store_true")
    gc.add_argument("--envs", type=_amount, metavar="DAYS",
                    help="also remove venvs and mltrain-built images no run on this machine used for DAYS days")
    gc.add_argument("--engine", metavar="URL", help="the Docker engine whose images --envs prunes (default: local)")
    gc.add_argument("--grace", type=_amount, default=3600.0, metavar="SECONDS",
                    help="spare blobs younger than this (a snapshot may be in flight; default 3600)")

    parsed = parser.parse_args(args)
    if parsed.command == "plan":
        return _plan(parsed)
    if parsed.command == "gc":
        from mltrain.cli.commands import gc_command

        if parsed.engine and parsed.envs is None:
            raise UsageError("gc: --engine says whose images --envs prunes; add --envs DAYS")
        return gc_command(parsed)
    if parsed.command == "sweeps":
        from mltrain.cli.sweeps import command

        return command(parsed)
    from mltrain.cli import commands

    handler = getattr(commands, f"runs_{parsed.action}")
    result: int = handler(parsed)
    return result


def _plan(parsed: argparse.Namespace) -> int:
    from mltrain.cli.commands import plan_for

    _use_config_dir(parsed)

    plan = plan_for(parsed.overrides, parsed.config_name)
    sys.stdout.write((plan.to_json() if parsed.json else plan.render()) + "\n")
    return 0


def _now() -> float:
    return time.time()


if __name__ == "__main__":
    sys.exit(main())
