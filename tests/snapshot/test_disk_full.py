"""A workspace on a disk that fills while the snapshot is written: a real (small) tmpfs, not a mock."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project

from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.manifest import hash_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB file system of its own, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def test_a_full_disk_fails_the_run_cleanly_and_keeps_the_store(project: Project, small_disk: Path) -> None:
    env = {"MLTRAIN_HOME": str(small_disk)}
    project.run("script=train.py", env=env, check=True)  # a first run fits: the history has a record to keep
    (project.root / "data").mkdir()
    (project.root / "data" / "big.bin").write_bytes(os.urandom(3 << 20))  # larger than the whole disk
    (project.root / "data" / "small.txt").write_text("fits\n")

    full = project.run("script=train.py", env=env)
    assert full.returncode != 0
    assert "Traceback" not in full.stderr + full.stdout
    assert "No space left on device" in full.stderr, full.stderr

    runs = json.loads(project.run("runs", "list", "--json", env=env, check=True).stdout)
    assert [r["status"] for r in runs] == ["Failed", "Completed"]  # newest first; nothing lost
    assert "No space left on device" in runs[0]["reason"]
    store = BlobStore(small_disk / "blobs")
    assert os.listdir(store.root / "tmp") == []  # the partial blob is gone
    blobs = [d + n for d in os.listdir(store.root) if len(d) == 2 for n in os.listdir(store.root / d)]
    assert blobs  # the first run's files (and the small one) are there
    for digest in blobs:
        assert hash_bytes(store.path(digest).read_bytes()) == digest  # whatever is there is whole

    (project.root / "data" / "big.bin").unlink()  # room again: the next run goes through
    project.run("script=train.py", env=env, check=True)
