"""Tests for mltrain.snapshot.git against real git repositories in temporary directories.

The user's own git configuration is kept out (``GIT_CONFIG_GLOBAL``,
``GIT_CONFIG_NOSYSTEM``) and never written: identities come from the environment.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from mltrain.errors import SourceError
from mltrain.snapshot.git import GitInfo, capture, strip_credentials

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Test User")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)


def git(cwd: Path, *args: str, input: bytes | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, check=False)
    assert done.returncode == 0, f"git {args} failed: {done.stderr.decode()}"
    return done.stdout.decode().strip()


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("print('train')\n")
    (path / ".gitignore").write_text("*.log\n/data/\n")
    (path / "pkg").mkdir()
    (path / "pkg" / "model.py").write_text("W = 1\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def tree_state(root: Path) -> dict[str, tuple[str, object]]:
    """Everything git would track in ``root``: path -> (kind, content), ignored files excluded."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    state: dict[str, tuple[str, object]] = {}
    for raw in filter(None, listed.split(b"\0")):
        rel = os.fsdecode(raw)
        path = root / rel
        if path.is_symlink():
            state[rel] = ("link", os.readlink(path))
        elif path.is_file():
            executable = bool(path.stat().st_mode & stat.S_IXUSR)
            state[rel] = ("exec" if executable else "file", path.read_bytes())
        # a tracked file deleted in the work tree is simply absent
    return state


def apply_to_clone(origin: Path, info: GitInfo, dest: Path) -> Path:
    if info.commit is None:
        dest.mkdir()
        git(dest, "init", "-q")
    else:
        git(origin.parent, "clone", "-q", "--no-local", "--no-checkout", str(origin), str(dest))
        git(dest, "checkout", "-q", "--detach", info.commit)
    if info.patch:
        git(dest, "apply", "--whitespace=nowarn", "-", input=info.patch_bytes())
    return dest


def test_not_a_repository(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    assert capture(tmp_path / "plain") == GitInfo(is_repo=False)
    assert capture(tmp_path / "missing") == GitInfo(is_repo=False)


def test_git_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "repo")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    assert capture(repo) == GitInfo(is_repo=False)


def test_clean_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    info = capture(repo)
    assert info == GitInfo(
        is_repo=True,
        commit=git(repo, "rev-parse", "HEAD"),
        branch="main",
        remote_url=None,
        dirty=False,
        patch="",
        pushed=None,
        root=str(repo.resolve()),
    )


def test_subdirectory_records_root_and_whole_repo_patch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "train.py").write_text("print('changed outside the source dir')\n")
    info = capture(repo / "pkg")
    assert info.root == str(repo.resolve())
    assert info.dirty
    assert "train.py" in info.patch


def test_a_source_dir_reached_through_a_symlink_is_still_in_its_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (tmp_path / "link").symlink_to(repo / "pkg")  # no .git above the link itself
    info = capture(tmp_path / "link")
    assert info.is_repo and info.root == str(repo.resolve())


def test_dirty_repository_patch_contents(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "train.py").write_text("print('modified')\n")
    (repo / "notes.txt").write_text("untracked\n")
    (repo / "run.log").write_text("ignored\n")
    (repo / "data").mkdir()
    (repo / "data" / "big.bin").write_bytes(b"\0" * 100)
    staged_before = git(repo, "diff", "--cached", "--name-only")

    info = capture(repo)

    assert info.dirty
    assert "diff --git a/train.py b/train.py" in info.patch
    assert "+print('modified')" in info.patch
    assert "diff --git a/notes.txt b/notes.txt" in info.patch
    assert "run.log" not in info.patch
    assert "big.bin" not in info.patch
    # The user's staging area is left as it was.
    assert git(repo, "diff", "--cached", "--name-only") == staged_before
    assert "?? notes.txt" in git(repo, "status", "--porcelain")


def test_capture_writes_no_objects_for_untracked_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    big = repo / "dataset.bin"
    big.write_bytes(os.urandom(1 << 16))
    (repo / "train.py").write_text("print('modified')\n")
    info = capture(repo)
    assert "b/dataset.bin" in info.patch
    for path in (big, repo / "train.py"):
        blob = git(repo, "hash-object", str(path))
        missing = subprocess.run(["git", "cat-file", "-e", blob], cwd=repo, check=False)
        assert missing.returncode != 0, f"capture wrote {path.name} into .git/objects"


