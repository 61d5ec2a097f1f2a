"""What hardware a job's host has, and what the job saw of it: GPUs (``nvidia-smi``), CPUs, memory.

Everything here runs through a ``Runner`` (``mltrain.hosts.runner``), so the same code asks this machine
(compute=local, a local Docker engine) and an SSH host (compute=ssh, through its helper). Two uses:

* ``inventory(runner)``: the GPUs a host lists, asked once per executor -- the devices a GPU request is
  checked against (``gpus=2`` where one exists is refused in one line) and a sweep's pool of devices
  (``mltrain.sweep.gpus``).
* ``record(runner, ...)``: the run's ``hardware`` record (``runs.hardware``): the GPUs the job was given
  (names, memory, driver, CUDA version), CPU count and memory, with the limits the target applied.
  ``runs show`` prints it (``describe``) and ``runs diff`` compares two (``differences``).

``nvidia-smi``'s output is input from another machine: bounded, parsed field by field, never executed.
A host without ``nvidia-smi`` has no GPUs, as far as mltrain can tell.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mltrain.hosts.runner import Runner

QUERY = ("nvidia-smi", "--query-gpu=index,name,memory.total,driver_version,uuid", "--format=csv,noheader,nounits")
TIMEOUT = 15.0  # seconds for one nvidia-smi; a wedged driver must not hang a submit
MAX_TEXT = 64 * 1024  # characters of its output read at most
MAX_GPUS = 1024
_CUDA = re.compile(r"CUDA Version:\s*([0-9][0-9.]{0,15})")
HOST_FACTS_SECONDS = 60.0  # how long a host's name, CPU count and memory are taken as known
_HOST_FACTS: dict[tuple[str, str], tuple[float, tuple[str | None, int | None, int | None]]] = {}
_HOST_LOCK = threading.Lock()


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int | None
    driver: str
    uuid: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "memory_mib": self.memory_mib, "driver": self.driver,
                "uuid": self.uuid}


@dataclass(frozen=True)
class Inventory:
    """The GPUs one host lists (empty: none, or no ``nvidia-smi``), and where that was asked."""

    host: str
    gpus: tuple[Gpu, ...] = ()
    cuda: str | None = None
    error: str | None = None  # nvidia-smi is there but failed: why (a GPU request is refused with it)

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(g.index for g in self.gpus)


def _clean(text: str, limit: int = 200) -> str:
    return "".join(ch for ch in text if ch.isprintable())[:limit].strip()


def parse_query(text: str) -> tuple[Gpu, ...]:
    """``index, name, memory.total, driver_version, uuid`` lines (csv, noheader, nounits); odd lines skipped."""
    gpus: list[Gpu] = []
    for line in text[:MAX_TEXT].splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        memory = parts[2].split()[0] if parts[2] else ""
        gpus.append(Gpu(int(parts[0]), _clean(parts[1]), int(memory) if memory.isdigit() else None,
                        _clean(parts[3], 40), _clean(parts[4], 80) if len(parts) > 4 else ""))
        if len(gpus) >= MAX_GPUS:
            break
    return tuple(gpus)


def inventory(runner: Runner) -> Inventory:
    """The GPUs ``runner``'s machine lists (``nvidia-smi --query-gpu``), and its CUDA version."""
    from mltrain.hosts.runner import StartError

    path, executable = runner.which("nvidia-smi")
    if path is None or not executable:
        return Inventory(runner.name)
    try:
        done = runner.run([path, *QUERY[1:]], timeout=TIMEOUT)
    except StartError as exc:
        return Inventory(runner.name, error=f"nvidia-smi on {runner.name}: {exc}")
    if done.returncode != 0:
        return Inventory(runner.name, error=f"nvidia-smi on {runner.name} failed: {_clean(done.last_line())}")
    gpus = parse_query(done.stdout)
    cuda = None
    if gpus:
        try:
            header = runner.run([path], timeout=TIMEOUT)
            found = _CUDA.search(header.stdout[:MAX_TEXT])
            cuda = found.group(1) if found else None
        except StartError:
            pass
    return Inventory(runner.name, gpus, cuda)


def _host(runner: Runner) -> tuple[str | None, int | None, int | None]:
    """The host's name, CPU count and memory in bytes (None where it does not say). This machine is asked at
    most once a minute per process -- a sweep's trials here record the same facts without a subprocess each;
    another host is asked every time (a name such as an SSH host's address may reach another machine later)."""
    from mltrain.hosts.runner import LocalRunner

    if not isinstance(runner, LocalRunner):
        return _ask_host(runner)
    key = (type(runner).__name__, runner.name)
    now = time.monotonic()
    with _HOST_LOCK:
        known = _HOST_FACTS.get(key)
    if known is not None and now - known[0] < HOST_FACTS_SECONDS:
        return known[1]
    facts = _ask_host(runner)
    with _HOST_LOCK:
        _HOST_FACTS[key] = (now, facts)
    return facts


