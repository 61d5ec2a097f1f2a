"""LogMirror: a log written elsewhere copied into the run's output.log -- resumable, one copier at a time, never
a byte twice. The source here is a real job on a ``LocalHost`` (what an SSH host's helper serves, read by offset),
and, for the detached mirror, a real container on the local engine."""

# ruff: noqa: F811  (the fixtures imported from dockertest are named as the test arguments)
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from dockertest import BASE_IMAGE, LABEL, engine  # noqa: F401 (fixture)

from mltrain.hosts.local import LocalHost
from mltrain.hosts.logmirror import HostLogSource, LogMirror
from mltrain.tracking.joblog import clean_log

PREP = b"[mltrain] prepared on this machine\n"
LINES = 20_000


def _remote(tmp_path: Path, code: str) -> tuple[LocalHost, str, bytes]:
    """A job on a host (its own run folder), run to its end: the host, the run id, the log it wrote there."""
    host = LocalHost(tmp_path / "host" / "runs")
    host.launch("r1", [sys.executable, "-c", code], cwd=str(tmp_path), env={})
    assert host.wait("r1", 60).exit_code == 0
    return host, "r1", host.read_log("r1", 0, 1 << 30)


def _client(tmp_path: Path) -> tuple[Path, Path]:
    """The local run folder: mltrain's own lines in its log before the job's."""
    folder = tmp_path / "client"
    folder.mkdir()
    (folder / "output.log").write_bytes(PREP)
    LogMirror.begin(folder / "output.log", folder, "ssh-log")
    return folder / "output.log", folder


COUNT = f"for i in range({LINES}):\n    print(f'line {{i:05d}}')\n"


def test_copies_after_its_own_position_not_the_files_size(tmp_path: Path) -> None:
    host, run_id, remote = _remote(tmp_path, COUNT)
    log, folder = _client(tmp_path)
    mirror = LogMirror(log, folder, "ssh-log", HostLogSource(host, run_id, chunk=4096))
    data, offset = mirror.read(0)
    assert data == PREP + remote and offset == len(PREP + remote)
    assert json.loads((folder / "ssh-log.json").read_text())["position"] == {"offset": len(remote)}
    assert mirror.read(offset) == (b"", offset)  # nothing new: nothing copied again
    assert mirror.finish() and log.read_bytes() == PREP + remote


SLOW_COPIER = """
import sys, time
from pathlib import Path
from mltrain.hosts.local import LocalHost
from mltrain.hosts.logmirror import HostLogSource, LogMirror

class Slow(HostLogSource):
    def _chunks(self):
        for data in super()._chunks():
            yield data
            time.sleep(0.005)  # a slow link: the copier is killed half-way

runs, run_id, folder = sys.argv[1:]
source = Slow(LocalHost(runs), run_id, chunk=512)
LogMirror(Path(folder) / "output.log", Path(folder), "ssh-log", source).catch_up()
"""


def test_resumes_after_the_copier_is_killed(tmp_path: Path) -> None:
    host, run_id, remote = _remote(tmp_path, COUNT)
    log, folder = _client(tmp_path)
    copier = subprocess.Popen([sys.executable, "-c", SLOW_COPIER, str(host.runs), run_id, str(folder)])
    try:
        wait_for(lambda: log.stat().st_size > len(PREP) + 20_000, every=0.01)
        copier.send_signal(signal.SIGKILL)
    finally:
        copier.wait()
    assert len(PREP) < log.stat().st_size < len(PREP + remote)  # it died half-way
    mirror = LogMirror(log, folder, "ssh-log", HostLogSource(host, run_id))
    assert mirror.finish()
    assert log.read_bytes() == PREP + remote


def test_bytes_written_after_the_last_save_are_dropped_then_copied_again(tmp_path: Path) -> None:
    """What a copier killed between a write and its save leaves: the next copier cuts it off and copies those
    bytes again from the saved position (here stand-ins that must not survive)."""
    host, run_id, remote = _remote(tmp_path, COUNT)
    log, folder = _client(tmp_path)
    half = len(remote) // 2
    with open(log, "ab") as fh:
        fh.write(remote[:half])
    state = {"size": len(PREP) + half, "position": {"offset": half}, "done": False}
    (folder / "ssh-log.json").write_text(json.dumps(state))
    with open(log, "ab") as fh:
        fh.write(b"unsaved bytes of a copier that died\n")
    mirror = LogMirror(log, folder, "ssh-log", HostLogSource(host, run_id))
    assert mirror.finish()
    assert log.read_bytes() == PREP + remote


