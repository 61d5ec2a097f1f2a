"""Capture the git state of a source directory, enough to rebuild the exact tree.

This replaces Azure ML's "git tracking in run history": every run records the
commit, branch, remote, whether the work tree was dirty and, if it was, a patch
of everything not committed. ``git apply`` of :attr:`GitInfo.patch` on a clean
checkout of :attr:`GitInfo.commit` reproduces the tree that ran, byte for byte
(tracked changes, staged or not, plus untracked files that are not ignored).

``capture`` runs on every submit, so it spends as few ``git`` processes as it
can: one ``rev-parse`` and one ``status`` (branch, commit, upstream, dirty),
one ``config`` for the remote, and only when needed a ``for-each-ref`` (is the
commit on a remote?) and two more to build the patch. Independent commands run
concurrently. Git's absence or a directory outside any work tree is not an
error: mltrain also runs code that is not under version control.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mltrain.errors import SourceError

log = logging.getLogger(__name__)

#: Ceiling for any one git command; a hung git (lock, network filesystem)
#: must not hang a submit forever.
GIT_TIMEOUT_S = 120.0

# Options that make git's output independent of the user's configuration.
_BASE_OPTS = ("-c", "core.quotepath=off", "-c", "color.ui=false")
_DIFF_OPTS = (
    "--binary",
    "--full-index",
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--no-relative",
    "--src-prefix=a/",
    "--dst-prefix=b/",
)
# URL schemes whose user-info is only ever a credential (a token or user:password).
_HTTP_SCHEMES = frozenset({"http", "https", "ftp", "ftps"})


@dataclass(frozen=True)
class GitInfo:
    """Git state of a run's source directory, as stored in the run record.

    ``patch`` is text: git's binary hunks are ASCII, but a text file in a
    non-UTF-8 encoding is kept by decoding with ``surrogateescape``. Use
    :meth:`patch_bytes` to get the exact bytes to feed ``git apply``.
    """

    is_repo: bool
    commit: str | None = None
    #: ``None`` when HEAD is detached.
    branch: str | None = None
    #: Remote of the upstream branch, else ``origin``, else the first remote;
    #: credentials in http(s) URLs are removed before they reach the record.
    remote_url: str | None = None
    dirty: bool = False
    patch: str = ""
    #: ``False`` when HEAD is on no remote-tracking branch (the commit exists
    #: only on this machine); ``None`` when there is no remote or no commit.
    pushed: bool | None = None
    #: Top of the work tree; the patch is relative to it, even when the
    #: source directory is a subdirectory.
    root: str | None = None

    def patch_bytes(self) -> bytes:
        """The patch exactly as git produced it (inverse of the decoding in ``capture``)."""
        return self.patch.encode("utf-8", "surrogateescape")

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-compatible dict (the patch may hold lone surrogates, see the class doc)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> GitInfo:
        """Rebuild from :meth:`to_dict`'s output; unknown keys (from a newer mltrain) are ignored."""
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            if f.name not in d:
                if f.name == "is_repo":
                    raise ValueError("GitInfo record lacks 'is_repo'")
                continue
            value = d[f.name]
            if f.name in ("is_repo", "dirty"):
                ok = isinstance(value, bool)
            elif f.name == "pushed":
                ok = value is None or isinstance(value, bool)
            elif f.name == "patch":
                ok = isinstance(value, str)
            else:
                ok = value is None or isinstance(value, str)
            if not ok:
                raise ValueError(f"GitInfo field {f.name!r} has invalid value {value!r}")
            kwargs[f.name] = value
        return cls(**kwargs)  # type: ignore[arg-type]


