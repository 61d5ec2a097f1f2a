"""A config group's registry: each kind's config dataclass and implementation, imported on first use.

``mltrain.targets``, ``mltrain.environments`` and ``mltrain.frameworks`` each keep one, one line
per kind; the structured-config schemas (``mltrain.config.schema``), the CLI's help and every
"valid choices" message are derived from them. Entries are ``"module:Class"`` strings so that
listing the kinds imports nothing, and checking a config imports only its own kind's config
module: a target's SDK (docker, paramiko, pyspark) never slows down ``mltrain --help``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from mltrain.errors import ConfigError

if TYPE_CHECKING:
    from mltrain.config.groups import GroupConfig

C = TypeVar("C", bound="GroupConfig")
T = TypeVar("T")


class Entry(NamedTuple):
    config: str  # "module:Class" of the config dataclass (a light module: validation imports it)
    impl: str  # "module:Class" of the implementation (an Executor, an Environment, a Framework)


def load(path: str) -> type:
    """The class ``module:Class`` names (the module is imported now)."""
    module_name, _, class_name = path.partition(":")
    found = getattr(importlib.import_module(module_name), class_name)  # the class named, not a probe
    if not isinstance(found, type):
        raise TypeError(f"{path} is not a class")
    return found


class Registry(Mapping[str, "type[C]"], Generic[C, T]):
    """``kind -> config dataclass`` (a Mapping, as the schemas read it), and ``impl(kind)`` for the code.

    ``group`` is the config group it serves (``compute``); ``config_base`` and ``impl_base`` name,
    as ``module:Class``, what every config dataclass and every implementation subclasses (checked
    when one is first loaded, with the implementation's ``kind`` and ``config_class``: a mistyped
    registration fails loudly, once).
    """

    def __init__(self, group: str, *, config_base: str, impl_base: str) -> None:
        self.group = group
        self._config_base = config_base
        self._impl_base = impl_base
        self._entries: dict[str, Entry] = {}
        self._configs: dict[str, type[C]] = {}
        self._impls: dict[str, type[T]] = {}

    def add(self, kind: str, *, config: str, impl: str) -> None:
        """Register ``kind`` (again with the same classes is a no-op; with others, an error)."""
        entry = Entry(config, impl)
        if self._entries.get(kind, entry) != entry:
            raise ValueError(f"{self.group} type {kind!r} is registered already, as {self._entries[kind]}")
        self._entries[kind] = entry

    # ---------------------------------------------------------------- Mapping
    def __getitem__(self, kind: str) -> type[C]:
        return self.config_class(kind)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, kind: object) -> bool:
        return kind in self._entries

    # ------------------------------------------------------------------ kinds
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def config_modules(self) -> tuple[str, ...]:
        """The modules that hold the config dataclasses (not imported: for the composition cache's key)."""
        return tuple(dict.fromkeys(entry.config.partition(":")[0] for entry in self._entries.values()))

    def unknown(self, kind: object) -> ConfigError:
        return ConfigError(f"{self.group}.type={kind!r} is not known; valid types: {', '.join(sorted(self))}")

    def _entry(self, kind: str) -> Entry:
        try:
            return self._entries[kind]
        except KeyError:
            raise self.unknown(kind) from None

    def config_class(self, kind: str) -> type[C]:
        """The config dataclass of ``kind`` (imports its config module only)."""
        if kind not in self._configs:
            import dataclasses

            cls, base = load(self._entry(kind).config), load(self._config_base)
            if not (dataclasses.is_dataclass(cls) and issubclass(cls, base)):
                raise TypeError(f"{self.group} type {kind!r}: {cls.__qualname__} is not a {base.__name__} dataclass")
            default = {f.name: f.default for f in dataclasses.fields(cls)}.get("type")
            if default != kind:
                raise TypeError(f"{self.group} type {kind!r}: {cls.__qualname__}.type defaults to {default!r}")
            self._configs[kind] = cls  # type: ignore[assignment]  # checked: a GroupConfig of this group
        return self._configs[kind]

    def impl(self, kind: str) -> type[T]:
        """The implementation of ``kind`` (imports its module, with whatever that needs)."""
        if kind not in self._impls:
            cls = load(self._entry(kind).impl)
            base = load(self._impl_base)
            if not issubclass(cls, base):
                raise TypeError(f"{self.group} type {kind!r}: {cls.__qualname__} does not subclass {base.__name__}")
            # declared by the class itself: a subclass of another target must not pass for its parent
            declared = (cls.__dict__.get("kind"), cls.__dict__.get("config_class"))
            if declared != (kind, self.config_class(kind)):
                raise TypeError(f"{self.group} type {kind!r}: {cls.__qualname__} declares kind={declared[0]!r}, "
                                f"config_class={declared[1]!r}; the registry says {kind!r}, {self._entry(kind).config}")
            self._impls[kind] = cls  # type: ignore[assignment]  # checked: a subclass of the group's base
        return self._impls[kind]
