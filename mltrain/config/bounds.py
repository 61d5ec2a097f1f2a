"""Bound what a config file may cost before Hydra loads it: its size, nesting, and node count with aliases expanded.

Hydra hands each config file to ``OmegaConf.load``, which builds an
OmegaConf node per YAML node (~15k a second) *after* expanding aliases:
nine levels of ``b: &b [*a, *a, ...]`` ("billion laughs") are 80 nodes in
the file and 387 million once expanded, and the composition never ends.
So every file Hydra reads -- the project's ``./conf``, ``-cd DIR``,
mltrain's packaged conf, ``hydra.searchpath`` additions -- is checked first
by streaming libyaml's parser events, counting an alias as the size of its
anchor, and stopping at the first event past a bound. A bomb is refused in
about a millisecond; a file within the bounds costs one extra parse.

The check sits in Hydra's config sources (``file://`` and ``pkg://``), so it
sees exactly the files a composition reads, however they were found.
Measured here: checking mltrain's 13 packaged files takes ~0.8 ms (a
composition takes ~50 ms), a file on disk is checked once per process per
version (its stat), and a repeated ``mltrain ...`` that the composition
cache answers reads no config file at all.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import TYPE_CHECKING, Final

from mltrain import hydra_compat
from mltrain.errors import ConfigError

if TYPE_CHECKING:
    from hydra.plugins.config_source import ConfigResult

MAX_CONFIG_BYTES: Final = 1 << 20
"""A config file larger than this is refused (configs are a few KiB; data belongs in files the script reads)."""
MAX_CONFIG_NODES: Final = 10_000
"""Keys and values in one config file, YAML aliases expanded where they are used (OmegaConf builds ~15k a second)."""
MAX_CONFIG_DEPTH: Final = 64
"""Nesting levels in one config file (OmegaConf recurses once per level)."""

_checked: dict[tuple[str, int, int, int], None] = {}  # (path, size, mtime_ns, inode) of files that passed
_lock = threading.Lock()


def check_text(text: str, where: str) -> None:
    """Raise a one-line ConfigError if ``text`` (a config file's content) exceeds the bounds.

    Streams the parser's events and stops at the first one past a bound, so the
    cost is at most a few thousand events, whatever the file holds. Text that is
    not valid YAML passes: OmegaConf reports that in its own words when it loads it.
    """
    import yaml

    if len(text) > MAX_CONFIG_BYTES:  # characters <= bytes; the callers bound the bytes first
        raise _too_big(where, len(text.encode("utf-8", "surrogateescape")))
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    total = 0
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, total before it) of each collection not yet closed
    sizes: dict[str, int] = {}  # an anchor's node count, aliases inside it expanded
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.ScalarEvent):
                total += 1
                if event.anchor:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in sizes:
                    if any(anchor == event.anchor for anchor, _ in open_nodes):
                        raise ConfigError(f"config file {where}: the YAML alias *{event.anchor} is inside its own "
                                          "anchor, so it would expand forever; remove it")
                    return  # an undefined alias: OmegaConf reports it
                total += sizes[event.anchor]
            elif isinstance(event, yaml.CollectionStartEvent):
                open_nodes.append((event.anchor, total))
                total += 1
                if len(open_nodes) > MAX_CONFIG_DEPTH:
                    raise _too_deep(where)
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, before = open_nodes.pop()
                if anchor:
                    sizes[anchor] = total - before
            if total > MAX_CONFIG_NODES:
                raise ConfigError(
                    f"config file {where} has more than {MAX_CONFIG_NODES:,} keys and values (YAML aliases *name "
                    "expanded where they are used); keep data in files the script reads, or repeat less"
                )
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml's own limit (1000); PyYAML's loader would recurse that deep
            raise _too_deep(where) from None
        return  # not valid YAML: OmegaConf's loader reports where (see compose.translate_hydra_error)


def _too_deep(where: str) -> ConfigError:
    return ConfigError(f"config file {where} nests more than {MAX_CONFIG_DEPTH} levels deep; flatten it")


def _too_big(where: str, size: int) -> ConfigError:
    return ConfigError(
        f"config file {where} is {size / 1024**2:.1f} MiB, over the {MAX_CONFIG_BYTES // 1024**2} MiB a config "
        "file may hold; keep data in files the script reads, not in the config"
    )


def check_file(path: str) -> None:
    """:func:`check_text` for a file on disk, at most once per version of it (its stat) in this process."""
    try:
        st = os.stat(path)
    except OSError:
        return  # Hydra reports a missing or unreadable file itself
    stamp = (path, st.st_size, st.st_mtime_ns, st.st_ino)
    if stamp in _checked:
        return
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block Hydra's read forever
        raise ConfigError(f"config file {path} is not a regular file; replace it with one")
    if st.st_size > MAX_CONFIG_BYTES:
        raise _too_big(path, st.st_size)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        return
    if len(data) > MAX_CONFIG_BYTES:  # grew since the stat, or not a regular file
        raise _too_big(path, len(data))
    check_text(data.decode("utf-8", "surrogateescape"), path)
    with _lock:
        _checked[stamp] = None


class FileConfigSource(hydra_compat.FileConfigSource):
    """Hydra's ``file://`` source, checking each file before loading it (same name: see :func:`install`)."""

    def load_config(self, config_path: str) -> ConfigResult:
        check_file(os.path.realpath(os.path.join(self.path, hydra_compat.config_file_name(self, config_path))))
        return super().load_config(config_path)


class ImportlibResourcesConfigSource(hydra_compat.ImportlibResourcesConfigSource):
    """Hydra's ``pkg://`` source, checking each file before loading it."""

    def load_config(self, config_path: str) -> ConfigResult:
        from importlib import resources

        name = hydra_compat.config_file_name(self, config_path)
        where = f"pkg://{self.path}/{name}"
        try:
            with resources.files(self.path).joinpath(name).open("rb") as handle:
                data = handle.read(MAX_CONFIG_BYTES + 1)
        except (OSError, ValueError, TypeError, ModuleNotFoundError):
            data = None  # Hydra reports it
        if data is not None:
            if len(data) > MAX_CONFIG_BYTES:
                raise _too_big(where, len(data))
            check_text(data.decode("utf-8", "surrogateescape"), where)
        return super().load_config(config_path)


def install() -> None:
    """Make Hydra read config files through the checking sources (idempotent).

    The classes keep Hydra's names, so a later ``register`` of Hydra's own (a re-created
    plugin registry) is the no-op it expects.
    """
    hydra_compat.replace_config_source(FileConfigSource)
    hydra_compat.replace_config_source(ImportlibResourcesConfigSource)
