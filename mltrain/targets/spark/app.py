"""What a Spark application tells us after it starts: its id and UI (from the output), its state (from the
master), and how to kill it where killing the driver is not enough.

The id is read from the lines Spark logs anyway: standalone ``Connected to Spark cluster with app ID
app-...``, YARN ``application_...``, Kubernetes ``spark-<hex>``. In local mode Spark never logs its id
(``local-<ms>``), so for local masters mltrain writes the event log into the run folder: its writer logs
the file it opens, named after the id (and ``spark-history-server`` can show the run later). Why it failed
(the Python error, or spark-submit's own) is read like every target's: ``mltrain.tracking.joblog.error_line``.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from mltrain.hosts.runner import Runner, StartError

log = logging.getLogger(__name__)

_APP_ID = {
    "local": re.compile(r"(local-\d{10,})\b"),
    "standalone": re.compile(r"(app-\d{14}-\d{4,})\b"),
    "yarn": re.compile(r"\b(application_\d+_\d+)\b"),
    "k8s": re.compile(r"\b(spark-[0-9a-f]{32})\b"),
}
_UI_PORT = re.compile(r"Successfully started service '?SparkUI'? on port (\d+)")
_UI_BOUND = re.compile(r"SparkUI.*started at (https?://\S+)")
_DRIVER_HOST = re.compile(r"Server created on ([^\s:]+):\d+")
_TRACKING = re.compile(r"tracking URL: (https?://\S+)")
_SUBMISSION = re.compile(r"submission ID (\S+:\S+)")
SCAN_LIMIT = 4 * 1024 * 1024  # Spark logs the id within its first few hundred lines


@dataclass
class AppInfo:
    """What is known about the application; serialised into the run's handle."""

    app_id: str | None = None
    ui_url: str | None = None  # the page to look at: the master's app page, else the driver's UI
    driver_ui: str | None = None  # the driver's own UI, alive only while the application runs
    submission_id: str | None = None  # Kubernetes cluster mode: namespace:driver-pod
    _ui_port: str | None = field(default=None, repr=False)
    _driver_host: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"app_id": self.app_id, "ui_url": self.ui_url, "driver_ui": self.driver_ui,
                "submission_id": self.submission_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AppInfo:
        data = data or {}
        return cls(data.get("app_id"), data.get("ui_url"), data.get("driver_ui"), data.get("submission_id"))

    @property
    def complete(self) -> bool:
        return self.app_id is not None and self.driver_ui is not None


class LogScanner:
    """Feeds on the run log as it grows and fills an ``AppInfo``; returns True when something new was learnt."""

    def __init__(self, kind: str, info: AppInfo, master_ui: str | None) -> None:
        self.kind = kind
        self.info = info
        self.master_ui = master_ui
        self._pattern = _APP_ID.get(kind)
        self._partial = b""

    def feed(self, data: bytes) -> bool:
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        before = self.info.to_dict()
        for raw in data[:cut].splitlines():
            self._line(raw.decode(errors="replace"))
        return self.info.to_dict() != before

    def _line(self, line: str) -> None:
        info = self.info
        if info.app_id is None and self._pattern is not None:
            match = self._pattern.search(line)
            if match:
                info.app_id = match.group(1)
                if self.master_ui and self.kind == "standalone":
                    info.ui_url = f"{self.master_ui}/app/?appId={info.app_id}"
        if info.driver_ui is None:
            if (match := _UI_BOUND.search(line)) is not None:
                info.driver_ui = match.group(1)
            else:
                if (match := _UI_PORT.search(line)) is not None:
                    info._ui_port = match.group(1)
                if (match := _DRIVER_HOST.search(line)) is not None:
                    info._driver_host = match.group(1)
                if info._ui_port and info._driver_host:
                    info.driver_ui = f"http://{info._driver_host}:{info._ui_port}"
        if (match := _TRACKING.search(line)) is not None:
            info.ui_url = match.group(1)
        if info.submission_id is None and (match := _SUBMISSION.search(line)) is not None:
            info.submission_id = match.group(1)
        if info.ui_url is None and info.driver_ui is not None:
            info.ui_url = info.driver_ui


# ------------------------------------------------------------------ master
def standalone_state(master_ui: str, app_id: str | None, name: str | None, timeout: float = 3.0) -> str | None:
    """The application's state on a standalone master (its ``/json/`` endpoint), or None if unknown."""
    try:
        with urllib.request.urlopen(f"{master_ui}/json/", timeout=timeout) as response:
            status = json.loads(response.read())
    except (OSError, ValueError) as exc:
        log.info("master %s did not answer: %s", master_ui, exc)
        return None
    apps = [*status.get("activeapps", []), *status.get("completedapps", [])]
    for app in apps:
        if (app_id and app.get("id") == app_id) or (not app_id and name and app.get("name") == name):
            state = app.get("state")
            return str(state) if state else None
    return None


def cluster_kill_argv(kind: str, info: AppInfo, spark_submit: str, master: str) -> list[str] | None:
    """The command that stops a cluster-mode application (killing the local spark-submit does not)."""
    if kind == "yarn" and info.app_id:
        return ["yarn", "application", "-kill", info.app_id]
    if kind == "k8s" and info.submission_id:
        return [spark_submit, "--kill", info.submission_id, "--master", master]
    return None


def kill_cluster_app(runner: Runner, argv: list[str], timeout: float) -> None:
    """Run the kill on the driver's machine (where the cluster's client tools are); a failure is logged."""
    try:
        result = runner.run(argv, timeout=timeout)
    except StartError as exc:
        log.warning("could not kill the Spark application with %s: %s", argv[0], exc)
        return
    if result.returncode != 0:
        log.warning("%s exited %s: %s", " ".join(argv[:3]), result.returncode, result.last_line())
