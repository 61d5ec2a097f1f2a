"""A run being prepared: never stuck when its client dies, its leftovers stopped, followed by `runs attach`.

The environment build is kept busy by a local package whose in-tree build backend waits (in pip's build hook,
a grandchild of the client) until the test releases it: real pip, no index, no timing guesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from buildtest import SlowBuild
from conftest import MLTRAIN, Project, wait_for

from mltrain.hosts.client import CLIENT_GRACE, GROUPS_SUPPORTED


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z")


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def _record(project: Project) -> dict[str, Any]:
    (record,) = project.runs()
    return record


def _past_grace(record: dict[str, Any]) -> None:
    """Precondition, not a timing assertion: the reader only judges runs older than the grace."""
    time.sleep(max(0.0, float(record["created"]) + CLIENT_GRACE + 0.1 - time.time()))


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


@pytest.fixture
def slow(tmp_path: Path) -> SlowBuild:
    if not GROUPS_SUPPORTED:
        pytest.skip("preparation process groups need Python 3.11 (Popen process_group)")
    return SlowBuild(tmp_path / "slowpkg")


def test_client_killed_mid_build_fails_the_run_and_stops_its_pip(project: Project, slow: SlowBuild) -> None:
    client = project.popen("--detach", *slow.args())
    try:
        hook_pid, hook_pgid = slow.hook()
        record = _record(project)
        assert record["status"] == "Preparing"
        group = record["client"]["group"]
        assert record["client"]["pid"] == client.pid
        assert hook_pgid == group["pid"]  # pip's build hook runs in the group recorded on the row
        assert set(_group_members(hook_pgid)) >= {hook_pid, group["pid"]}
        _past_grace(record)
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=30)
        shown = json.loads(project.run("runs", "show", str(record["id"]), "--json", check=True).stdout)
        assert shown["status"] == "Failed"
        assert shown["reason"] == "client exited before the job started"
        assert [t["status"] for t in shown["transitions"]] == ["Queued", "Preparing", "Failed"]
        wait_for(lambda: not _group_members(hook_pgid), timeout=10)
        assert not _alive(hook_pid)
        listed = project.run("runs", "list", check=True).stdout
        assert "Failed" in listed and "Preparing" not in listed
    finally:
        slow.release()
        _end(client)


def test_a_reader_stops_the_group_when_its_keeper_could_not(project: Project, slow: SlowBuild) -> None:
    """The keeper kills the group when the client dies; if it cannot, the next reader does.

    Here the keeper cannot because another process still holds its pipe's write end (as a fork of the
    client would): the test opens the keeper's stdin pipe for writing through /proc.
    """
    client = project.popen("--detach", *slow.args())
    holder = None
    try:
        hook_pid, hook_pgid = slow.hook()
        record = _record(project)
        keeper = int(record["client"]["group"]["pid"])
        holder = open(f"/proc/{keeper}/fd/0", "wb")  # noqa: SIM115 (closed in finally)
        _past_grace(record)
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=30)
        assert _alive(hook_pid) and _alive(keeper)  # nobody has acted yet
        assert _record(project)["status"] == "Failed"  # `runs list` judged the run ...
        wait_for(lambda: not _group_members(hook_pgid), timeout=10)  # ... and stopped the group
    finally:
        if holder is not None:
            holder.close()
        slow.release()
        _end(client)


def test_a_live_preparing_run_is_left_alone_and_attach_streams_it(project: Project, slow: SlowBuild,
                                                                  tmp_path: Path) -> None:
    client = project.popen("--detach", *slow.args())
    attach_out = tmp_path / "attach.out"
    attach = None
    try:
        slow.hook()
        record = _record(project)
        _past_grace(record)
        assert _record(project)["status"] == "Preparing"  # its client is alive: not judged
        with open(attach_out, "w") as out:
            attach = subprocess.Popen([MLTRAIN, "runs", "attach", str(record["id"])], cwd=project.root,
                                      env=project.env, stdout=out, stderr=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL)
        wait_for(lambda: "building venv" in attach_out.read_text())  # following while it is prepared
        assert attach.poll() is None
        slow.release()
        _, err = attach.communicate(timeout=120)
        assert attach.returncode == 0, err
        streamed = attach_out.read_text()
        assert streamed.index("building venv") < streamed.index("argv ")  # preparation, then the job's output
        assert "Completed" in err
        client.communicate(timeout=60)
        assert client.returncode == 0
        assert _record(project)["status"] == "Completed"
    finally:
        slow.release()
        _end(client)
        if attach is not None and attach.poll() is None:
            attach.kill()
            attach.communicate()


def test_cancel_while_preparing_stops_the_build_and_launches_nothing(project: Project, slow: SlowBuild) -> None:
    project.write("mark.py", "open('launched', 'w').write('yes')\n")
    client = project.popen(*slow.args("mark.py"))
    try:
        hook_pid, hook_pgid = slow.hook()
        run_id = str(_record(project)["id"])
        result = project.run("runs", "cancel", run_id, check=True)
        assert "Canceled" in result.stdout
        wait_for(lambda: not _group_members(hook_pgid), timeout=10)  # the build was stopped, not waited for
        assert not _alive(hook_pid)
        _, err = client.communicate(timeout=60)
        assert client.returncode == 130, err
        assert "Canceled" in err and "Traceback" not in err
        record = _record(project)
        assert record["status"] == "Canceled" and record["handle"] is None
        assert not (project.root / "launched").exists()
    finally:
        slow.release()
        _end(client)


def test_preparation_commands_outside_a_run_are_not_grouped(tmp_path: Path) -> None:
    """The group is per preparation (a ContextVar): a command started elsewhere stays in the caller's group."""
    from mltrain.hosts.client import PrepGroup
    from mltrain.hosts.runner import LOCAL

    script = textwrap.dedent("""\
        import os, sys
        print(os.getpgid(0))
    """)
    (tmp_path / "pg.py").write_text(script)
    seen: dict[str, Any] = {}
    with PrepGroup(seen.update):
        inside = int(LOCAL.run([sys.executable, str(tmp_path / "pg.py")]).stdout)
    outside = int(LOCAL.run([sys.executable, str(tmp_path / "pg.py")]).stdout)
    assert inside == seen["pid"] != os.getpgid(0)
    assert outside == os.getpgid(0)
    wait_for(lambda: not _alive(seen["pid"]), timeout=10)  # the keeper ended with the block
