"""``mltrain ui``: MLflow's own UI on the workspace's MLflow store, on this machine's loopback by default."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from mltrain.cli.output import info
from mltrain.errors import UsageError
from mltrain.store.workspace import Workspace


def command(parsed: argparse.Namespace) -> int:
    from mltrain.tracking.mlflow import absolute_uri, artifact_root, default_uri, require

    require()
    workspace = Workspace.locate(parsed.workspace)
    uri = absolute_uri(parsed.mlflow) if parsed.mlflow else default_uri(workspace)
    if uri.startswith(("http://", "https://")):
        info(f"{uri} is an MLflow server already: open it in a browser")
        return 0
    check_port(parsed.host, parsed.port)
    workspace.ensure()
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", parsed.host,
            "--port", str(parsed.port), "--workers", "1",
            "--default-artifact-root", artifact_root(workspace).absolute().as_uri()]
    info(f"MLflow UI on {uri}: http://{parsed.host}:{parsed.port} (Ctrl-C stops it)")
    proc = subprocess.Popen(argv, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return proc.wait()
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:  # the server's workers are in the process group it leads
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _stop(signum: int, frame: Any) -> None:
    """``kill`` of ``mltrain ui`` stops the server too (its own session would outlive it otherwise)."""
    raise SystemExit(0)


def check_port(host: str, port: int) -> None:
    """The port is free to listen on, or one line that says which port and how to pick another."""
    if not 0 < port < 65536:
        raise UsageError(f"ui: --port {port} is not a port number (1-65535)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            raise UsageError(f"ui: port {port} on {host} {why}; pick another with mltrain ui --port N") from None