def test_merge_conflict_state_is_captured(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "checkout", "-q", "-b", "other")
    (repo / "train.py").write_text("print('other')\n")
    git(repo, "commit", "-q", "-am", "other")
    git(repo, "checkout", "-q", "main")
    (repo / "train.py").write_text("print('main')\n")
    git(repo, "commit", "-q", "-am", "main")
    merge = subprocess.run(["git", "merge", "-q", "other"], cwd=repo, capture_output=True, check=False)
    assert merge.returncode != 0
    info = capture(repo)
    assert info.dirty and "<<<<<<<" in info.patch
    clone = apply_to_clone(repo, info, tmp_path / "clone")
    assert tree_state(clone) == tree_state(repo)


def test_untracked_file_alone_makes_repo_dirty(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "pkg" / "new" / "deep").mkdir(parents=True)
    (repo / "pkg" / "new" / "deep" / "x.py").write_text("x = 1\n")
    info = capture(repo)
    assert info.dirty
    assert "b/pkg/new/deep/x.py" in info.patch


def test_ignored_file_alone_is_not_dirty(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "out.log").write_text("noise\n")
    info = capture(repo)
    assert not info.dirty
    assert info.patch == ""


def test_patch_rebuilds_exact_tree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    rng = random.Random(7)
    (repo / "weights.bin").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    (repo / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (repo / "to_delete.txt").write_text("bye\n")
    (repo / "to_rename.txt").write_text("same content\n" * 20)
    (repo / "script.sh").write_text("#!/bin/sh\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "more")

    # Tracked changes: text, binary, non-UTF-8, delete, rename, mode change, staged + unstaged.
    (repo / "train.py").write_text("print('train v2')\n")
    (repo / "weights.bin").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    (repo / "latin1.txt").write_bytes("naïve café\n".encode("latin-1"))
    (repo / "to_delete.txt").unlink()
    (repo / "to_rename.txt").rename(repo / "renamed.txt")
    (repo / "script.sh").chmod(0o755)
    (repo / "pkg" / "model.py").write_text("W = 2\n")
    git(repo, "add", "pkg/model.py")
    (repo / "pkg" / "model.py").write_text("W = 3\n")
    # Untracked, not ignored: binary, odd names, a symlink, a new directory.
    (repo / "new dir" / "sub").mkdir(parents=True)
    (repo / "new dir" / "sub" / "blob.npy").write_bytes(bytes(range(256)) * 3)
    (repo / "ünïcode name.txt").write_text("hello\n")
    (repo / "a'; echo foo").write_text("quote\n")
    (repo / "a\n0").write_text("newline in name\n")
    (repo / "link").symlink_to("train.py")
    (repo / "empty.txt").write_bytes(b"")
    # Ignored: must stay out.
    (repo / "debug.log").write_text("ignored\n")

    info = capture(repo / "pkg")
    assert info.dirty
    assert "debug.log" not in info.patch

    clone = apply_to_clone(repo, info, tmp_path / "clone")
    expected = tree_state(repo)
    assert "debug.log" not in expected
    assert tree_state(clone) == expected


def test_repository_without_commits(tmp_path: Path) -> None:
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("a = 1\n")
    (repo / "b.bin").write_bytes(bytes(range(256)))
    (repo / "x.log").write_text("ignored by info/exclude\n")
    (repo / ".git" / "info" / "exclude").write_text("*.log\n")

    info = capture(repo)

    assert info.is_repo
    assert info.commit is None
    assert info.branch == "main"
    assert info.dirty
    assert info.pushed is None
    assert "b/a.py" in info.patch and "b/b.bin" in info.patch and "x.log" not in info.patch
    clone = apply_to_clone(repo, info, tmp_path / "clone")
    assert tree_state(clone) == {k: v for k, v in tree_state(repo).items()}


def test_empty_repository_without_files(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    assert capture(repo) == GitInfo(is_repo=True, branch="main", root=str(repo.resolve()))


def test_credentials_stripped_from_https_remote(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "remote", "add", "origin", "https://user:s3cret-token@example.com/team/proj.git")
    info = capture(repo)
    assert info.remote_url == "https://example.com/team/proj.git"
    assert "s3cret" not in repr(info.to_dict())
    # A remote that was never fetched has no remote-tracking branches: not pushed.
    assert info.pushed is False


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:token@host/x", "https://host/x"),
        ("https://ghp_abc123@github.com/o/r.git", "https://github.com/o/r.git"),
        ("http://u:p@host:8080/x?y=1", "http://host:8080/x?y=1"),
        ("https://github.com/o/r.git", "https://github.com/o/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("ssh://git@host:2222/o/r.git", "ssh://git@host:2222/o/r.git"),
        ("ssh://git:pw@host/o/r.git", "ssh://git@host/o/r.git"),
        ("/srv/git/r.git", "/srv/git/r.git"),
        ("file:///srv/git/r.git", "file:///srv/git/r.git"),
    ],
)
def test_strip_credentials(url: str, expected: str) -> None:
    assert strip_credentials(url) == expected


def test_remote_choice_prefers_upstream_then_origin(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "remote", "add", "aaa", "https://example.com/aaa.git")
    git(repo, "remote", "add", "origin", "https://example.com/origin.git")
    assert capture(repo).remote_url == "https://example.com/origin.git"

    bare = tmp_path / "team.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(repo, "remote", "add", "team/fork", str(bare))
    git(repo, "push", "-q", "-u", "team/fork", "main")
    assert capture(repo).remote_url == str(bare)


@pytest.mark.parametrize("set_upstream", [True, False], ids=["upstream", "no-upstream"])
def test_unpushed_commit_is_flagged(tmp_path: Path, set_upstream: bool) -> None:
    repo = make_repo(tmp_path / "repo")
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", *(["-u"] if set_upstream else []), "origin", "main")

    pushed = capture(repo)
    assert pushed.pushed is True
    assert pushed.remote_url == str(bare)

    (repo / "train.py").write_text("print('local only')\n")
    git(repo, "commit", "-q", "-am", "not pushed")
    assert capture(repo).pushed is False

    # An older, pushed commit checked out on a new branch counts as pushed.
    git(repo, "checkout", "-q", "-b", "feature", "HEAD~1")
    assert capture(repo).pushed is True


def test_detached_head(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "train.py").write_text("print('v2')\n")
    git(repo, "commit", "-q", "-am", "second")
    git(repo, "checkout", "-q", "--detach", first)
    info = capture(repo)
    assert info.branch is None
    assert info.commit == first
    assert not info.dirty


def test_linked_worktree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "wt-branch", str(worktree))
    (worktree / "train.py").write_text("print('in worktree')\n")
    (worktree / "extra.txt").write_text("new\n")
    info = capture(worktree)
    assert info.branch == "wt-branch"
    assert info.root == str(worktree.resolve())
    clone = apply_to_clone(repo, info, tmp_path / "clone")
    assert tree_state(clone) == tree_state(worktree)


def test_corrupt_repository_raises_source_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / ".git" / "index").write_bytes(b"garbage, not an index")
    with pytest.raises(SourceError, match="git status failed"):
        capture(repo)


