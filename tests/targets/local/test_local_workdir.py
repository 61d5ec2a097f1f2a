"""compute=local: every run executes in its own working directory, made from the snapshot, removed at the end.

Each behaviour is checked with both ways of making it (``compute.workdir``): an overlay on the shared checkout
(where this machine allows it; skipped, saying why, where not) and a tree of links.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, errors_in_threads

from mltrain.errors import ConfigError, SnapshotError
from mltrain.snapshot.blobstore import BlobStore
from mltrain.snapshot.materialize import make_workdir, remove_tree
from mltrain.snapshot.take import take_snapshot
from mltrain.store.workspace import Workspace
from mltrain.targets.local import workdir
from mltrain.targets.local.overlay import FAILED, MOUNT_FAILED, command


@pytest.fixture(scope="module")
def overlay_style(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """How an overlay working directory works on this machine, probed for real: (style, '') or ('', why not)."""
    return workdir._probe(tmp_path_factory.mktemp("probe"))


@pytest.fixture(params=["overlay", "links"])
def mode(request: pytest.FixtureRequest, overlay_style: tuple[str, str]) -> str:
    if request.param == "overlay" and overlay_style[1]:
        pytest.skip(f"no overlay working directories here: {overlay_style[1]}")
    return str(request.param)

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


def test_a_file_written_to_cwd_stays_in_its_own_run(project: Project, mode: str) -> None:
    project.write("cwd.py", CWD_SCRIPT)
    project.write("pkg/helper.py", "VALUE = 1\n")
    first = project.run("script=cwd.py", f"compute.workdir={mode}", env={"MAKE": "1"}, check=True)
    assert "saw made.txt False" in first.stdout
    assert "helper VALUE = 1" in first.stdout
    second = project.run("script=cwd.py", f"compute.workdir={mode}", check=True)
    assert "saw made.txt False" in second.stdout  # the first run's file did not leak into the second

    runs = project.runs()
    assert [r["status"] for r in runs] == ["Completed", "Completed"]
    assert runs[0]["snapshot_id"] == runs[1]["snapshot_id"]  # the same snapshot, and still separate
    cwds = {Path(result.stdout.split("cwd ", 1)[1].splitlines()[0]) for result in (first, second)}
    assert cwds == {_run_dir(project, r["id"]).resolve() / "wd" for r in runs}
    assert not any(cwd.exists() for cwd in cwds)  # removed when each run was finalized
    assert not any((cwd.parent / "wd.work").exists() for cwd in cwds)
    kept = [(_run_dir(project, r["id"]) / "outputs" / "kept.txt") for r in runs]
    assert [p.read_text() for p in kept if p.exists()] == ["kept"]  # outputs are collected, cwd files are not
    checkout = project.workspace / "checkouts" / str(runs[0]["snapshot_id"])
    assert sorted(os.listdir(checkout)) == ["cwd.py", "pkg", "train.py"]  # the shared checkout is untouched


SNAPSHOT_WRITER = """
import os, sys
print("mount", os.path.ismount(os.getcwd()))
print("saw", sorted(os.listdir("pkg")), open("pkg/helper.py").read().strip())
if os.environ.get("WRITE"):
    with open("pkg/new.txt", "w") as fh:   # a new file in a folder of the snapshot
        fh.write("new")
if os.environ.get("CHANGE"):
    try:
        with open("pkg/helper.py", "a") as fh:   # a snapshot file: refused, or (root) changed in this run only
            fh.write("CHANGED = 1\\n")
        print("wrote helper.py", open("pkg/helper.py").read().split())
    except PermissionError:
        print("helper.py refused")
if os.environ.get("WRITE"):
    os.remove("pkg/other.py")   # deleting is the run's own business
