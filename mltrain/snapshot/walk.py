"""Walk a source directory once, applying the ignore rules, without reading file contents.

The walk only lists and ``lstat``s, so the file count and byte total are
known (and checked against the limits) before a single byte is read or
copied. Excluded directories are pruned, never entered. Paths are ``str``
with surrogate escapes for undecodable bytes (what :func:`os.scandir`
returns for a ``str`` path), so any name a POSIX file system allows works.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING

from mltrain.errors import SnapshotError
from mltrain.snapshot.ignore import (
    ALWAYS_EXCLUDED_DIRS,
    ALWAYS_EXCLUDED_NAMES,
    AMLIGNORE,
    GITIGNORE,
    MLTRAINIGNORE,
    VENV_MARKER,
    IgnoreRules,
    Verdict,
    escape_glob,
)
from mltrain.snapshot.manifest import EXEC_MODE, FILE_MODE, LINK_MODE, file_mode, link_stays_inside

if TYPE_CHECKING:
    from mltrain.snapshot.statpool import StatPool

logger = logging.getLogger(__name__)

Found = tuple[str, int, int, int, int, str | None]
"""(relative path, size, mtime_ns, inode, manifest mode, symlink text or None) of one kept file, from its lstat.

The mode is already the manifest's (0o644, 0o755, or 0o777 for a link), decided while the stat result is
at hand. The walk keeps these facts as columns (:class:`WalkResult`), not as one tuple per file."""

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


@dataclass
class WalkResult:
    """The kept files as parallel columns, in path order (what the inventory and the manifest hold).

    Columns straight from the walk, in the order it visits (each folder's entries in the order of their
    paths, a folder's files interleaved with its subfolders): no per-file tuple, no sort and no split into
    columns afterwards. At 100k files those three took ~20% of an unchanged re-snapshot.
    Only the facts are kept, not the ``os.stat_result`` (some 20 objects) nor the absolute path.
    """

    rels: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    inodes: list[int] = field(default_factory=list)
    modes: list[int] = field(default_factory=list)
    link_targets: dict[int, str] = field(default_factory=dict)
    """Row -> symlink text, for the rows that are symlinks."""
    warnings: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Found]:
        """One tuple per kept file, in path order (for error messages and tests; the snapshot uses the columns)."""
        return list(zip(self.rels, self.sizes, self.mtimes, self.inodes, self.modes, self.links(), strict=True))

    def links(self) -> list[str | None]:
        """The link column: each row's symlink text, or None for a regular file."""
        column: list[str | None] = [None] * len(self.rels)
        for row, target in self.link_targets.items():
            column[row] = target
        return column

    def _add(self, chunk: _Chunk) -> None:
        rels, sizes, mtimes, inodes, modes, links = chunk
        offset = len(self.rels)
        self.rels += rels
        self.sizes += sizes
        self.mtimes += mtimes
        self.inodes += inodes
        self.modes += modes
        for i, target in enumerate(links):
            if target is not None:
                self.link_targets[offset + i] = target


_Chunk = tuple[list[str], list[int], list[int], list[int], list[int], list[str | None]]
"""A folder's own files between two of its subfolders, as columns (rels, sizes, mtimes, inodes, modes, links)."""
_Folder = tuple[str, str, "IgnoreRules"]
"""(absolute path, relative path with a trailing slash or "", the rules that apply inside)."""


def show(rel: str) -> str:
    """A path as printable one-line text (newlines and undecodable bytes escaped)."""
    if rel.isprintable():
        return rel
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in rel)


def ignore_hint(rel: str, is_dir: bool) -> str:
    """The ``.mltrainignore`` line that drops exactly this path."""
    return f"add '{show(escape_glob(rel))}{'/' if is_dir else ''}' to {MLTRAINIGNORE}"


def load_rules(root: str) -> IgnoreRules:
    """The root-level rules: ``.mltrainignore``, ``.amlignore`` and the secret-file defaults."""
    return IgnoreRules.create(
        mltrainignore=_read_ignore_file(root, MLTRAINIGNORE, follow=True),
        amlignore=_read_ignore_file(root, AMLIGNORE, follow=True),
    )


