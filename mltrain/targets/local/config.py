"""``compute=local``'s settings (``conf/compute/local.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

from mltrain.config.groups import ComputeConfig


@dataclass
class LocalCompute(ComputeConfig):
    """This machine; the script runs in its own process group."""

    type: str = "local"
    workdir: str = "auto"  # auto | overlay | links: how each run's own working directory is made (see workdir.py)

    def check(self) -> None:
        from mltrain.targets.local.workdir import check_mode

        check_mode(self.workdir)
