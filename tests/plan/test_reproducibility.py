"""Reproducible runs through the CLI: git state, outputs, rerun from the stored snapshot, diff, gc."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import Project, assert_one_line_error

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]


def _git(project: Project, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=project.root, check=True, capture_output=True, text=True).stdout


def _show(project: Project, run_id: str) -> dict[str, object]:
    return json.loads(project.run("runs", "show", run_id, "--json", check=True).stdout)  # type: ignore[no-any-return]


def test_git_state_is_recorded(project: Project) -> None:
    _git(project, "init", "-q")
    _git(project, "add", "train.py")
    _git(project, "commit", "-qm", "first")
    project.write("notes.txt", "uncommitted\n")
    project.run("script=train.py", check=True)
    run_id = str(project.runs()[0]["id"])
    git = _show(project, run_id)["git"]
    assert isinstance(git, dict)
    assert git["is_repo"] is True and git["dirty"] is True and git["branch"] == "main"
    assert git["commit"] == _git(project, "rev-parse", "HEAD").strip()
    patch = (project.workspace / "runs" / run_id / "git.patch").read_text()
    assert "notes.txt" in patch and "uncommitted" in patch
    shown = project.run("runs", "show", run_id, check=True).stdout
    assert "dirty" in shown


def test_not_a_git_repo_is_recorded_not_an_error(project: Project) -> None:
    project.run("script=train.py", check=True)
    git = _show(project, str(project.runs()[0]["id"]))["git"]
    assert isinstance(git, dict)
    assert (git["is_repo"], git["commit"], git["dirty"], git["has_patch"]) == (False, None, False, False)


def test_outputs_listed_and_downloaded(project: Project, tmp_path: Path) -> None:
    project.run("script=train.py", check=True)
    run_id = str(project.runs()[0]["id"])
    listing = project.run("runs", "outputs", run_id, check=True).stdout
    assert "result.txt" in listing
    dest = tmp_path / "dl"
    project.run("runs", "outputs", run_id, "--download", str(dest), check=True)
    assert (dest / "result.txt").read_text() == "done"


def test_outputs_download_to_an_unwritable_place_is_one_line(project: Project) -> None:
    project.run("script=train.py", check=True)
    run_id = str(project.runs()[0]["id"])
    nowhere = project.run("runs", "outputs", run_id, "--download", "/proc/mltrain-nowhere")
    assert_one_line_error(nowhere, "cannot copy the outputs of run")


HOSTILE_OUTPUTS = """
import os
out = os.environ["MLTRAIN_OUTPUT_DIR"]
os.symlink("/etc/passwd", os.path.join(out, "passwd"))
os.mkfifo(os.path.join(out, "pipe"))
os.makedirs(os.path.join(out, "sub", "deeper"))
os.symlink("../../..", os.path.join(out, "sub", "deeper", "up"))  # the run folder: outside
os.symlink("..", os.path.join(out, "sub", "top"))  # the outputs folder: inside
os.symlink("sub/top/sub/top/..", os.path.join(out, "chain"))  # reads as inside, leads to the run folder
open(os.path.join(out, "good.txt"), "w").write("good")
os.symlink("good.txt", os.path.join(out, "alias.txt"))
os.chmod(os.path.join(out, "sub", "deeper"), 0o555)  # the job took write access away from a folder
"""


def test_local_outputs_keep_only_files_folders_and_links_inside(project: Project, tmp_path: Path) -> None:
    project.write("hostile.py", HOSTILE_OUTPUTS)
    project.run("script=hostile.py", check=True)
    run_id = str(project.runs()[0]["id"])
    outputs = project.workspace / "runs" / run_id / "outputs"
    found = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*"))
    assert found == ["alias.txt", "good.txt", "sub", "sub/deeper", "sub/top"]
    log = (project.workspace / "runs" / run_id / "output.log").read_text()
    notes = [line for line in log.splitlines() if line.startswith("[mltrain] outputs: ")]
    assert len(notes) == 4, log
    for name in ("passwd -> /etc/passwd", "pipe: a fifo", "sub/deeper/up -> ../../..", "chain -> sub/top/sub/top/.."):
        assert any(name in note for note in notes), (name, notes)
    listing = project.run("runs", "outputs", run_id, check=True).stdout
    assert "good.txt" in listing and "alias.txt -> good.txt" in listing and "passwd" not in listing
    dest = tmp_path / "copy"
    project.run("runs", "outputs", run_id, "--download", str(dest), check=True)
    assert (dest / "good.txt").read_text() == "good" and (dest / "alias.txt").read_text() == "good"
    assert (dest / "sub" / "top").readlink() == Path("..")


def test_outputs_download_refuses_a_link_out_and_leaves_nothing(project: Project, tmp_path: Path) -> None:
    """A run folder from before this check, or changed since: the copy is refused whole, DEST never appears."""
    project.run("script=train.py", check=True)
    run_id = str(project.runs()[0]["id"])
    outputs = project.workspace / "runs" / run_id / "outputs"
    (outputs / "a").mkdir()
    (outputs / "a" / "one.txt").write_text("one")
    (outputs / "z").mkdir()
    (outputs / "z" / "evil").symlink_to("../../../../../../etc")  # after the good files: a copy is under way
    dest = tmp_path / "dl"
    refused = project.run("runs", "outputs", run_id, "--download", str(dest))
    assert_one_line_error(refused, f"not copying the outputs of run {run_id}", "z/evil is a link leading outside",
                          "nothing was copied")
    assert not dest.exists() and not list(tmp_path.glob(".dl*"))
    (outputs / "z" / "evil").unlink()
    dest.mkdir()  # an empty folder is taken; a full one is refused, never merged into
    project.run("runs", "outputs", run_id, "--download", str(dest), check=True)
    assert (dest / "a" / "one.txt").read_text() == "one" and (dest / "result.txt").read_text() == "done"
    again = project.run("runs", "outputs", run_id, "--download", str(dest))
    assert_one_line_error(again, "already exists and is not an empty folder", "choose a new folder")


def test_rerun_uses_the_stored_snapshot_and_config(project: Project) -> None:
    project.write("say.py", "import sys\nprint('version', 'one', sys.argv[1:])\n")
    project.run("script=say.py", "params.lr=0.1", check=True)
    first = str(project.runs()[0]["id"])
    project.write("say.py", "print('version two')\n")
    rerun = project.run("runs", "rerun", first, check=True)
    assert "version one ['--lr', '0.1']" in rerun.stdout
    newest = project.runs()[0]
    assert newest["parent_id"] == first
    assert newest["status"] == "Completed"
    changed = project.run("runs", "rerun", first, "params.lr=0.5", check=True)
    assert "version one ['--lr', '0.5']" in changed.stdout
    latest = str(project.runs()[0]["id"])
    diff = project.run("runs", "diff", first, latest, check=True).stdout
    assert "params.lr: 0.1 -> 0.5" in diff
    fresh = project.run("script=say.py", check=True)
    assert "version two" in fresh.stdout
    newest_id = str(project.runs()[0]["id"])
    files = project.run("runs", "diff", first, newest_id, check=True).stdout
    assert "M say.py" in files


def test_rerun_rejects_bad_overrides(project: Project) -> None:
    project.run("script=train.py", check=True)
    run_id = str(project.runs()[0]["id"])
    assert_one_line_error(project.run("runs", "rerun", run_id, "compute.cancel_grace=soon"), "cancel_grace")
    assert_one_line_error(project.run("runs", "rerun", run_id, "params.lr=1,2"), "single values")


def test_secret_files_stay_out_with_a_warning(project: Project) -> None:
    project.write(".env", "TOKEN=abc\n")
    project.write("keys/server.pem", "-----BEGIN-----\n")
    project.write("ls.py", "import os\nprint(sorted(os.listdir('.')))\n")
    result = project.run("script=ls.py", check=True)
    assert ".env" not in result.stdout.split("[", 1)[1]
    assert ".env" in result.stderr and "server.pem" in result.stderr  # the warning names them
    project.write(".mltrainignore", "!.env\n")
    again = project.run("script=ls.py", check=True)
    assert "'.env'" in again.stdout


def test_snapshot_limits_refuse_with_the_culprit(project: Project) -> None:
    for i in range(30):
        project.write(f"data/part{i}.csv", "x" * 100)
    result = project.run("script=train.py", "snapshot.max_files=10")
    assert_one_line_error(result, "data/")


def test_gc_keeps_what_kept_runs_use(project: Project) -> None:
    project.write("big.bin", "A" * 200_000)
    project.run("script=train.py", check=True)
    keep_id = str(project.runs()[0]["id"])
    project.write("big.bin", "B" * 300_000)
    project.run("script=train.py", env={"EXIT_WITH": "1"})
    failed_id = str(project.runs()[0]["id"])
    assert failed_id != keep_id
    assert "free 0.0 MB: 0 blobs" in project.run("gc", "--failed", "--dry-run").stdout  # young blobs are spared
    dry = project.run("gc", "--failed", "--dry-run", "--grace", "0", check=True).stdout
    assert "would free" in dry
    assert len(project.runs()) == 2
    result = project.run("gc", "--failed", "--grace", "0", check=True).stdout
    assert "freed 0.3 MB" in result
    assert [r["id"] for r in project.runs()] == [keep_id]
    rerun = project.run("runs", "rerun", keep_id, check=True)  # its blobs survived
    assert rerun.returncode == 0
