"""The Host seam: a machine that runs detached jobs, each in a run folder of its own.

A job's lifecycle -- launch (idempotent per run id), poll, wait, read the
log by offset, cancel (TERM to its process group, a grace, then KILL to
the group), liveness by pid + kernel start time + boot id -- is written
once, in the helper mltrain ships to SSH hosts (``mltrain.hosts.agent.Jobs``).
``mltrain.hosts.local.LocalHost`` runs that code in this process for
``compute=local``; ``mltrain.targets.ssh.host.SshHost`` asks the helper on
the host to run it. So a run behaves the same wherever it runs: the sh
wrapper (``mltrain.hosts.wrapper``) writes its log and exit code, the
masking filter (``mltrain.hosts.masking``) sits before the log when the run
has secrets, and a process that vanished or a host that rebooted is told
apart from a job that ended.

Each run folder holds ``output.log``, ``exit_code`` (written by the
wrapper), ``launch.json`` (pid, start time, boot id: written once, at
launch) and ``outputs/``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mltrain.errors import TargetError
from mltrain.hosts.wrapper import masked, wrapper_argv

LOG_LIMIT = 4 << 20  # the most log bytes one read returns


class HostDown(TargetError):
    """The host did not answer (a dropped link): the job goes on there; ask again later."""


class CodeMissing(TargetError):
    """The folder the job was to start in is not on the host (any more): stage the code again."""


@dataclass(frozen=True)
class Job:
    """A launched job, as its launch recorded it on the host."""

    run_id: str
    run_dir: str  # the run's folder on the host
    pid: int  # the wrapper's pid, which is also its process group and session
    start_time: str | None  # the kernel's start time of ``pid``: a recycled pid has another
    boot_id: str  # the host's boot id at launch: another one means the host restarted since
    again: bool = False  # launched earlier (a retried launch): nothing new was started


@dataclass(frozen=True)
class JobState:
    """What the host knows of a job: still running, or how it ended.

    ``lost`` says why there is no exit code: ``vanished`` (the process is gone
    and wrote none), ``rebooted`` (the host restarted since the launch),
    ``unknown`` (no launch record), ``unreadable`` (an exit code file that is
    not a number).
    """

    running: bool = False
    exit_code: int | None = None
    lost: str | None = None

    @classmethod
    def from_reply(cls, reply: Mapping[str, object]) -> JobState:
        """From the helper's answer (``Jobs.poll``): ``{"exit_code": n}`` or ``{"state": ...}``."""
        if "exit_code" in reply:
            code = reply["exit_code"]
            if isinstance(code, int) and not isinstance(code, bool):
                return cls(exit_code=code)
            return cls(lost="unreadable")
        state = reply.get("state")
        if state == "running":
            return cls(running=True)
        return cls(lost=state if state in ("vanished", "rebooted", "unknown") else "unknown")


class Host(ABC):
    """A machine that runs detached jobs; see the module docstring."""

    name: str  # how messages name the host

    @abstractmethod
    def run_dir(self, run_id: str) -> str:
        """The run's folder on the host (``output.log``, ``exit_code``, ``outputs/`` ...)."""

    @abstractmethod
    def python(self) -> str:
        """The Python on the host that runs the masking filter."""

    def launch(self, run_id: str, argv: Sequence[str], *, cwd: str, env: Mapping[str, str],
               secrets: Sequence[str] = (), touch: Sequence[str] = (), container: str | None = None) -> Job:
        """Start ``argv`` detached under the sh wrapper (behind the masking filter when there are secrets).

        Idempotent per run id: a launch the host has a record of returns that
        job (``again``) and starts nothing. ``env`` is added to the host's
        environment; ``touch`` names files to create in the run folder first;
        ``container`` names a container the job runs, removed when it is canceled.
        Raises ``CodeMissing`` when ``cwd`` is not there.
        """
        run_dir = self.run_dir(run_id)
        command, mask_env = masked(list(argv), self.python(), secrets)
        wrapped = wrapper_argv(f"{run_dir}/output.log", f"{run_dir}/exit_code", command)
        return self._launch(run_id, wrapped, cwd=cwd, env={**env, **mask_env}, touch=list(touch),
                            container=container)

    @abstractmethod
    def _launch(self, run_id: str, argv: list[str], *, cwd: str, env: dict[str, str], touch: list[str],
                container: str | None) -> Job:
        """Start the wrapped ``argv`` (``Jobs.launch`` on the host)."""

    @abstractmethod
    def poll(self, run_id: str) -> JobState:
        """The job's state now."""

    def wait(self, run_id: str, timeout: float) -> JobState:
        """The job's state once it has ended, or after ``timeout`` seconds; hosts with a faster signal override."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.poll(run_id)
            if not state.running or time.monotonic() >= deadline:
                return state
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    @abstractmethod
    def read_log(self, run_id: str, offset: int, limit: int = LOG_LIMIT) -> bytes:
        """Up to ``limit`` bytes of the job's log from ``offset`` on."""

    @abstractmethod
    def cancel(self, run_id: str, grace: float) -> bool:
        """TERM the job's process group, wait up to ``grace`` seconds, KILL what is left; False if it had ended."""

    def release(self, run_id: str) -> None:  # noqa: B027 (optional hook)
        """The job has ended: free what this process holds for it (a child to reap)."""