def test_dict_round_trip() -> None:
    info = GitInfo(
        is_repo=True,
        commit="abc",
        branch=None,
        remote_url="https://host/x",
        dirty=True,
        patch="diff --git a/x b/x\n\udce9\n",
        pushed=False,
        root="/r",
    )
    assert GitInfo.from_dict(info.to_dict()) == info
    assert GitInfo.from_dict({**info.to_dict(), "added_later": 1}) == info
    assert GitInfo.from_dict({"is_repo": False}) == GitInfo(is_repo=False)
    assert info.patch_bytes().endswith(b"\xe9\n")


@pytest.mark.parametrize(
    "record",
    [{}, {"is_repo": "yes"}, {"is_repo": True, "dirty": 1}, {"is_repo": True, "commit": 5}],
)
def test_from_dict_rejects_bad_records(record: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="GitInfo"):
        GitInfo.from_dict(record)


def test_workspace_inside_the_repository_stays_out_of_git(tmp_path: Path, base_env: dict[str, str]) -> None:
    """The run history is not source: a clean repo stays clean after runs, and no run's patch carries it."""
    import json

    from conftest import MLTRAIN

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text("print('hi')\n")
    git(repo, "init", "-q")
    git(repo, "add", "train.py")
    git(repo, "commit", "-q", "-m", "first")
    env = {**base_env, **{k: v for k, v in os.environ.items() if k.startswith("GIT_")}}
    for _ in range(2):
        done = subprocess.run([MLTRAIN, "script=train.py"], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
    assert (repo / ".mltrain" / "runs.db").exists()
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    def cli(*args: str) -> str:
        return subprocess.run([MLTRAIN, *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout

    newest = json.loads(cli("runs", "list", "--json"))[0]["id"]
    record = json.loads(cli("runs", "show", "--json", newest))
    assert record["git"]["is_repo"] is True and record["git"]["dirty"] is False, record["git"]
