"""``mltrain runs diff``: what two runs ran differently, without the keys that only say where each was made from."""

from __future__ import annotations

from pathlib import Path

from conftest import Project


def _newest(project: Project) -> str:
    return str(project.runs()[0]["id"])


def test_where_a_run_was_made_from_is_not_a_difference(project: Project, tmp_path: Path) -> None:
    project.run("script=train.py", "params.lr=0.1", check=True)
    first = _newest(project)
    # The same code and params, from the same folder named another way, with the workspace named
    # explicitly, as a trial of a sweep: what it ran is the same.
    project.run("-m", "script=train.py", "params.lr=0.1", f"source_dir={project.root}",
                f"workspace.dir={project.workspace}", "sweep.max_failures=3", "snapshot.max_files=1000", check=True)
    second = _newest(project)
    diff = project.run("runs", "diff", first, second, check=True).stdout
    config = diff.split("config:\n")[1].split("files:")[0]
    assert config.splitlines()[0] == "  (same)", diff
    assert ("(not compared, as they say where a run was made from, not what it ran: snapshot.max_files, "
            "source_dir, sweep.max_failures, workspace.dir)") in config
    assert "(same snapshot)" in diff
    # a real difference is still reported, and the noise still is not
    project.run("script=train.py", "params.lr=0.2", f"workspace.dir={project.workspace}", check=True)
    third = _newest(project)
    diff = project.run("runs", "diff", first, third, check=True).stdout
    assert "params.lr: 0.1 -> 0.2" in diff
    assert "workspace.dir:" not in diff and "not what it ran: workspace.dir)" in diff


def test_a_snapshot_stored_as_edits_is_the_snapshot_it_was(project: Project) -> None:
    """After a one-file edit the second run's manifest is kept as that edit (``BlobStore.put_manifest``); through
    the CLI it is the whole snapshot all the same: ``runs diff`` sees the one change, ``runs rerun`` runs it."""
    import os
    import time

    from mltrain.snapshot.blobstore import EDITS_MAGIC

    for i in range(20):
        project.write(f"pkg/m{i}.py", f"X = {i}\n")
    project.write("say.py", "print('version one')\n")
    past = time.time() - 60  # out of the stat cache's racy window, so the next snapshot splices the edit
    for path in [project.root / "say.py", *(project.root / "pkg").iterdir()]:
        os.utime(path, (past, past))
    project.run("script=say.py", check=True)
    first = _newest(project)
    project.write("say.py", "print('version two')\n")
    os.utime(project.root / "say.py", (past + 10, past + 10))
    project.run("script=say.py", check=True)
    second = _newest(project)
    snapshot = str(project.runs()[0]["snapshot_id"])
    assert (project.workspace / "blobs" / "manifests" / snapshot).read_bytes().startswith(EDITS_MAGIC)
    diff = project.run("runs", "diff", first, second, check=True).stdout
    assert diff.split("files:\n")[1].splitlines() == ["  M say.py"]
    project.run("runs", "rerun", second, check=True)
    assert "version two" in project.run("runs", "logs", _newest(project), check=True).stdout
