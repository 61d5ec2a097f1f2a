"""``compute=local``'s settings (``conf/compute/local.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

from mltrain.config.groups import ComputeConfig


@dataclass
class LocalCompute(ComputeConfig):
    """This machine; the script runs in its own process group."""

    type: str = "local"