ANSI = "import sys\nfor i in range(50):\n    print(f'\\x1b[32mgreen {i}\\x1b[0m')\n"


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "never-finished"])
def test_a_log_rewritten_at_finalize_is_not_copied_into_again(tmp_path: Path, finished: bool) -> None:
    """Finalize strips terminal codes, which makes the file shorter; a reader that comes later (another process
    following the run) must neither append the host's log again nor cut the rewritten file."""
    host, run_id, remote = _remote(tmp_path, ANSI)
    log, folder = _client(tmp_path)
    mirror = LogMirror(log, folder, "ssh-log", HostLogSource(host, run_id))
    if finished:
        assert mirror.finish()
    else:
        mirror.read(0)  # copied, but nobody marked it complete (a copier that died before finishing)
    clean_log(log)
    cleaned = log.read_bytes()
    assert b"\x1b" not in cleaned and len(cleaned) < len(PREP + remote)
    late = LogMirror(log, folder, "ssh-log", HostLogSource(host, run_id))
    assert late.read(0) == (cleaned, len(cleaned))
    assert late.finish() and log.read_bytes() == cleaned
    assert cleaned.count(b"green 49\n") == 1


def test_one_copier_at_a_time(tmp_path: Path) -> None:
    """While another process holds the copier's lock, a reader copies nothing: it reads what the file has."""
    import fcntl

    host, run_id, remote = _remote(tmp_path, COUNT)
    log, folder = _client(tmp_path)
    fd = os.open(folder / "ssh-log.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        reader = LogMirror(log, folder, "ssh-log", HostLogSource(host, run_id))
        assert reader.read(0) == (PREP, len(PREP))
        assert not reader.finish(wait=0.2)  # the other copier does not finish: said, and the log stays open
    finally:
        os.close(fd)
    assert LogMirror(log, folder, "ssh-log", HostLogSource(host, run_id)).finish()
    assert log.read_bytes() == PREP + remote


# ------------------------------------------------------------ a container's log, followed twice
@pytest.mark.integration
@pytest.mark.parametrize("kill_mirror", [False, True], ids=["both-run", "mirror-killed"])
def test_a_follower_and_the_detached_mirror_never_copy_a_line_twice(engine: Any, tmp_path: Path,
                                                                    kill_mirror: bool) -> None:
    """The detached mirror process and a reader's follower thread run at once on one container's log; with the
    mirror killed half-way, the reader takes over from where the mirror last saved."""
    from mltrain.targets.docker import logs
    from mltrain.targets.docker.engine import Engine
    from mltrain.targets.docker.util import EngineConfig

    folder = tmp_path / "run"
    folder.mkdir()
    log = folder / "output.log"
    log.write_bytes(PREP)
    count = 300
    code = f"import time\nfor i in range({count}):\n    print(f'line {{i}}', flush=True)\n    time.sleep(0.01)\n"
    container = engine.containers.create(BASE_IMAGE, ["python3", "-c", code],
                                         labels={LABEL: uuid.uuid4().hex[:12]})
    try:
        logs.begin(log, folder)
        container.start()
        mirror_pid = logs.start_mirror(log, folder, container.id, EngineConfig().to_dict(), None)
        assert mirror_pid is not None
        api = Engine(EngineConfig())
        follower = logs.container_log(log, folder, container.id, api)
        offset, seen = 0, b""
        deadline = time.monotonic() + 120
        while container.reload() or container.status in logs.ACTIVE:
            assert time.monotonic() < deadline
            data, offset = follower.read(offset)
            seen += data
            if kill_mirror and b"line 100\n" in seen and not _gone(mirror_pid):
                os.kill(mirror_pid, signal.SIGKILL)
            time.sleep(0.02)
        assert follower.finish()
        seen += follower.read(offset)[0]
        wait_for(lambda: _gone(mirror_pid))
        api.close()
    finally:
        container.remove(force=True)
    expected = PREP + b"".join(f"line {i}\n".encode() for i in range(count))
    assert log.read_bytes() == expected
    assert seen == expected  # what a reader streamed, by offset, as it came


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
