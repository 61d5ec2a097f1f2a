"""mltrain: submit a training script to any compute target from Hydra config groups.

    import mltrain
    run = mltrain.submit(script="train.py", params={"lr": 0.01})     # or submit(["script=train.py", ...])
    record = run.wait(show_output=True)
    run.metrics()                                  # {"loss": [(step, value, time), ...]}
    mltrain.runs(where="metrics.acc > 0.9")        # the history, queried
    mltrain.sweeps()[0].best()

    # inside the training script (no mltrain needed on the target for the other two ways)
    mltrain.log_metric("loss", 0.25, step=3)

The API lives in ``mltrain.api`` and is imported on first use, so ``import mltrain`` in a training script
stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mltrain.errors import MltrainError
from mltrain.tracking.metrics import log_metric

if TYPE_CHECKING:
    from mltrain.api import Run, Sweep, runs, submit, sweeps

__all__ = ["MltrainError", "Run", "Sweep", "log_metric", "runs", "submit", "sweeps"]

_API = ("Run", "Sweep", "runs", "submit", "sweeps")


def __getattr__(name: str) -> Any:
    if name in _API:
        from mltrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'mltrain' has no attribute {name!r}")