def strip_credentials(url: str) -> str:
    """Remove secrets from a remote URL so it can be stored and shown.

    ``https://user:token@host/x`` and ``https://token@host/x`` become
    ``https://host/x``: in an http(s) URL the user-info is a credential. Other
    URLs keep their user name (``ssh://git@host/x``, ``git@host:x`` are left
    untouched) and lose only a password, if one is embedded.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if parts.scheme.lower() in _HTTP_SCHEMES:
        netloc = hostport
    elif ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}@{hostport}"
    else:
        return url
    return urlunsplit(parts._replace(netloc=netloc))


def capture(source_dir: Path) -> GitInfo:
    """Record the git state of the work tree that contains ``source_dir``.

    Returns ``GitInfo(is_repo=False)`` when ``source_dir`` is in no work tree
    or git is not installed. Raises :class:`~mltrain.errors.SourceError` only
    when git is present and the repository is there but git fails on it (a
    corrupt repository, a lock held for longer than :data:`GIT_TIMEOUT_S`).
    """
    cwd = Path(source_dir)
    if not cwd.is_dir():
        log.debug("%s is not a directory: not a git repository", cwd)
        return GitInfo(is_repo=False)
    if not _may_be_in_repo(cwd):
        return GitInfo(is_repo=False)
    git = _Git(cwd)
    try:
        return _capture(git)
    except FileNotFoundError:
        log.debug("git is not installed: no git information recorded")
        return GitInfo(is_repo=False)
    finally:
        git.close()


def _may_be_in_repo(folder: Path) -> bool:
    """False only when git surely finds no repository: no ``.git`` (folder or file) here or above, and no
    ``GIT_DIR``. Saves starting git (~10 ms) on every run outside a repository."""
    if os.environ.get("GIT_DIR") or os.environ.get("GIT_WORK_TREE"):
        return True
    here = folder.resolve()  # git walks up from the real folder, not through a symlink's parents
    return any(os.path.lexists(os.path.join(path, ".git")) for path in (here, *here.parents))


def _capture(git: _Git) -> GitInfo:
    rev_parse = git.start("rev-parse", "--show-toplevel", "--git-path", "index")
    status = git.start("status", "--porcelain=v2", "--branch", "-z", "--untracked-files=normal")
    remotes = git.start("config", "-z", "--get-regexp", r"^remote\..*\.url$")

    code, out, err = git.finish(rev_parse, "rev-parse")
    if code != 0:
        message = err.decode(errors="replace").strip()
        if "dubious ownership" in message:
            log.warning("git refuses %s (%s); no git information recorded", git.cwd, message)
        else:
            log.debug("%s is not in a git work tree: %s", git.cwd, message)
        return GitInfo(is_repo=False)
    root, index_path = out.decode("utf-8", "surrogateescape").split("\n")[:2]

    commit, branch, upstream, ahead, dirty = _parse_status(git.check(status, "status"))
    urls = _parse_remotes(git.check(remotes, "config", ok_codes=(0, 1)))

    remote_name = _pick_remote(urls, upstream)
    pushed_probe: subprocess.Popen[bytes] | None = None
    pushed: bool | None = None
    if remote_name is not None and commit is not None:
        if upstream is not None and ahead == 0:
            pushed = True  # HEAD is an ancestor of (or equal to) its upstream.
        else:
            pushed_probe = git.start(
                "for-each-ref", "--count=1", "--contains", commit, "--format=%(refname)", "refs/remotes/"
            )

    patch = _make_patch(git, git.cwd / index_path, commit) if dirty else b""

    if pushed_probe is not None:
        pushed = bool(git.check(pushed_probe, "for-each-ref").strip())

    return GitInfo(
        is_repo=True,
        commit=commit,
        branch=branch,
        remote_url=strip_credentials(urls[remote_name]) if remote_name is not None else None,
        dirty=dirty,
        patch=patch.decode("utf-8", "surrogateescape"),
        pushed=pushed,
        root=root,
    )


def _parse_status(out: bytes) -> tuple[str | None, str | None, str | None, int | None, bool]:
    """(commit, branch, upstream, commits ahead of upstream, dirty) from porcelain v2."""
    commit = branch = upstream = None
    ahead: int | None = None
    dirty = False
    records = iter(out.split(b"\0"))
    for record in records:
        if not record:
            continue
        if record.startswith(b"# "):
            key, _, value = record[2:].decode("utf-8", "surrogateescape").partition(" ")
            if key == "branch.oid" and value != "(initial)":
                commit = value
            elif key == "branch.head" and value != "(detached)":
                branch = value
            elif key == "branch.upstream":
                upstream = value
            elif key == "branch.ab":
                ahead = int(value.split()[0])
            continue
        dirty = True
        if record.startswith(b"2 "):
            next(records, None)  # a rename record carries its original path as an extra field
    return commit, branch, upstream, ahead, dirty


def _parse_remotes(out: bytes) -> dict[str, str]:
    """Remote name -> URL from ``git config -z --get-regexp``, in config order."""
    urls: dict[str, str] = {}
    for entry in out.decode("utf-8", "surrogateescape").split("\0"):
        key, _, url = entry.partition("\n")
        if key.startswith("remote.") and key.endswith(".url"):
            urls.setdefault(key[len("remote.") : -len(".url")], url)
    return urls


def _pick_remote(urls: Mapping[str, str], upstream: str | None) -> str | None:
    """The remote the current branch tracks, else ``origin``, else the first one."""
    if upstream is not None:
        # Remote names may contain '/', so match the longest configured prefix.
        tracked = [name for name in urls if upstream.startswith(name + "/")]
        if tracked:
            return max(tracked, key=len)
    if "origin" in urls:
        return "origin"
    return next(iter(urls), None)


def _make_patch(git: _Git, index_file: Path, commit: str | None) -> bytes:
    """Diff from HEAD to the work tree, untracked-not-ignored files included.

    Works on a copy of the real index, so the user's staging area is never
    touched. With a commit, untracked files enter the copy as intent-to-add
    and ``git diff HEAD`` compares the work tree itself: git hashes changed
    files in memory and writes no objects into the user's repository (a large
    untracked file is not copied into ``.git/objects`` on every submit).
    Without a commit there is no HEAD to diff the work tree against, so the
    copy stages everything (this does write blobs, in a repository that has
    never been committed to) and its full content becomes the patch.
    """
    with tempfile.TemporaryDirectory(prefix="mltrain-git-") as tmp:
        tmp_index = Path(tmp) / "index"
        # A fresh repository has no index yet; git then starts from an empty one.
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(index_file, tmp_index)
        env = {"GIT_INDEX_FILE": str(tmp_index)}
        if commit is not None:
            git.check(git.start("add", "--intent-to-add", "--", ":/", env=env), "add")
            return git.check(git.start("diff", *_DIFF_OPTS, commit, "--", env=env), "diff")
        git.check(git.start("add", "--all", "--", ":/", env=env), "add")
        return git.check(git.start("diff", "--cached", *_DIFF_OPTS, env=env), "diff")


class _Git:
    """Starts git commands in one directory and reaps every one of them on ``close``.

    Commands are started with :meth:`start` and collected with
    :meth:`finish`/:meth:`check`, so independent ones overlap.
    """

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self._env = dict(os.environ)
        # No index write-back (never contend with the user's own git), no prompts,
        # messages in English (we recognise one).
        self._env.update(GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["git", *_BASE_OPTS, *args],
            cwd=self.cwd,
            env={**self._env, **env} if env else self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[bytes], what: str) -> tuple[int, bytes, bytes]:
        try:
            out, err = proc.communicate(timeout=GIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise SourceError(
                f"git {what} took longer than {GIT_TIMEOUT_S:.0f} s in {self.cwd}; "
                "is another git process holding a lock?"
            ) from None
        return proc.returncode, out, err

    def check(self, proc: subprocess.Popen[bytes], what: str, ok_codes: Sequence[int] = (0,)) -> bytes:
        code, out, err = self.finish(proc, what)
        if code not in ok_codes:
            detail = err.decode(errors="replace").strip().splitlines()
            raise SourceError(
                f"git {what} failed (exit {code}) while recording the git state of {self.cwd}"
                + (f": {detail[-1]}" if detail else "")
            )
        return out

    def close(self) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                proc.kill()
            proc.communicate()
