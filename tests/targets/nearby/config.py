"""``compute=nearby``'s settings: the local target's, and a greeting the job is handed."""

from __future__ import annotations

from dataclasses import dataclass

from mltrain.targets.local.config import LocalCompute


@dataclass
class NearbyCompute(LocalCompute):
    type: str = "nearby"
    greeting: str = "hello"  # reaches the job as $NEARBY_GREETING: proof that the config reached the executor