def _read_ignore_file(folder: str, rel: str, *, follow: bool) -> bytes:
    path = os.path.join(folder, os.path.basename(rel))
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):  # none, or its folder went away since it was listed
        return b""
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            return b""  # git does not follow a symlinked .gitignore either
        raise SnapshotError(f"cannot read ignore file {show(rel)}: {exc.strerror} (fix its permissions)") from None
    try:
        with os.fdopen(fd, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise SnapshotError(f"cannot read ignore file {show(rel)}: {exc.strerror} (fix its permissions)") from None


def walk(root: str, rules: IgnoreRules, *, skip: frozenset[str] = frozenset(), expect: int = 0) -> WalkResult:
    """List every kept regular file and symlink under ``root`` (an existing directory), in path order.

    ``skip`` holds relative directory paths never to enter (a workspace that lives inside the tree).
    ``expect``: about how many files the tree held last time; a large tree is stat'ed on more than one
    core (:mod:`mltrain.snapshot.statpool`).

    Depth first, each folder's entries taken in the order of their paths (a subfolder ``d`` sorts as
    ``d/``): the paths under a folder form one block of the sorted list, so visiting in that order
    lists the files already sorted.
    """
    from mltrain.snapshot.statpool import StatPool, helpers_for

    helpers = helpers_for(expect)
    if not helpers:
        return _walk(root, rules, skip, None)
    with StatPool(helpers) as pool:
        return _walk(root, rules, skip, pool)


def _walk(root: str, rules: IgnoreRules, skip: frozenset[str], pool: StatPool | None) -> WalkResult:
    result = WalkResult()
    root_real = os.path.realpath(root)
    stack: list[_Folder | _Chunk] = [(root, "", rules)]
    while stack:
        task = stack.pop()
        if len(task) == 6:
            result._add(task)  # a run of files between two subfolders
            continue
        folder, rel_dir, here = task
        # Listing through a directory fd makes each entry's lstat resolve one name, not the whole path.
        # Below the root, O_NOFOLLOW: a folder swapped for a symlink since it was listed is not followed.
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if rel_dir else 0))
        except OSError as exc:
            if rel_dir and exc.errno in _GONE:
                result.warnings.append(gone(rel_dir))
                continue
            if exc.errno == errno.ENOENT:
                raise SnapshotError(f"source directory {show(root)} was deleted while the snapshot was taken") from None
            raise _unreadable_dir(rel_dir, exc) from None
        try:
            try:
                with os.scandir(fd) as listing:
                    entries = sorted(listing, key=_name)
            except OSError as exc:
                raise _unreadable_dir(rel_dir, exc) from None
            names = [entry.name for entry in entries]
            if rel_dir and VENV_MARKER in names:
                logger.debug("skipping virtualenv %s", show(rel_dir))
                continue
            if GITIGNORE in names:
                here = here.with_gitignore(rel_dir, _read_ignore_file(folder, rel_dir + GITIGNORE, follow=False))
            _visit(fd, folder + "/", entries, names, rel_dir, here, skip, stack, result, pool)
        finally:
            os.close(fd)
    if pool is not None:
        _drop_failed(result, pool.collect(root, result))
    if result.link_targets:
        links = [(result.rels[row], target) for row, target in result.link_targets.items()]
        for rel, target in links:
            _check_link(rel, target, root, root_real)
        _warn_links_to_excluded(links, result.rels, root, root_real, result.warnings)
    result.warnings.sort()
    return result


_name = attrgetter("name")


def _unreadable_dir(rel_dir: str, exc: OSError) -> SnapshotError:
    hint = f"; or {ignore_hint(rel_dir[:-1], True)}" if rel_dir else ""
    return SnapshotError(f"cannot read directory {show(rel_dir or '.')}: {exc.strerror} (fix its permissions{hint})")


