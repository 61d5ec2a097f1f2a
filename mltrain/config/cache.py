"""Remember composed configs, so a repeated ``mltrain ...`` skips importing and running Hydra.

Composition is a pure function of the config files, the overrides and the code
that composes (Hydra, mltrain's schema). The key hashes exactly those: every
file under the project's conf dir and mltrain's packaged conf (path, size,
mtime_ns), the resolved project conf dir, the config name, the overrides, and
the stat of mltrain's schema modules (``schema_files``: the schema and every
registered kind's config dataclass) and Hydra's package. Any edit, added or
removed file, or upgrade changes the key; an entry is never updated in place.
A file changed in the last two seconds could change again without moving its
mtime, so such a composition is used but not stored (git's "racily clean" rule).

What is stored is the composed job config *unresolved* (``${oc.env:...}`` stays
an interpolation and is resolved and validated afresh on every run), its YAML
as stored with a run, and -- for a config with no interpolation at all, whose
values cannot change between runs -- the validated values, so such a hit needs
neither Hydra nor OmegaConf. A config that uses a resolver only Hydra
registers (``${now:...}``) is not cached: resolving it needs Hydra loaded.
Only configs that composed and validated are stored, so every error still
comes from Hydra and the schema.
``MLTRAIN_COMPOSE_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltrain.environments.base import default_cache_dir
from mltrain.errors import ConfigError

FORMAT = 2
MAX_ENTRIES = 512  # each is a few KiB; past this the oldest half goes
_RESOLVER = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*:")


def enabled() -> bool:
    return os.environ.get("MLTRAIN_COMPOSE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


OWN_CONF = os.path.join(".mltrain", "conf")  # mltrain's config in a project whose ./conf is a Hydra app's
MLTRAIN_GROUPS = ("compute", "environment", "framework")


def project_conf_dir() -> str | None:
    """The directory the search-path plugin puts ahead of the packaged conf (same rule).

    In order: ``$MLTRAIN_CONFIG_DIR`` (``-cd DIR``), which must exist; ``./.mltrain/conf``; ``./conf``,
    unless it is a Hydra app's own config (its ``config.yaml`` is not mltrain's: it does not build on
    ``mltrain_schema``), which mltrain then leaves alone. An app's ``./conf`` that also holds one of
    mltrain's groups is ambiguous: one line says where mltrain's settings go instead.
    """
    explicit = os.environ.get("MLTRAIN_CONFIG_DIR")
    if explicit:
        directory = os.path.abspath(explicit)
        if os.path.isdir(directory):
            return directory
        raise ConfigError(f"config dir {directory} (-cd / $MLTRAIN_CONFIG_DIR) is not a directory; "
                          "point it at the folder holding your config groups")
    own = os.path.abspath(OWN_CONF)
    if os.path.isdir(own):
        return own
    directory = os.path.abspath("conf")
    if not os.path.isdir(directory):
        return None
    if not is_hydra_app_conf(directory):
        return directory
    groups = [g for g in MLTRAIN_GROUPS if os.path.isdir(os.path.join(directory, g))]
    if groups:
        raise ConfigError(
            f"./conf is a Hydra app's config (its config.yaml is not mltrain's) but holds mltrain's group "
            f"{groups[0]}/: move mltrain's options to {OWN_CONF}/{groups[0]}/ (see README, Hydra apps)")
    return None


def is_hydra_app_conf(directory: str) -> bool:
    """``directory/config.yaml`` exists and is not mltrain's primary config (which names ``mltrain_schema``)."""
    try:
        with open(os.path.join(directory, "config.yaml"), encoding="utf-8", errors="replace") as handle:
            text = handle.read(1 << 20)
    except OSError:
        return False
    return "mltrain_schema" not in text


RACY_NS = 2_000_000_000  # a file this young may change again within one mtime tick: don't cache yet


@dataclass(frozen=True)
class CacheKey:
    digest: str
    newest_mtime_ns: int  # of the files the key covers

    def settled(self) -> bool:
        """False while a covered file is young enough that a same-size rewrite could keep its mtime
        (git's "racily clean" problem): such a composition is used but not stored."""
        return time.time_ns() - self.newest_mtime_ns > RACY_NS


def _files(root: str) -> list[tuple[str, int, int, int]]:
    """(path, size, mtime_ns, inode) of every file Hydra could read under ``root``: symlinked folders
    included, as Hydra follows them (each real folder once, so a link cycle ends)."""
    found = []
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                st = os.stat(path)
                found.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns, st.st_ino))
    return found


def _stat(path: str | None) -> tuple[str, int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_size, st.st_mtime_ns, st.st_ino


def key(overrides: Sequence[str], config_name: str | None) -> CacheKey:
    project = project_conf_dir()
    hydra_spec = importlib.util.find_spec("hydra")
    project_files = _files(project) if project else []
    packaged_files = [f for folder in _packaged_conf_dirs() for f in _files(folder)]
    from mltrain.config.schema import schema_files

    code = [*(_stat(path) for path in schema_files()), _stat(hydra_spec.origin if hydra_spec else None)]
    material = {
        "format": FORMAT,
        "config_name": config_name,
        "overrides": list(overrides),
        "project": project,
        "files": [project_files, packaged_files],
        "code": code,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    stamps = [f[2] for f in project_files + packaged_files] + [c[2] for c in code if c]
    return CacheKey(digest, max(stamps, default=0))


def _packaged_conf_dirs() -> list[str]:
    """Where ``mltrain.conf`` lives: inside the package when installed, the repository's ``conf/`` in an
    editable install (the package-dir mapping puts it there), found as Hydra's ``pkg://`` finds it."""
    spec = importlib.util.find_spec("mltrain.conf")
    return list(spec.submodule_search_locations or []) if spec else []


def _entry(cache_key: CacheKey) -> Path:
    return default_cache_dir() / "compose" / f"{cache_key.digest[:40]}.json"


@dataclass(frozen=True)
class Entry:
    job: dict[str, Any]  # the composed job config, interpolations unresolved
    yaml: str  # the same as stored with a run
    validated: dict[str, Any] | None  # the checked values, when resolving could not change them


def load(cache_key: CacheKey) -> Entry | None:
    """The entry stored for ``cache_key``, or None (missing, unreadable, or another format)."""
    try:
        data = json.loads(_entry(cache_key).read_text(encoding="utf-8"))
        if data.get("key") != cache_key.digest:
            return None
        return Entry(job=dict(data["job"]), yaml=str(data["yaml"]), validated=data.get("validated"))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _resolvers(job: dict[Any, Any]) -> list[str] | None:
    """Resolver names used by interpolations; None when there is no interpolation at all."""
    text = json.dumps(job)
    return _RESOLVER.findall(text) if "${" in text else None


def store(cache_key: CacheKey, job: dict[Any, Any], yaml: str, validated: dict[str, Any]) -> None:
    """Write atomically; a cache that cannot be written is skipped, never an error.

    Not stored: a config using a resolver only Hydra registers. The validated
    values are kept only for a config with no interpolation, whose values
    cannot change between runs.
    """
    resolvers = _resolvers(job)
    if not cache_key.settled() or not all(name.startswith("oc.") for name in resolvers or ()):
        return
    entry = {"key": cache_key.digest, "job": job, "yaml": yaml, "validated": validated if resolvers is None else None}
    path = _entry(cache_key)
    with contextlib.suppress(OSError, TypeError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(entry, handle)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _prune(path.parent)


def _prune(folder: Path) -> None:
    entries = [e for e in os.scandir(folder) if e.name.endswith(".json")]
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda e: e.stat().st_mtime)
    for entry in entries[: len(entries) // 2]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
