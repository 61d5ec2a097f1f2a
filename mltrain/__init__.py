"""mltrain: submit a training script to any compute target from Hydra config groups.

    import mltrain
    run = mltrain.submit(["script=train.py", "compute=local"])
    record = run.wait(show_output=True)

    # inside the training script (no mltrain needed on the target for the other two ways)
    mltrain.log_metric("loss", 0.25, step=3)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mltrain.errors import MltrainError
from mltrain.tracking.metrics import log_metric

if TYPE_CHECKING:
    from mltrain.run import Run, submit

__all__ = ["MltrainError", "Run", "log_metric", "submit"]


def __getattr__(name: str) -> Any:
    if name in ("Run", "submit"):
        from mltrain import run

        return getattr(run, name)
    raise AttributeError(f"module 'mltrain' has no attribute {name!r}")