def _visit(
    fd: int,
    folder: str,
    entries: list[os.DirEntry[str]],
    names: list[str],
    rel_dir: str,
    rules: IgnoreRules,
    skip: frozenset[str],
    stack: list[_Folder | _Chunk],
    result: WalkResult,
    pool: StatPool | None,
) -> None:
    """Sort one folder's entries into kept files (added, or queued in order) and subfolders (queued)."""
    warnings = result.warnings
    verdict = rules.verdict
    memo_files, memo_dirs = rules.name_memo or ({}, {})
    memoize = rules.name_memo is not None
    if memoize and ALWAYS_EXCLUDED_NAMES.isdisjoint(names):
        # The common folder: regular files only, each name already judged and kept. Decided for the whole
        # folder in C-level passes instead of a Python step per entry (100k files: ~8% of a re-snapshot).
        regular = [entry for entry in entries if entry.is_file(follow_symlinks=False)]
        if len(regular) == len(entries):
            judged = list(map(memo_files.get, names))
            if judged.count(Verdict.INCLUDE) == len(judged):
                if pool is not None and pool.offer(fd, names, len(result.rels), rel_dir):
                    count = len(names)  # stat'ed by a helper: its rows are filled in after the walk
                    result._add(([rel_dir + name for name in names], [0] * count, [0] * count, [0] * count,
                                 [0] * count, [None] * count))
                else:
                    result._add(_stat_files(fd, regular, rel_dir, warnings))
                return
    kept: list[os.DirEntry[str]] = []
    subdirs: list[tuple[str, _Folder]] = []
    for entry in entries:
        name = entry.name
        if name in ALWAYS_EXCLUDED_NAMES:
            continue
        if entry.is_dir(follow_symlinks=False):
            rel = rel_dir + name
            if name in ALWAYS_EXCLUDED_DIRS or (skip and rel in skip):
                continue
            decided = memo_dirs.get(name) if memoize else None
            if decided is None:
                decided = verdict(rel, True)
                if memoize:
                    memo_dirs[name] = decided
            if decided is Verdict.INCLUDE:
                subdirs.append((name + "/", (folder + name, rel + "/", rules)))
            elif decided is Verdict.SECRET:
                warnings.append(f"excluded secret directory {show(rel)}/ ({_opt_in(rel, True)})")
            continue
        decided = memo_files.get(name) if memoize else None
        if decided is None:
            decided = verdict(rel_dir + name, False)
            if memoize:
                memo_files[name] = decided
        if decided is Verdict.INCLUDE:
            kept.append(entry)
        elif decided is Verdict.SECRET:
            rel = rel_dir + name
            warnings.append(f"excluded secret file {show(rel)} ({_opt_in(rel, False)})")
    chunk = _stat_files(fd, kept, rel_dir, warnings)
    if not subdirs:
        result._add(chunk)
        return
    # Files and subfolders in path order; pushed in reverse, so they pop in order.
    files_at = {rel[len(rel_dir):]: i for i, rel in enumerate(chunk[0])}
    order = sorted([*files_at, *(key for key, _ in subdirs)])
    folders = dict(subdirs)
    pending: list[_Folder | _Chunk] = []
    run: list[int] = []
    for key in order:
        if key in folders:
            if run:
                pending.append(_pick(chunk, run))
                run = []
            pending.append(folders[key])
        else:
            run.append(files_at[key])
    if run:
        pending.append(_pick(chunk, run))
    stack += reversed(pending)


def _drop_failed(result: WalkResult, failed: list[tuple[int, str, int]]) -> None:
    """Rows a helper could not stat: gone since the listing (a warning, and the row goes), else an error."""
    if not failed:
        return
    for _, rel, code in failed:
        if code not in _GONE:
            raise SnapshotError(f"cannot stat {show(rel)}: {os.strerror(code)}")
        result.warnings.append(gone(rel))
    dropped = {row for row, _, _ in failed}
    keep = [row for row in range(len(result.rels)) if row not in dropped]
    links = result.links()
    result.rels, result.sizes, result.mtimes, result.inodes, result.modes, kept_links = _pick(
        (result.rels, result.sizes, result.mtimes, result.inodes, result.modes, links), keep)
    result.link_targets = {row: target for row, target in enumerate(kept_links) if target is not None}


def _pick(chunk: _Chunk, rows: list[int]) -> _Chunk:
    rels, sizes, mtimes, inodes, modes, links = chunk
    return ([rels[i] for i in rows], [sizes[i] for i in rows], [mtimes[i] for i in rows],
            [inodes[i] for i in rows], [modes[i] for i in rows], [links[i] for i in rows])


