"""Disjoint GPUs for a sweep's concurrent trials on one host (local, ssh, docker): HyperDrive's per-node concurrency.

A sweep whose trials ask for GPUs (``resources.gpus``) on a target that lists its host's devices
(``Executor.gpu_inventory()``; Ray and Spark place work themselves and answer None) shares those devices
out: each trial takes the devices it needs from one pool per target -- a count (any free ones), explicit ids
(those, once free) or ``all`` -- runs with exactly those (its spec's request becomes those ids, so the target
maps them to ``CUDA_VISIBLE_DEVICES`` or a device request), and gives them back when its run has ended.
Trial k waits until enough devices are free; ``max_concurrent`` still bounds how many trials run at once.
A request the host can never satisfy is left to the target, which refuses it in one line.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mltrain.config.resources import ResourceRequest
    from mltrain.config.spec import RunSpec
    from mltrain.store.workspace import Workspace


class GpuPool:
    """The devices of one host, shared by the trials running there."""

    def __init__(self, devices: tuple[int, ...]) -> None:
        self.devices = devices
        self._free = set(devices)
        self._changed = threading.Condition()

    def fits(self, request: ResourceRequest) -> bool:
        """Could the host ever give this request (else the target refuses it, and no trial should wait)?"""
        if request.gpu_ids:
            return set(request.gpu_ids) <= set(self.devices)
        return bool(self.devices) and request.gpu_count <= len(self.devices)

    def _pick(self, request: ResourceRequest) -> tuple[int, ...] | None:
        if request.all_gpus:
            return self.devices if self._free == set(self.devices) else None
        if request.gpu_ids:
            return request.gpu_ids if set(request.gpu_ids) <= self._free else None
        free = sorted(self._free)
        return tuple(free[:request.gpu_count]) if len(free) >= request.gpu_count else None

    def take(self, request: ResourceRequest) -> tuple[int, ...]:
        """The devices this trial gets, once they are free (blocks until then)."""
        with self._changed:
            while (picked := self._pick(request)) is None:
                self._changed.wait()
            self._free -= set(picked)
            return picked

    def give(self, devices: tuple[int, ...]) -> None:
        with self._changed:
            self._free |= set(devices)
            self._changed.notify_all()


class GpuPools:
    """One pool per target a sweep's trials go to, made when the first trial asking for GPUs comes."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._pools: dict[str, GpuPool | None] = {}
        self._lock = threading.Lock()

    def _pool(self, spec: RunSpec) -> GpuPool | None:
        key = repr(spec.compute)
        with self._lock:
            if key not in self._pools:
                from mltrain.targets import executor_for

                found = executor_for(spec.compute, self.workspace).gpu_inventory()
                self._pools[key] = GpuPool(found.indices) if found is not None and not found.error else None
            return self._pools[key]

    @contextmanager
    def lease(self, spec: RunSpec) -> Iterator[RunSpec]:
        """``spec`` with the devices its trial gets (held for the ``with`` block), or as it is where no pool applies."""
        request = spec.resources
        pool = self._pool(spec) if request.wants_gpus else None
        if pool is None or not pool.fits(request):
            yield spec
            return
        devices = pool.take(request)
        try:
            given = dataclasses.replace(request, gpu_count=len(devices), gpu_ids=devices, all_gpus=False)
            yield dataclasses.replace(spec, resources=given)
        finally:
            pool.give(devices)
