"""A local run's working directory ``runs/<id>/wd/``: an overlay on the shared checkout, or a tree of links.

Every run of a snapshot needs the snapshot's tree as a directory of its own
(what it writes next to itself stays in that run) whose snapshot files it
cannot change for the others. Two ways to get that, chosen by ``compute.workdir``:

* ``overlay``: the run sees the shared checkout through an overlay mount in a
  mount namespace of its own (:mod:`mltrain.targets.local.overlay` starts the
  job there). What it writes, changes or deletes lands in its own layer, which
  is ``wd/`` itself beneath the mount; a snapshot file it writes to is copied
  up first, so the checkout stays as it was even for root. It costs two
  folders and one short program start whatever the tree's size, where a tree
  of links costs one link per file made and one removed (10,000 files: ~0.3 s
  more than one file, ``benchmarks/bench_resubmit.py``). The mount exists only
  inside the run: from outside, ``wd/`` shows what the run wrote (deletions
  as ``0,0`` character devices), the snapshot's files are in the checkout.
* ``links``: :func:`mltrain.snapshot.materialize.make_workdir`, the tree made
  of hardlinks to the stored blobs. Works everywhere; from outside, ``wd/``
  shows the whole tree.
* ``auto`` (default): ``overlay`` where a probe finds that it works here (a
  Linux that allows this user the namespaces and the mount, a file system
  that can hold the layer, util-linux's ``unshare`` and ``mount``), else
  ``links``. The answer (and which of :data:`~mltrain.targets.local.overlay.STYLES`
  works) is kept per boot, user, programs and namespaces (a container has its
  own) in ``cache/workdir.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from mltrain.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.manifest import Manifest
    from mltrain.store.workspace import RunPaths, Workspace

logger = logging.getLogger(__name__)

WORKDIR_MODES: Final = ("auto", "overlay", "links")
PROBE_TIMEOUT: Final = 10.0
PROBE_FILE: Final = "workdir.json"
PROBE_PREFIX: Final = ".probe-overlay-"
_SAFE_OPTION: Final = re.compile(r"[A-Za-z0-9._/-]+")  # what an overlay mount option can carry as it is
_probed: dict[Path, tuple[str, str]] = {}  # this process's answers per workspace: (style that works, else why not)


@dataclass(frozen=True)
class WorkingDir:
    """Where the job starts (``cwd``) and what starts before it (``prefix``, empty for a tree of links)."""

    cwd: str
    prefix: tuple[str, ...] = ()


def make(mode: str, workspace: Workspace, paths: RunPaths, checkout: Path,
         manifest: Callable[[], Manifest], store: Callable[[], BlobStore]) -> WorkingDir:
    """The run's working directory, made the way ``mode`` asks (``manifest`` and ``store`` only for links)."""
    from mltrain.snapshot.materialize import make_workdir

    if mode != "links":
        lower = os.path.relpath(checkout, paths.workdir)
        why = "" if _SAFE_OPTION.fullmatch(lower) else f"the checkout's path {checkout} cannot be a mount option"
        style, why = ("", why) if why else _answer(workspace)
        if not why:
            return _overlay(paths, lower, style)
        if mode == "overlay":
            raise ConfigError(f"compute.workdir=overlay: {why}; use compute.workdir=links (or auto)")
        logger.info("working directory: links (%s)", why)
    return WorkingDir(str(make_workdir(manifest(), store(), paths.workdir)))


def _overlay(paths: RunPaths, lower: str, style: str) -> WorkingDir:
    from mltrain.errors import SnapshotError
    from mltrain.snapshot.materialize import remove_tree
    from mltrain.targets.local.overlay import command

    made: list[Path] = []
    try:
        for folder in (paths.workdir, paths.workdir_scratch):
            folder.mkdir(0o755)
            made.append(folder)
    except OSError as exc:
        for folder in made:
            remove_tree(folder)
        raise SnapshotError(f"cannot create the working directory {paths.workdir}: {exc.strerror}"
                            " (check the workspace)") from None
    scratch = os.path.relpath(paths.workdir_scratch, paths.workdir)
    # The run's own layer is wd/ itself, under the mount: from outside, wd/ shows what the run wrote.
    return WorkingDir(str(paths.workdir), tuple(command(style, lower, ".", scratch, str(paths.workdir), [])))


