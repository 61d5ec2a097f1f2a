"""``framework=distributed``: one job as ``nproc_per_node`` cooperating processes (times ``nnodes``).

mltrain starts the ranks itself, through a small launcher (``mltrain.frameworks.launcher``, standard library
only) that the job's interpreter runs from its text (``python -S -c``), so nothing needs installing where the
job runs: each rank gets the variables ``torchrun`` and Azure ML's PyTorch configuration set (``MASTER_ADDR``,
``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``NODE_RANK``), its output is
prefixed ``[rank N]`` in the run's log and kept whole in ``outputs/ranks/rank_N.log``, the first rank to fail
ends the job with its reason, and a cancel stops every rank. ``framework.launcher=torchrun`` runs
``python -m torch.distributed.run`` with the same numbers instead (torch must be in the environment).

How many machines a job may span is the target's answer (``Executor.max_nodes()``: 1 for local, docker and
ssh); ``nnodes`` beyond it is refused before anything runs (``check``). ``compute=ray`` spans several: one
launcher per node of a placement group (``mltrain.targets.ray.nodes``), each started with ``from_env``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from mltrain.config.groups import FrameworkConfig
from mltrain.errors import ConfigError
from mltrain.frameworks.base import Framework

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec
    from mltrain.environments.base import PreparedEnvironment
    from mltrain.targets.base import Executor

LAUNCHERS = ("mltrain", "torchrun")
MAX_PROCESSES = 1024
SHOWN = "<mltrain launcher>"
"""What a shown argv (a plan, a run's summary) says instead of the launcher's source text."""


@dataclass
class DistributedFrameworkConfig(FrameworkConfig):
    """``nproc_per_node`` ranks of the script on each of ``nnodes`` nodes, with torchrun's environment contract."""

    type: str = "distributed"
    nproc_per_node: int = 1
    nnodes: int = 1
    launcher: str = "mltrain"  # mltrain: our launcher (no torch needed) | torchrun: python -m torch.distributed.run
    master_addr: str = "127.0.0.1"  # rank 0's address, as the other ranks reach it
    master_port: int = 0  # 0: a free port on the node, picked when the job starts
    grace: float = 10.0  # seconds the other ranks get after the first one fails, before KILL

    def check(self) -> None:
        super().check()
        if not 1 <= self.nproc_per_node <= MAX_PROCESSES:
            raise ConfigError(f"framework.nproc_per_node={self.nproc_per_node}: give 1 to {MAX_PROCESSES} processes")
        if not 1 <= self.nnodes <= MAX_PROCESSES:
            raise ConfigError(f"framework.nnodes={self.nnodes}: give 1 to {MAX_PROCESSES} nodes")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"framework.launcher={self.launcher!r}: choose one of {', '.join(LAUNCHERS)}")
        if not 0 <= self.master_port <= 65535:
            raise ConfigError(f"framework.master_port={self.master_port}: a TCP port (0: pick a free one)")
        if self.grace < 0:
            raise ConfigError(f"framework.grace={self.grace:g}: seconds, 0 or more")


@cache
def launcher_source() -> str:
    """The launcher as a program for ``python -S -c`` (it imports nothing of mltrain)."""
    from mltrain.frameworks import launcher

    return Path(launcher.__file__).read_text(encoding="utf-8")


class DistributedFramework(Framework):
    kind = "distributed"
    config_class = DistributedFrameworkConfig
    config: DistributedFrameworkConfig

    def check(self, target: Executor) -> None:
        nodes = target.max_nodes()
        if self.config.nnodes > nodes:
            raise ConfigError(f"framework.nnodes={self.config.nnodes}: compute={target.kind} runs a job on "
                              f"{'one node' if nodes == 1 else f'at most {nodes} nodes'}; use framework.nnodes=1 "
                              "(more ranks there: framework.nproc_per_node) or a multi-node target")

    def settings(self, node_rank: int = 0, master_addr: str | None = None,
                 master_port: int | None = None, *, from_env: bool = False) -> dict[str, object]:
        cfg = self.config
        found: dict[str, object] = {
            "nproc": cfg.nproc_per_node, "nnodes": cfg.nnodes, "node_rank": node_rank,
            "master_addr": master_addr or cfg.master_addr,
            "master_port": cfg.master_port if master_port is None else master_port,
            "launcher": cfg.launcher, "grace": cfg.grace}
        if from_env:  # the node's place is not known yet: no rank or address to show that is not the node's
            for key in ("node_rank", "master_addr", "master_port"):
                del found[key]
            found["from_env"] = True
        return found

    def node_command(self, interpreter: str, script_argv: list[str], *, node_rank: int = 0,
                     master_addr: str | None = None, master_port: int | None = None,
                     from_env: bool = False) -> list[str]:
        """The launcher's argv for one node: a multi-node target starts one per node, each with its
        ``node_rank`` and rank 0's node as ``master_addr`` (with a fixed ``master_port``: every node must agree).
        ``from_env``: the same argv on every node, which learns its place from ``NODE_RANK``, ``MASTER_ADDR`` and
        ``MASTER_PORT`` in the launcher's environment (Ray's driver sets them once it has placed the nodes)."""
        settings = self.settings(node_rank, master_addr, master_port, from_env=from_env)
        return [interpreter, "-S", "-c", launcher_source(), "mltrain-launch", json.dumps(settings, sort_keys=True),
                "--", interpreter, *script_argv]

    def default_command(self, spec: RunSpec, environment: PreparedEnvironment, target: Executor) -> list[str]:
        self.check(target)
        return self.node_command(environment.interpreter, spec.script_argv())

    def shown(self, argv: list[str]) -> list[str]:
        return [SHOWN if arg == launcher_source() else arg for arg in argv]
