"""The ``resources`` block: what a run asks for (GPUs, CPUs, memory), the same words on every target.

Parsed once here into a ``ResourceRequest`` so each target maps one typed value to its own mechanism
(``CUDA_VISIBLE_DEVICES``, Docker device requests, Ray's ``entrypoint_num_*``, Spark's resource conf)
and never re-reads the raw config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mltrain.errors import ConfigError

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
MAX_GPUS = 1024


@dataclass
class ResourcesConfig:
    """The config node (Hydra schema). ``gpus``: null (none asked), a count, ``all``, or a list of ids."""

    gpus: Any = None
    cpus: float | None = None
    memory: Any = None  # bytes, or a size with a unit: 512M, 16G, 1.5GiB


@dataclass(frozen=True)
class ResourceRequest:
    """A checked request. ``gpu_ids`` set means those devices exactly; ``all_gpus`` every device the host has."""

    gpu_count: int = 0
    gpu_ids: tuple[int, ...] = ()
    all_gpus: bool = False
    cpus: float | None = None
    memory_bytes: int | None = None

    @property
    def wants_gpus(self) -> bool:
        return self.all_gpus or self.gpu_count > 0

    def describe(self) -> str:
        parts = []
        if self.all_gpus:
            parts.append("gpus=all")
        elif self.gpu_ids:
            parts.append(f"gpus={','.join(map(str, self.gpu_ids))}")
        elif self.gpu_count:
            parts.append(f"gpus={self.gpu_count}")
        if self.cpus is not None:
            parts.append(f"cpus={self.cpus:g}")
        if self.memory_bytes is not None:
            parts.append(f"memory={format_bytes(self.memory_bytes)}")
        return " ".join(parts) or "none requested"

    def to_dict(self) -> dict[str, Any]:
        return {"gpu_count": self.gpu_count, "gpu_ids": list(self.gpu_ids), "all_gpus": self.all_gpus,
                "cpus": self.cpus, "memory_bytes": self.memory_bytes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResourceRequest:
        return cls(**{**data, "gpu_ids": tuple(data.get("gpu_ids", ()))})

    @classmethod
    def parse(cls, config: ResourcesConfig) -> ResourceRequest:
        gpu_count, gpu_ids, all_gpus = _gpus(config.gpus)
        cpus = config.cpus
        if cpus is not None and not 0 < cpus <= 65536:
            raise ConfigError(f"resources.cpus={cpus:g}: must be a positive number of CPUs, e.g. resources.cpus=4")
        return cls(gpu_count=gpu_count, gpu_ids=gpu_ids, all_gpus=all_gpus, cpus=cpus,
                   memory_bytes=parse_memory(config.memory))


def _gpus(value: Any) -> tuple[int, tuple[int, ...], bool]:
    hint = "use resources.gpus=N, resources.gpus=all or resources.gpus=[0,2]"
    if value is None or value is False:
        return 0, (), False
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return 0, (), True
        if text.isdigit():
            value = int(text)
        elif re.fullmatch(r"\d+(\s*,\s*\d+)+", text):
            value = [int(v) for v in text.split(",")]
        else:
            raise ConfigError(f"resources.gpus={value!r}: not a GPU count or list; {hint}")
    if isinstance(value, bool):
        raise ConfigError(f"resources.gpus={value}: {hint}")
    if isinstance(value, int):
        if not 0 <= value <= MAX_GPUS:
            raise ConfigError(f"resources.gpus={value}: must be between 0 and {MAX_GPUS}; {hint}")
        return value, (), False
    if isinstance(value, list | tuple):
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_GPUS for v in value):
            raise ConfigError(f"resources.gpus={list(value)}: GPU ids are small non-negative integers; {hint}")
        if len(set(value)) != len(value):
            raise ConfigError(f"resources.gpus={list(value)}: a GPU id is listed twice")
        return len(value), tuple(value), False
    raise ConfigError(f"resources.gpus={value!r}: {hint}")


def parse_memory(value: Any) -> int | None:
    """``16G`` / ``512MiB`` / ``1073741824`` as bytes (binary units); anything else is one clear error."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _MEMORY.match(str(value))
        if not match:
            raise ConfigError(f"resources.memory={value!r}: not a size; use bytes or a unit, e.g. "
                              "resources.memory=16G or resources.memory=512M")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ConfigError(f"resources.memory={value!r}: must be more than 0, e.g. resources.memory=16G")
    return size


def format_bytes(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit.lower()]
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def pick_gpus(request: ResourceRequest, available: tuple[int, ...], where: str) -> tuple[int, ...]:
    """The device indices a job gets from ``available`` (the host's, or a sweep's free share): the ids asked
    for, the first ``gpu_count``, or all. More than there are is one line, before anything starts."""
    listed = f"{len(available)} GPU{'s' if len(available) != 1 else ''}" + (
        f" ({','.join(map(str, available))})" if available else "")
    if request.all_gpus:
        if not available:
            raise ConfigError(f"resources.gpus=all: {where} lists no GPU (nvidia-smi -L); drop resources.gpus "
                              "or use a target with GPUs")
        return available
    if request.gpu_ids:
        missing = [i for i in request.gpu_ids if i not in available]
        if missing:
            raise ConfigError(f"resources.gpus={','.join(map(str, request.gpu_ids))}: {where} has no GPU "
                              f"{','.join(map(str, missing))}; it lists {listed}")
        return request.gpu_ids
    if request.gpu_count > len(available):
        raise ConfigError(f"resources.gpus={request.gpu_count}: {where} has {listed}; ask for at most "
                          f"{len(available)}" + (" or use a target with GPUs" if not available else ""))
    return available[:request.gpu_count]
