"""A remote machine as a Host: the job code of ``mltrain.hosts.agent.Jobs``, run there by the helper.

Each method is one request on the host's ``Link``; what comes back is
hostile input, read with its types checked (``Reply.take``). A dropped link
raises ``LinkDown`` (a ``HostDown``): the job goes on there.
"""

from __future__ import annotations

from mltrain.hosts.base import LOG_LIMIT, CodeMissing, Host, Job, JobState
from mltrain.targets.ssh.link import Link


class SshHost(Host):
    """Jobs in ``<remote_dir>/runs/<run id>/`` on the host at the far end of ``link``."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.name = link.where

    def run_dir(self, run_id: str) -> str:
        return f"{self.link.hello()['root']}/runs/{run_id}"

    def python(self) -> str:
        """The helper's own Python: it is there, and it is 3.8+."""
        return str(self.link.hello().get("python") or self.link.settings.python)

    def _launch(self, run_id: str, argv: list[str], *, cwd: str, env: dict[str, str], touch: list[str],
                container: str | None) -> Job:
        info = self.link.request({"op": "launch", "run_id": run_id, "cwd": cwd, "env": env, "touch": touch,
                                  "argv": argv, "container": container}, retry=True)
        if info.maybe("missing_code", bool):
            raise CodeMissing(f"the code of run {run_id} is no longer at {cwd} on {self.name}")
        pid = info.take("pid", int)
        if pid <= 0:
            raise info.bad(f"pid {pid}")
        return Job(run_id=run_id, run_dir=info.take("run_dir", str), pid=pid,
                   start_time=info.maybe("start_time", str), boot_id=info.maybe("boot_id", str) or "",
                   again=bool(info.maybe("again", bool)))

    def poll(self, run_id: str) -> JobState:
        return JobState.from_reply(self.link.call("poll", run_id=run_id))

    def wait(self, run_id: str, timeout: float) -> JobState:
        """One request that the helper answers when the job ends (a pidfd there) or at ``timeout``."""
        reply = self.link.request({"op": "wait", "run_id": run_id, "timeout": timeout},
                                  deadline=timeout + 2 * self.link.settings.link_timeout)
        return JobState.from_reply(reply)

    def read_log(self, run_id: str, offset: int, limit: int = LOG_LIMIT) -> bytes:
        chunks: list[bytes] = []

        def keep(_kind: bytes, data: bytes) -> None:
            chunks.append(data)

        reply = self.link.request({"op": "read_log", "run_id": run_id, "offset": offset, "limit": limit},
                                  on_data=keep, max_data=limit)
        data = b"".join(chunks)
        if reply.take("size", int) != len(data):
            raise reply.bad(f"'size' says {reply['size']} bytes of log, {len(data)} came")
        return data

    def cancel(self, run_id: str, grace: float) -> bool:
        reply = self.link.request({"op": "cancel", "run_id": run_id, "grace": grace}, retry=True,
                                  deadline=grace + 2 * self.link.settings.link_timeout)
        return bool(reply.maybe("signalled", bool))