def _stat_files(fd: int, kept: list[os.DirEntry[str]], rel_dir: str, warnings: list[str]) -> _Chunk:
    """The columns of one folder's kept files (regular files and symlinks, in name order), from their lstat."""
    regular = [entry for entry in kept if entry.is_file(follow_symlinks=False)]
    if len(regular) == len(kept):
        try:
            # One tight comprehension for the lstat calls: the bulk of an unchanged re-snapshot.
            stats = [e.stat(follow_symlinks=False) for e in regular]
        except OSError:  # one vanished since the listing: again, one by one
            pass
        else:
            return ([rel_dir + e.name for e in regular], [st.st_size for st in stats],
                    [st.st_mtime_ns for st in stats], [st.st_ino for st in stats],
                    [EXEC_MODE if st.st_mode & 0o100 else FILE_MODE for st in stats], [None] * len(stats))
    chunk: _Chunk = ([], [], [], [], [], [])
    rels, sizes, mtimes, inodes, modes, links = chunk
    for entry in kept:  # the kinds as the listing gave them, as for the folders above
        rel = rel_dir + entry.name
        st = _lstat(entry, rel_dir, warnings)
        if st is None:
            continue
        target: str | None = None
        if entry.is_file(follow_symlinks=False):
            mode = file_mode(st.st_mode)
        elif entry.is_symlink():
            try:
                target = os.readlink(entry.name, dir_fd=fd)
            except OSError as exc:  # gone, or no longer a link (EINVAL), since the listing
                if exc.errno not in (*_GONE, errno.EINVAL):
                    raise SnapshotError(f"cannot read symlink {show(rel)}: {exc.strerror}") from None
                warnings.append(gone(rel))
                continue
            mode = LINK_MODE
        else:
            kind = next((label for test, label in _SPECIAL_KINDS if test(st.st_mode)), "special file")
            warnings.append(f"skipped {kind} {show(rel)} (a snapshot holds only regular files and symlinks)")
            continue
        rels.append(rel)
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime_ns)
        inodes.append(st.st_ino)
        modes.append(mode)
        links.append(target)
    return chunk


_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
"""What opening or stating a listed entry fails with when it (or its folder) was deleted, or a folder
was replaced by a file (ENOTDIR) or a symlink (ELOOP, with O_NOFOLLOW), since the listing."""


def gone(rel: str) -> str:
    """The warning for an entry that vanished (or changed kind) while the snapshot was taken."""
    return f"skipped {show(rel)}: it was deleted or replaced while the snapshot was taken"


def _lstat(entry: os.DirEntry[str], rel_dir: str, warnings: list[str]) -> os.stat_result | None:
    """The entry's lstat; None (and a warning) if it vanished since the listing."""
    try:
        return entry.stat(follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _GONE:
            raise SnapshotError(f"cannot stat {show(rel_dir + entry.name)}: {exc.strerror}") from None
        warnings.append(gone(rel_dir + entry.name))
        return None


def _opt_in(rel: str, is_dir: bool) -> str:
    return f"add '!{show(escape_glob(rel))}{'/' if is_dir else ''}' to {MLTRAINIGNORE} to include it"


def _check_link(rel: str, target: str, root: str, root_real: str) -> None:
    """A symlink is kept as a link only if it resolves inside the tree (or dangles inside it)."""
    path = f"{root}/{rel}"
    drop = ignore_hint(rel, False)
    if target.startswith("/"):
        raise SnapshotError(
            f"symlink {show(rel)} has an absolute target {show(target)}; make it relative (ln -sfr) or {drop}"
        )
    if not link_stays_inside(rel, target):
        raise SnapshotError(f"symlink {show(rel)} points outside the source directory ({show(target)}); {drop}")
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SnapshotError(
                f"symlink {show(rel)} is part of a symlink loop ({show(target)}); fix it or {drop}"
            ) from None
    real = os.path.realpath(path)
    if real != root_real and not real.startswith(root_real + "/"):
        raise SnapshotError(
            f"symlink {show(rel)} resolves outside the source directory (to {show(real)}); {drop}"
        )


def _warn_links_to_excluded(
    links: list[tuple[str, str]], rels: list[str], root: str, root_real: str, warnings: list[str]
) -> None:
    """A link (path, text) whose existing target is left out of the snapshot would dangle on the target."""
    kept = set(rels)
    kept_dirs: set[str] = set()
    for rel in kept:
        slash = rel.rfind("/")
        while slash > 0 and rel[:slash] not in kept_dirs:
            kept_dirs.add(rel[:slash])
            slash = rel.rfind("/", 0, slash)
    prefix = root_real + "/"
    for rel, _ in links:
        real = os.path.realpath(f"{root}/{rel}")
        if real == root_real or not os.path.lexists(real):
            continue
        inside = real[len(prefix) :]
        if inside not in kept and inside not in kept_dirs:
            warnings.append(f"symlink {show(rel)} points to {show(inside)}, which is not in the snapshot")
