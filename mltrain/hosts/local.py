"""This machine as a Host: the helper's job code (``mltrain.hosts.agent.Jobs``), run in this process.

Run folders are the workspace's own (``<workspace>/runs/<id>/``), so the
job writes its log and exit code where every reader looks, and nothing is
copied. One ``Jobs`` serves the whole process: a job launched here is a
child of this process, so a handle rebuilt later in the same process (a
sweep following its trials) still waits on it with a pidfd, and reaps it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mltrain.hosts.agent import Jobs
from mltrain.hosts.base import LOG_LIMIT, CodeMissing, Host, Job, JobState

JOBS = Jobs(reap_all=False)


class LocalHost(Host):
    """Jobs on this machine, each in ``<runs>/<run id>/``."""

    name = "this machine"

    def __init__(self, runs: Path | str) -> None:
        self.runs = Path(runs)

    def run_dir(self, run_id: str) -> str:
        return str(self.runs / run_id)

    def python(self) -> str:
        return sys.executable

    def _launch(self, run_id: str, argv: list[str], *, cwd: str, env: dict[str, str], touch: list[str],
                container: str | None) -> Job:
        info = JOBS.launch(self.run_dir(run_id), argv, cwd, env, touch=touch, container=container)
        if info.get("missing_code"):
            raise CodeMissing(f"cannot start run {run_id}: its working directory {cwd} is missing")
        return _job(run_id, info)

    def poll(self, run_id: str) -> JobState:
        return JobState.from_reply(JOBS.poll(self.run_dir(run_id)))

    def wait(self, run_id: str, timeout: float) -> JobState:
        return JobState.from_reply(JOBS.wait(self.run_dir(run_id), timeout))

    def read_log(self, run_id: str, offset: int, limit: int = LOG_LIMIT) -> bytes:
        return JOBS.read_log(self.run_dir(run_id), offset, limit)

    def cancel(self, run_id: str, grace: float) -> bool:
        return bool(JOBS.cancel(self.run_dir(run_id), grace).get("signalled"))

    def release(self, run_id: str) -> None:
        JOBS.release(self.run_dir(run_id))


def _job(run_id: str, info: Mapping[str, Any]) -> Job:
    return Job(run_id=run_id, run_dir=str(info["run_dir"]), pid=int(info["pid"]), start_time=info.get("start_time"),
               boot_id=str(info.get("boot_id") or ""), again=bool(info.get("again")))
