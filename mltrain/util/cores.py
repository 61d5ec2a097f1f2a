"""How many cores this process may use: what sizes the snapshot's hashing pool and its stat helpers."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