"""


def test_writes_into_snapshot_folders_stay_in_the_run(project: Project, mode: str) -> None:
    project.write("writer.py", SNAPSHOT_WRITER)
    project.write("pkg/helper.py", "VALUE = 1\n")
    project.write("pkg/other.py", "OTHER = 1\n")
    root = os.geteuid() == 0
    # root writes through a hardlink into the stored blob itself (an owner could, after a chmod):
    # the README's caveat for links
    change = {} if mode == "links" and root else {"CHANGE": "1"}
    first = project.run("script=writer.py", f"compute.workdir={mode}", env={"WRITE": "1", **change}, check=True)
    assert f"mount {mode == 'overlay'}" in first.stdout
    if change:  # overlay: copied up into the run's own layer for root; refused (mode 0o444) for anyone else
        assert ("wrote helper.py ['VALUE', '=', '1', 'CHANGED', '=', '1']" if root else "helper.py refused") \
            in first.stdout
    second = project.run("script=writer.py", f"compute.workdir={mode}", check=True)
    assert "saw ['helper.py', 'other.py'] VALUE = 1" in second.stdout
    checkout = project.workspace / "checkouts" / str(project.runs()[0]["snapshot_id"])
    assert sorted(os.listdir(checkout / "pkg")) == ["helper.py", "other.py"]
    assert (checkout / "pkg" / "helper.py").read_text() == "VALUE = 1\n"


def test_detached_run_keeps_its_workdir_until_finalized(project: Project, mode: str) -> None:
    project.write("slow.py", "import time, os\nopen('x', 'w').close()\ntime.sleep(float(os.environ['NAP']))\n")
    run_id = project.run("--detach", "script=slow.py", f"compute.workdir={mode}", env={"NAP": "2"},
                         check=True).stdout.strip()
    workdir = _run_dir(project, run_id) / "wd"
    for _ in range(100):  # what the run wrote shows in wd/ from outside, whichever way wd/ was made
        if (workdir / "x").exists():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    assert (workdir / "x").exists()
    assert (workdir / "slow.py").exists() == (mode == "links")  # an overlay's lower layer shows only inside
    project.run("runs", "attach", run_id, check=True)
    assert project.runs()[0]["status"] == "Completed"
    assert not workdir.exists() and not (workdir.parent / "wd.work").exists()


def test_workdir_mode_is_checked(project: Project) -> None:
    result = project.run("script=train.py", "compute.workdir=tmpfs")
    assert result.returncode != 0
    assert "compute.workdir='tmpfs': choose one of auto, overlay, links" in result.stderr
    assert "Traceback" not in result.stderr


def _staged(tmp_path: Path) -> tuple[Workspace, Path, BlobStore]:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("A = 1\n")
    workspace = Workspace(tmp_path / "ws").ensure()
    store = BlobStore(workspace.blobs)
    manifest = take_snapshot(src, store).manifest
    from mltrain.snapshot.take import materialize

    return workspace, materialize(manifest, store, workspace.checkouts), store


def test_auto_falls_back_to_links_where_no_overlay_can_be_mounted(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that refuses the namespaces cannot be had here on demand: the probe's answer is simulated."""
    workspace, checkout, store = _staged(tmp_path)
    monkeypatch.setattr(workdir, "_probed", {})
    probes: list[Path] = []

    def refused(runs: Path) -> tuple[str, str]:
        probes.append(runs)
        return "", "unshare: Operation not permitted"

    monkeypatch.setattr(workdir, "_probe", refused)
    paths = workspace.run_paths("r1")
    paths.dir.mkdir(parents=True)
    made = workdir.make("auto", workspace, paths, checkout, manifest=lambda: store.load_manifest(checkout.name),
                        store=lambda: store)
    assert made.prefix == () and (Path(made.cwd) / "pkg" / "mod.py").read_text() == "A = 1\n"
    with pytest.raises(ConfigError, match=r"compute.workdir=overlay: unshare: Operation not permitted; use"):
        workdir.make("overlay", workspace, workspace.run_paths("r2"), checkout,
                     manifest=lambda: store.load_manifest(checkout.name), store=lambda: store)
    monkeypatch.setattr(workdir, "_probed", {})  # a new process: the answer kept in the workspace is used
    refusal = "unshare: Operation not permitted"
    assert workdir.overlay_unavailable(workspace) == refusal
    assert len(probes) == 1
    assert json.loads((workspace.cache / "workdir.json").read_text())["unavailable"] == refusal
    workdir.remove(paths)
    assert not paths.workdir.exists()


