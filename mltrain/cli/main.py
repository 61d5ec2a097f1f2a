"""The ``mltrain`` command: its usage, its argument parsing, and the one error boundary.

``mltrain <overrides>`` submits (``mltrain.cli.submit``; Hydra's usual flags work:
``-cn``, ``--cfg job``, ``--info``, ``-m``, shell completion); ``mltrain
plan|runs|sweeps|gc ...`` are subcommands, each in a module of its own
(``cli.plan``, ``cli.runs``, ``cli.sweeps``, ``cli.gc``), imported only when
named; what they print is made in ``cli.output``. Hydra and OmegaConf are
imported only on the paths that compose a config, so ``mltrain --help`` and
``mltrain runs list`` stay fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from mltrain.cli.output import error, info, usage_error
from mltrain.errors import MltrainError

USAGE = """\
usage: mltrain [--detach] [--quiet] [-cn NAME] [-cd DIR] [--cfg job] [-m] key=value ...  submit a run (-m: a sweep)
       mltrain plan [--json] [-cn NAME] [-cd DIR] key=value ...     show what a submit would do
       mltrain runs list|show|logs|attach|cancel|metrics|outputs|rerun|diff|plot|export ...
                                                                    the run history (runs --help)
       mltrain sweeps list|show|cancel|attach|report ...            sweeps and their trials (sweeps --help)
       mltrain ui [--port P]                                        MLflow's UI on the workspace's MLflow store
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

SUBCOMMANDS = ("plan", "runs", "sweeps", "gc", "ui")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is mltrain's one error line (usage stays behind --help)."""

    def error(self, message: str) -> Any:  # argparse's own prints usage and exits
        raise usage_error(self.prog, message)


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
        from mltrain.cli import submit

        return submit.command(args)
    except MltrainError as exc:
        if os.environ.get("MLTRAIN_FULL_ERROR") == "1":
            raise
        error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        info("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        from mltrain.config.compose import translate_hydra_error

        translated = translate_hydra_error(exc)
        if os.environ.get("MLTRAIN_FULL_ERROR") == "1":
            raise
        if isinstance(translated, MltrainError):
            error(str(translated))
            return translated.exit_code
        error(f"internal error: {type(exc).__name__}: {exc} (set MLTRAIN_FULL_ERROR=1 for the traceback)")
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
    lst.add_argument("--sweep", metavar="ID", help="the trials of one sweep: primary metric and differing params")
    lst.add_argument("--where", metavar="EXPR", help="e.g. 'metrics.acc > 0.9 and params.lr < 0.01'")
    lst.add_argument("--sort", metavar="FIELD",
                     help="metrics.acc (ascending) or metrics.acc:desc (also --sort=-metrics.acc)")
    lst.add_argument("--columns", metavar="F,F", help="the columns after ID, e.g. params.lr,metrics.acc,status")
    lst.add_argument("--limit", type=int, default=50, help="first N (0: all)")
    fmt = lst.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
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
    metrics.add_argument("--csv", action="store_true")
    outputs = rsub.add_parser("outputs", help="the files a run wrote to $MLTRAIN_OUTPUT_DIR (--download: copy them)")
    outputs.add_argument("run_id")
    outputs.add_argument("--download", metavar="DEST", help="copy the outputs into DEST")
    rerun = rsub.add_parser("rerun", help="run again from the stored snapshot and config")
    rerun.add_argument("run_id")
    rerun.add_argument("--detach", action="store_true")
    rerun.add_argument("overrides", nargs="*")
    export = rsub.add_parser("export", help="copy runs (and their sweeps) to MLflow; exporting again adds nothing")
    export.add_argument("--mlflow", metavar="URI", help="tracking URI: sqlite:///f.db, http://host:5000 (default: "
                                                        "$MLFLOW_TRACKING_URI, else the workspace's own store)")
    export.add_argument("run_ids", nargs="*", metavar="ID")
    export.add_argument("--experiment", metavar="NAME", help="every run of this experiment")
    export.add_argument("--all", action="store_true", help="every run in the history")
    diff = rsub.add_parser("diff", help="config and file differences between two runs")
    diff.add_argument("first")
    diff.add_argument("second")
    plot = rsub.add_parser("plot", help="metric curves over steps, runs overlaid (-o: a .png/.svg; else text)")
    plot.add_argument("run_ids", nargs="+", metavar="run_id")
    plot.add_argument("--metric", help="only this metric (default: every metric the runs logged)")
    plot.add_argument("-o", "--output", metavar="FILE", help="write a picture (.png or .svg; needs mltrain[plot])")

    sweeps = sub.add_parser("sweeps", help="sweeps (mltrain -m) and their trials")
    sweeps.add_argument("--workspace", help="workspace folder (default: $MLTRAIN_HOME or ./.mltrain)")
    ssub = sweeps.add_subparsers(dest="action", required=True)
    slist = ssub.add_parser("list", help="the newest sweeps")
    slist.add_argument("--limit", type=int, default=20, help="newest N (0: all)")
    slist.add_argument("--json", action="store_true")
    slist.add_argument("--csv", action="store_true")
    sshow = ssub.add_parser("show", help="a sweep's trials: params, status, primary metric, duration; best marked")
    sshow.add_argument("sweep_id")
    sshow.add_argument("--json", action="store_true")
    sshow.add_argument("--csv", action="store_true")
    ssub.add_parser("cancel", help="cancel the running trials and start no more").add_argument("sweep_id")
    ssub.add_parser("attach", help="follow a sweep (resuming it if its controller is gone)").add_argument("sweep_id")
    sreport = ssub.add_parser("report", help="one self-contained HTML page: trials table, metric over trials, "
                                             "curves, parallel coordinates, metric vs each param")
    sreport.add_argument("sweep_id")
    sreport.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: sweep-ID.html here)")

    ui = sub.add_parser("ui", help="MLflow's UI on the workspace's MLflow store (pip install 'mltrain[mlflow]')")
    ui.add_argument("--workspace", help="workspace folder (default: $MLTRAIN_HOME or ./.mltrain)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    ui.add_argument("--mlflow", metavar="URI", help="the store to show (default: $MLFLOW_TRACKING_URI, else the "
                                                    "workspace's own)")

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
        from mltrain.cli import plan as handler
    elif parsed.command == "gc":
        from mltrain.cli import gc as handler  # type: ignore[no-redef]
    elif parsed.command == "sweeps":
        from mltrain.cli import sweeps as handler  # type: ignore[no-redef]
    elif parsed.command == "ui":
        from mltrain.cli import ui as handler  # type: ignore[no-redef]
    elif parsed.action == "plot":
        from mltrain.cli import plot as handler  # type: ignore[no-redef]
    else:
        from mltrain.cli import runs as handler  # type: ignore[no-redef]
    result: int = handler.command(parsed)
    return result


if __name__ == "__main__":
    sys.exit(main())