def remove(paths: RunPaths) -> None:
    """Delete the run's working directory, whichever way it was made (nothing there is fine).

    A run whose overlay could not be mounted (the system changed since the probe) makes the next run
    probe again, so ``auto`` falls back to links instead of failing the same way.
    """
    from mltrain.snapshot.materialize import remove_tree

    if paths.workdir_scratch.is_dir() and _mount_failed(paths.log):
        _probed.clear()
        with contextlib.suppress(OSError):
            os.unlink(paths.dir.parent.parent / "cache" / PROBE_FILE)  # <workspace>/runs/<id>/ -> <workspace>/cache
    for folder in (paths.workdir, paths.workdir_scratch):
        remove_tree(folder)


def _mount_failed(log: Path) -> bool:
    from mltrain.targets.local.overlay import MOUNT_FAILED, UNSHARE_FAILED

    try:
        with open(log, "rb") as fh:
            first = fh.read(len(MOUNT_FAILED))
    except OSError:
        return False
    return first == MOUNT_FAILED.encode() or first.startswith(UNSHARE_FAILED.encode())


def overlay_unavailable(workspace: Workspace) -> str:
    """'' when an overlay working directory works for this user on this boot, else why not (probed once)."""
    return _answer(workspace)[1]


def _answer(workspace: Workspace) -> tuple[str, str]:
    key = workspace.root
    if key not in _probed:
        _probed[key] = _cached_probe(workspace)
    return _probed[key]


def _cached_probe(workspace: Workspace) -> tuple[str, str]:
    from mltrain.hosts.agent import boot_id, write_atomic
    from mltrain.targets.local.overlay import STYLES, tools

    cache = workspace.cache / PROBE_FILE
    # A container shares the host's boot id but not its namespaces (nor, maybe, the capabilities it started with)
    ident = {"boot_id": boot_id(), "uid": os.geteuid(), "tools": tools(), "namespaces": _namespaces()}
    try:
        known = json.loads(cache.read_text())
        if {k: known.get(k) for k in ident} == ident and isinstance(known.get("unavailable"), str) \
                and known.get("style") in (*STYLES, ""):
            return str(known["style"]), str(known["unavailable"])
    except (OSError, ValueError, AttributeError):
        pass
    style, why = _probe(workspace.runs)
    logger.info("overlay working directories: %s", why or f"available ({style} style)")
    if ident["boot_id"]:  # no boot id, no way to tell a stale answer: probe again next time
        write_atomic(os.fspath(cache), json.dumps({**ident, "style": style, "unavailable": why}).encode())
    return style, why


def _namespaces() -> str:
    try:
        return " ".join(os.readlink(f"/proc/self/ns/{name}") for name in ("user", "mnt"))
    except OSError:
        return ""


def _probe(runs: Path) -> tuple[str, str]:
    """Mount a tiny overlay where run folders live (same file system, same user) in throwaway processes.

    Root tries a mount namespace alone first (a container's root may lack ``CAP_SYS_ADMIN``, then a user
    namespace may still do); anyone else needs the user namespace. Answers (style, '') or ('', why not).
    """
    from mltrain.snapshot.materialize import remove_tree
    from mltrain.targets.local.overlay import probe

    if not sys.platform.startswith("linux"):
        return "", "overlay mounts are Linux only"
    runs.mkdir(parents=True, exist_ok=True)
    _remove_stale_probes(runs)
    first_why = ""
    for style in ("root", "user") if os.geteuid() == 0 else ("user",):
        folder = tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=runs)
        try:
            why = probe(folder, style, PROBE_TIMEOUT)
        except OSError as exc:
            why = f"the overlay probe failed ({exc.strerror or exc})"
        finally:
            remove_tree(folder)
        if not why:
            return style, ""
        first_why = first_why or why
    return "", first_why


def _remove_stale_probes(runs: Path) -> None:
    """Folders of probes killed before they cleaned up; one younger than a probe may last is another's, live."""
    import time

    from mltrain.snapshot.materialize import remove_tree

    for folder in runs.glob(f"{PROBE_PREFIX}*"):
        with contextlib.suppress(OSError):
            found = folder.lstat()  # a link is not a probe's: never followed
            if stat.S_ISDIR(found.st_mode) and time.time() - found.st_mtime > 2 * PROBE_TIMEOUT:
                remove_tree(folder)


def check_mode(mode: str) -> None:
    if mode not in WORKDIR_MODES:
        raise ConfigError(f"compute.workdir={mode!r}: choose one of {', '.join(WORKDIR_MODES)}")