# /bin/sh, not this Python: nobody may not be able to reach this interpreter (under /root, say)
UNPRIVILEGED = 'id -u; echo new > sub/new.txt; if echo x >> sub/ro.txt; then echo ro writable; else echo ro refused; fi'


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A folder the user ``nobody`` owns and can reach (pytest's own temp folders are root's, mode 0o700)."""
    folder = Path(tempfile.mkdtemp(prefix="mltrain-nobody-"))
    folder.chmod(0o755)
    os.chown(folder, NOBODY, NOBODY)
    yield folder
    remove_tree(folder)


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become another user")
def test_overlay_as_an_unprivileged_user(nobody_dir: Path) -> None:
    """What a user without privileges gets: the overlay in a user namespace of their own, as themselves."""
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    for name in ("checkout/sub", "run/wd", "run/wd.work"):
        (nobody_dir / name).mkdir(parents=True)
    (nobody_dir / "checkout" / "sub" / "ro.txt").write_text("snapshot")
    (nobody_dir / "checkout" / "sub" / "ro.txt").chmod(0o444)
    for folder, dirs, files in os.walk(nobody_dir):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chown(name, NOBODY, NOBODY)
    wd = nobody_dir / "run" / "wd"
    overlay = command("user", "../../checkout", ".", "../wd.work", str(wd), ["/bin/sh", "-c", UNPRIVILEGED])
    overlay[overlay.index("--map-user=0")] = f"--map-user={NOBODY}"  # built by root for nobody
    overlay[overlay.index("--map-group=0")] = f"--map-group={NOBODY}"
    done = subprocess.run([*as_nobody, *overlay], cwd=wd, capture_output=True, text=True)
    if done.returncode == FAILED or done.stderr.startswith("unshare: "):
        pytest.skip(f"no overlay for an unprivileged user here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(NOBODY), "ro", "refused"]  # the same user, and no capabilities
    assert (wd / "sub" / "new.txt").read_text() == "new\n"  # the run's own layer
    assert os.listdir(nobody_dir / "checkout" / "sub") == ["ro.txt"]
    assert (nobody_dir / "checkout" / "sub" / "ro.txt").read_text() == "snapshot"


def test_a_failed_mount_is_one_line_in_the_log_and_runs_nothing(tmp_path: Path,
                                                               overlay_style: tuple[str, str]) -> None:
    if overlay_style[1]:
        pytest.skip(f"no overlay working directories here: {overlay_style[1]}")
    (tmp_path / "wd").mkdir()
    done = subprocess.run(command(overlay_style[0], "../missing", ".", "../work", str(tmp_path / "wd"),
                                  ["touch", str(tmp_path / "ran")]),
                          cwd=tmp_path / "wd", capture_output=True, text=True)
    assert done.returncode == FAILED
    assert done.stderr.startswith("mltrain: cannot mount the run's working directory (mount: ")
    assert "compute.workdir=links" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "ran").exists()


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


def test_a_run_whose_mount_failed_makes_the_next_run_probe_again(tmp_path: Path) -> None:
    """The system may change after the probe (a sysctl, a container restarted without a capability)."""
    workspace = Workspace(tmp_path / "ws").ensure()
    kept = workspace.cache / workdir.PROBE_FILE
    kept.parent.mkdir(parents=True, exist_ok=True)
    for run_id, first_line in (("ok", "ran\n"), ("failed", f"{MOUNT_FAILED} (mount: Operation not permitted)\n"),
                               ("refused", "unshare: unshare failed: Operation not permitted\n")):
        paths = workspace.run_paths(run_id)
        for folder in (paths.workdir, paths.workdir_scratch):
            folder.mkdir(parents=True)
        paths.log.write_text(first_line)
        kept.write_text("{}")
        workdir.remove(paths)
        assert not paths.workdir.exists() and not paths.workdir_scratch.exists()
        assert kept.exists() == (run_id == "ok")  # the kernel refusing the namespaces counts too


def test_trials_probing_a_new_workspace_at_once_all_get_the_answer(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials start on threads of one process: each may probe and write ``cache/workdir.json`` at the same moment.

    The cache is written with :func:`mltrain.hosts.agent.write_atomic`, hammered here from several threads so
    that replaces overlap (a temp name shared by a process's threads made one of them fail, seen in CI).
    """
    import threading

    from mltrain.hosts.agent import write_atomic

    monkeypatch.setattr(workdir, "_probed", {})
    workspace = Workspace(tmp_path / "ws")
    answers: list[tuple[str, str]] = []
    start = threading.Barrier(6)

    def trial(n: int) -> None:
        start.wait()
        answers.append(workdir._cached_probe(workspace))
        for _ in range(200):
            write_atomic(str(workspace.cache / "hammer.json"), json.dumps({"writer": n}).encode())

    assert errors_in_threads(trial, 6) == []  # what a trial thread would have died of
    assert len(set(answers)) == 1 and len(answers) == 6
    assert json.loads((workspace.cache / "hammer.json").read_text())["writer"] in range(6)
    assert json.loads((workspace.cache / workdir.PROBE_FILE).read_text())["unavailable"] == answers[0][1]
    assert sorted(p.name for p in workspace.cache.iterdir()) == ["hammer.json", workdir.PROBE_FILE]


