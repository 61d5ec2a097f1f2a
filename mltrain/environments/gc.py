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
from typing import TYPE_CHECKING, Any

from mltrain.environments.base import default_cache_dir
from mltrain.errors import TargetError

if TYPE_CHECKING:
    from mltrain.targets.docker.engine import Engine

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


def _last_uses() -> dict[str, float]:
    """Every mark's fingerprint and time, read once per gc."""
    with contextlib.suppress(OSError), os.scandir(_marks()) as entries:
        return {e.name: e.stat().st_mtime for e in entries}
    return {}


def _last_used(uses: dict[str, float], fingerprint_or_prefix: str) -> float | None:
    """The newest mark for a fingerprint, or for any fingerprint starting with a (venv folder's) prefix."""
    if fingerprint_or_prefix in uses:
        return uses[fingerprint_or_prefix]
    return max((t for fp, t in uses.items() if fp.startswith(fingerprint_or_prefix)), default=None)


@dataclass
class Pruned:
    venvs: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    freed: int = 0  # bytes, venvs only (an image's layers may be shared)
    notes: list[str] = field(default_factory=list)
    images_checked: bool = True  # False: no engine answered (and none was asked for by name)


def prune(days: float, keep: Iterable[str], *, engine: Engine, engine_required: bool, dry_run: bool) -> Pruned:
    """Remove venvs and images not used for ``days``; ``keep``: fingerprints that must stay.

    An engine that does not answer is an error only if the user named it (``engine_required``).
    """
    cutoff = time.time() - days * 86400
    kept = set(keep)
    uses = _last_uses()
    result = Pruned()
    _prune_venvs(cutoff, kept, uses, dry_run, result)
    try:
        images = engine.images(label=MANAGED_LABEL)
    except TargetError:
        if engine_required:
            raise
        result.images_checked = False
        return result
    _prune_images(engine, images, cutoff, kept, uses, dry_run, result)
    return result


def _prune_venvs(cutoff: float, kept: set[str], uses: dict[str, float], dry_run: bool, result: Pruned) -> None:
    envs = default_cache_dir() / "envs"
    if not envs.is_dir():
        return
    for folder in sorted(envs.iterdir()):
        if not folder.name.startswith(VENV_PREFIX) or not folder.is_dir():
            continue
        key = folder.name[len(VENV_PREFIX):]
        if any(fp.startswith(key) for fp in kept):
            continue
        used = _last_used(uses, key) or folder.stat().st_mtime
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
    # The lock file stays: a builder already waiting on it would otherwise lock a deleted inode while the
    # next one creates a new file and locks that, and both would build the same venv at once.
    return True


def _prune_images(engine: Engine, images: list[dict[str, Any]], cutoff: float, kept: set[str],
                  uses: dict[str, float], dry_run: bool, result: Pruned) -> None:
    for image in images:
        fingerprint = (image.get("Labels") or {}).get(FINGERPRINT_LABEL)
        if not fingerprint or fingerprint in kept:
            continue
        used = _last_used(uses, fingerprint) or float(image.get("Created") or 0)
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
