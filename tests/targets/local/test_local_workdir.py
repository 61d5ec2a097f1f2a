"""compute=local: every run executes in its own working directory, made from the snapshot, removed at the end."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import Project

from mltrain.errors import SnapshotError
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.materialize import make_workdir, remove_tree
from mltrain.snapshot.take import take_snapshot

CWD_SCRIPT = """
import os, sys
here = os.getcwd()
print("cwd", here)
print("saw made.txt", os.path.exists("made.txt"))
if os.environ.get("MAKE"):
    with open("made.txt", "w") as fh:   # next to the script, the way torch.save("model.pt") does
        fh.write("first run")
    os.makedirs("lightning_logs/version_0", exist_ok=True)
    with open("lightning_logs/version_0/events", "w") as fh:
        fh.write("log")
    with open(os.path.join(os.environ["MLTRAIN_OUTPUT_DIR"], "kept.txt"), "w") as fh:
        fh.write("kept")
print("helper", open("pkg/helper.py").read().strip())
sys.exit(0)
"""


def _run_dir(project: Project, run_id: object) -> Path:
    return project.workspace / "runs" / str(run_id)


def test_a_file_written_to_cwd_stays_in_its_own_run(project: Project) -> None:
    project.write("cwd.py", CWD_SCRIPT)
    project.write("pkg/helper.py", "VALUE = 1\n")
    first = project.run("script=cwd.py", env={"MAKE": "1"}, check=True)
    assert "saw made.txt False" in first.stdout
    assert "helper VALUE = 1" in first.stdout
    second = project.run("script=cwd.py", check=True)
    assert "saw made.txt False" in second.stdout  # the first run's file did not leak into the second

    runs = project.runs()
    assert [r["status"] for r in runs] == ["Completed", "Completed"]
    assert runs[0]["snapshot_id"] == runs[1]["snapshot_id"]  # the same snapshot, and still separate
    cwds = {Path(result.stdout.split("cwd ", 1)[1].splitlines()[0]) for result in (first, second)}
    assert cwds == {_run_dir(project, r["id"]).resolve() / "wd" for r in runs}
    assert not any(cwd.exists() for cwd in cwds)  # removed when each run was finalized
    kept = [(_run_dir(project, r["id"]) / "outputs" / "kept.txt") for r in runs]
    assert [p.read_text() for p in kept if p.exists()] == ["kept"]  # outputs are collected, cwd files are not
    checkout = project.workspace / "checkouts" / str(runs[0]["snapshot_id"])
    assert sorted(os.listdir(checkout)) == ["cwd.py", "pkg", "train.py"]  # the shared checkout is untouched


def test_detached_run_keeps_its_workdir_until_finalized(project: Project) -> None:
    project.write("slow.py", "import time, os\nopen('x', 'w').close()\ntime.sleep(float(os.environ['NAP']))\n")
    run_id = project.run("--detach", "script=slow.py", env={"NAP": "1"}, check=True).stdout.strip()
    workdir = _run_dir(project, run_id) / "wd"
    assert (workdir / "slow.py").exists()
    project.run("runs", "attach", run_id, check=True)
    assert project.runs()[0]["status"] == "Completed"
    assert not workdir.exists()


def test_workdir_shares_blobs_copies_executables_and_keeps_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("A = 1\n")
    (src / "pkg" / "__init__.py").write_text("")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "latest").symlink_to("pkg/mod.py")
    store = BlobStore(tmp_path / "blobs")
    manifest = take_snapshot(src, store).manifest
    one = make_workdir(manifest, store, tmp_path / "one")
    two = make_workdir(manifest, store, tmp_path / "two")
    digest = {e.path: e.digest for e in manifest.entries}
    blob = store.path(digest["pkg/mod.py"])
    assert os.stat(one / "pkg" / "mod.py").st_ino == os.stat(two / "pkg" / "mod.py").st_ino == blob.stat().st_ino
    assert stat.S_IMODE(os.stat(one / "run.sh").st_mode) == 0o755
    assert os.stat(one / "run.sh").st_ino != os.stat(two / "run.sh").st_ino  # each run may change its own copy
    assert os.readlink(one / "latest") == "pkg/mod.py"
    (one / "new.txt").write_text("mine")
    assert not (two / "new.txt").exists()
    (one / "pkg").chmod(0o500)  # a script that locks a folder does not stop the cleanup
    remove_tree(one)
    assert not one.exists() and blob.read_text() == "A = 1\n"
    remove_tree(one)  # already gone: fine


def test_workdir_with_a_missing_blob_fails_cleanly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("a\n")
    store = BlobStore(tmp_path / "blobs")
    manifest = take_snapshot(src, store).manifest
    blob = store.path(manifest.entries[0].digest)
    blob.chmod(0o644)
    blob.unlink()
    with pytest.raises(SnapshotError, match="incomplete"):
        make_workdir(manifest, store, tmp_path / "wd")
    assert not (tmp_path / "wd").exists()


def test_remove_tree_opens_up_a_folder_it_could_not_enter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A script may chmod 000 a folder of its working dir; as root (CI) that cannot block, so the refusal
    is simulated once for that folder."""
    locked = tmp_path / "wd" / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "f.txt").write_text("x")
    real_open = os.open
    refused: list[str] = []

    def open_refusing_once(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if os.fspath(path).endswith("locked") and not refused:
            refused.append(os.fspath(path))
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_refusing_once)
    remove_tree(tmp_path / "wd")
    assert refused and not (tmp_path / "wd").exists()