def _ask_host(runner: Runner) -> tuple[str | None, int | None, int | None]:
    from mltrain.hosts.runner import StartError

    name = cpus = memory = None
    try:
        done = runner.run(["sh", "-c", "getconf _NPROCESSORS_ONLN; uname -n"], timeout=TIMEOUT)
        lines = done.stdout[:1000].splitlines()
        if done.returncode == 0 and len(lines) >= 2:
            cpus = int(lines[0]) if lines[0].strip().isdigit() else None
            name = _clean(lines[1], 100) or None
    except StartError:
        pass
    meminfo = runner.read_text("/proc/meminfo") or ""
    found = re.search(r"^MemTotal:\s+(\d{1,15})\s*kB", meminfo[:MAX_TEXT], re.MULTILINE)
    if found:
        memory = int(found.group(1)) * 1024
    return name, cpus, memory


def record(runner: Runner, found: Inventory, gpu_ids: tuple[int, ...] | None, *,
           cpus_limit: float | None = None, memory_limit: int | None = None) -> dict[str, Any]:
    """The run's hardware record: the GPUs it was given (``gpu_ids``; None: every one the host has),
    the host's CPU count and memory, and the limits the target put on them."""
    hostname, cpus, memory = _host(runner)
    given = [g for g in found.gpus if gpu_ids is None or g.index in gpu_ids]
    data: dict[str, Any] = {
        "host": found.host,
        "hostname": hostname,
        "gpus": [g.to_dict() for g in given],
        "gpu_count": len(given),
        "driver": given[0].driver if given else None,
        "cuda": found.cuda if given else None,
        "cpus": cpus,
        "memory_bytes": memory,
    }
    if cpus_limit is not None:
        data["cpus_limit"] = cpus_limit
    if memory_limit is not None:
        data["memory_limit_bytes"] = memory_limit
    return data


def _gib(size: Any) -> str:
    return f"{size / 1024**3:.1f} GiB" if isinstance(size, int) else "-"


def describe(hardware: Mapping[str, Any]) -> list[str]:
    """The record as ``runs show`` lines (label, value)."""
    gpus = hardware.get("gpus") or []
    names: dict[str, int] = {}
    for gpu in gpus:
        memory = gpu.get("memory_mib")
        label = f"{gpu.get('name')}" + (f" {memory // 1024} GiB" if isinstance(memory, int) else "")
        names[label] = names.get(label, 0) + 1
    gpu_line = ", ".join(f"{n} x {label}" for label, n in names.items()) or "none"
    if gpus:
        gpu_line += f" (driver {hardware.get('driver') or '-'}, CUDA {hardware.get('cuda') or '-'})"
    cpus = hardware.get("cpus")
    limits = []
    if hardware.get("cpus_limit") is not None:
        limits.append(f"limited to {hardware['cpus_limit']:g} CPUs")
    if hardware.get("memory_limit_bytes") is not None:
        limits.append(f"memory limited to {_gib(hardware['memory_limit_bytes'])}")
    host_line = f"{cpus if cpus is not None else '-'} CPUs, {_gib(hardware.get('memory_bytes'))} memory"
    if limits:
        host_line += f" ({', '.join(limits)})"
    where = hardware.get("hostname") or hardware.get("host") or "-"
    return [f"gpus        {gpu_line}", f"host        {where}: {host_line}"]


COMPARED = ("gpu_count", "gpus.name", "gpus.memory_mib", "driver", "cuda", "cpus", "memory_bytes", "cpus_limit",
            "memory_limit_bytes")


def _comparable(hardware: Mapping[str, Any] | None) -> dict[str, Any]:
    data = dict(hardware or {})
    gpus = data.get("gpus") or []
    return {
        "gpu_count": data.get("gpu_count", len(gpus)),
        "gpus.name": [g.get("name") for g in gpus],
        "gpus.memory_mib": [g.get("memory_mib") for g in gpus],
        **{k: data.get(k) for k in COMPARED if "." not in k and k != "gpu_count"},
    }


def differences(first: Mapping[str, Any] | None, second: Mapping[str, Any] | None) -> list[str]:
    """``runs diff``'s hardware lines: each compared field that differs, ``key: a -> b``."""
    a, b = _comparable(first), _comparable(second)
    return [f"{key}: {a[key]!r} -> {b[key]!r}" for key in COMPARED if a[key] != b[key]]
