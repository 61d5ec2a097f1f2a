"""Which built environments are still wanted, and removing the rest (``mltrain gc --envs DAYS``).

Venvs (``<cache>/envs/venv-<hash>``) and mltrain-built images
(``mltrain-env:<hash>``, label ``mltrain.managed=true``) are shared by every
project on the machine, so no one run history knows whether another project
still uses one. Every run therefore touches ``<cache>/used/<fingerprint>``
when its environment is ready; an environment is stale when that mark (or,
for one built before marks existed, its build time) is older than the
cut-off. Environments that active runs of this workspace use are always
kept, and a venv whose build lock is held (being built or checked right now)
is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mltrain.environments.base import default_cache_dir

VENV_PREFIX = "venv-"
VENV_KEY = 24  # a venv folder carries the first 24 hex digits of its fingerprint
MANAGED_LABEL = "mltrain.managed=true"
FINGERPRINT_LABEL = "mltrain.environment"


def _marks() -> Path:
    return default_cache_dir() / "used"


def mark_used(fingerprint: str) -> None:
    """Note that a run is using this environment now (best effort: a cache that cannot be written is skipped)."""
    mark = _marks() / fingerprint
    with contextlib.suppress(OSError):
        try:
            os.utime(mark)
        except FileNotFoundError:
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.touch()


def last_used(fingerprint_or_prefix: str) -> float | None:
    """Seconds since the epoch of the newest mark for a fingerprint (or a prefix of one)."""
    folder = _marks()
    exact = folder / fingerprint_or_prefix
    with contextlib.suppress(OSError):
        return exact.stat().st_mtime
    times = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        times = [e.stat().st_mtime for e in entries if e.name.startswith(fingerprint_or_prefix)]
    return max(times, default=None)


@dataclass
class Pruned:
    venvs: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    freed: int = 0  # bytes, venvs only (an image's layers may be shared)
    notes: list[str] = field(default_factory=list)


def prune(days: float, keep: Iterable[str], *, engine: Any | None, dry_run: bool) -> Pruned:
    """Remove venvs and images not used for ``days``; ``keep``: fingerprints that must stay."""
    cutoff = time.time() - days * 86400
    kept = set(keep)
    result = Pruned()
    _prune_venvs(cutoff, kept, dry_run, result)
    if engine is not None:
        _prune_images(engine, cutoff, kept, dry_run, result)
    return result


def _prune_venvs(cutoff: float, kept: set[str], dry_run: bool, result: Pruned) -> None:
    envs = default_cache_dir() / "envs"
    if not envs.is_dir():
        return
    for folder in sorted(envs.iterdir()):
        if not folder.name.startswith(VENV_PREFIX) or not folder.is_dir():
            continue
        key = folder.name[len(VENV_PREFIX):]
        if any(fp.startswith(key) for fp in kept):
            continue
        used = last_used(key) or folder.stat().st_mtime
        if used >= cutoff:
            continue
        size = _size(folder)
        if not dry_run and not _remove_unlocked(folder):
            result.notes.append(f"{folder.name} is in use (its lock is held); left alone")
            continue
        result.venvs.append(folder.name)
        result.freed += size


def _remove_unlocked(folder: Path) -> bool:
    """Remove ``folder`` while holding its build lock; False if someone else holds it."""
    lock = Path(f"{folder}.lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        lock.unlink()
    return True


def _prune_images(engine: Any, cutoff: float, kept: set[str], dry_run: bool, result: Pruned) -> None:
    for image in engine.images(label=MANAGED_LABEL):
        fingerprint = (image.get("Labels") or {}).get(FINGERPRINT_LABEL)
        if not fingerprint or fingerprint in kept:
            continue
        used = last_used(fingerprint) or float(image.get("Created") or 0)
        if used >= cutoff:
            continue
        name = next(iter(image.get("RepoTags") or []), None) or str(image["Id"])[7:19]
        if not dry_run:
            problem = engine.remove_image(str(image["Id"]))
            if problem:
                result.notes.append(f"{name}: {problem}; left alone")
                continue
        result.images.append(name)


def _size(folder: Path) -> int:
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total
