"""Fifty runs submitted at once from separate processes into one workspace."""

from __future__ import annotations

import sqlite3
import subprocess

from conftest import MLTRAIN, Project


def test_fifty_parallel_submits(project: Project) -> None:
    project.write("tiny.py", "print('ok')\n")
    procs = [
        subprocess.Popen(
            [MLTRAIN, "script=tiny.py", f"+params.i={i}"],
            cwd=project.root,
            env=project.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(50)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for e in errors if e][:3]
    records = project.runs()
    assert len(records) == 50
    assert {r["status"] for r in records} == {"Completed"}
    assert len({r["id"] for r in records}) == 50
    with sqlite3.connect(project.workspace / "runs.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM transitions").fetchone()[0] == 50 * 5
    conn.close()