def test_a_probe_killed_before_its_cleanup_is_removed_by_the_next(tmp_path: Path) -> None:
    """Its folder is left in runs/: the next probe removes it once older than any live probe, never a young one
    (another process's, probing now) nor a link."""
    runs = tmp_path / "runs"
    stale, live = runs / f"{workdir.PROBE_PREFIX}dead", runs / f"{workdir.PROBE_PREFIX}live"
    (stale / "upper").mkdir(parents=True)
    (live / "upper").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (runs / f"{workdir.PROBE_PREFIX}link").symlink_to(outside)
    old = os.stat(stale).st_mtime - 10 * workdir.PROBE_TIMEOUT
    os.utime(stale, (old, old))
    os.utime(outside, (old, old))
    workdir._probe(runs)
    assert sorted(p.name for p in runs.iterdir()) == [f"{workdir.PROBE_PREFIX}link", f"{workdir.PROBE_PREFIX}live"]
    assert outside.is_dir()


MODE_FLIPPER = """
import os
os.chmod("pkg/helper.py", 0o200)   # a snapshot file, made to look like a blob still being written
print("flipped")
"""


def test_a_job_that_makes_its_linked_file_look_partial_cannot_keep_it_from_the_store(project: Project) -> None:
    """Hostile job, links mode: its snapshot files are hardlinks to the stored blobs, so a chmod to 0o200 reaches
    the blob and makes the store count it as absent (an unfinished blob). The next snapshot that reads this content
    stores it whole and readable again, by rename (the job's inode is no longer the blob), and the run goes through."""
    project.write("flip.py", MODE_FLIPPER)
    project.write("pkg/helper.py", "VALUE = 1\n")
    assert "flipped" in project.run("script=flip.py", "compute.workdir=links", check=True).stdout
    store = BlobStore(project.workspace / "blobs")
    digest = next(e.digest for e in store.load_manifest(str(project.runs()[0]["snapshot_id"])).entries
                  if e.path == "pkg/helper.py")
    assert not store.has(digest)  # the job reached the blob: it looks unfinished
    project.write("pkg/copy.py", "VALUE = 1\n")  # the same content, read anew by the next snapshot
    project.write("reader.py", "print('read', open('pkg/copy.py').read().strip())\n")
    second = project.run("script=reader.py", "compute.workdir=links", check=True)
    assert "read VALUE = 1" in second.stdout
    assert store.has(digest) and store.path(digest).read_bytes() == b"VALUE = 1\n"
    assert stat.S_IMODE(store.path(digest).stat().st_mode) == 0o444
