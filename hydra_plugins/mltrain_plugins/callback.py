"""The Hydra callback a job of ``hydra/launcher=mltrain`` runs with: it writes the task's return value (or its
error) where mltrain collects it, so the launcher can hand it back as ``JobReturn.return_value``.

It runs inside the job, wherever that is: it needs Hydra and mltrain's package (which ships this module), and
imports only ``mltrain.hydra_compat`` of it -- none of mltrain's SDKs. The format is JSON, never pickle: the
launcher reads what a job wrote as hostile input.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

RESULT_FILE = "mltrain-job-return.json"
ORIGINAL_CWD = "MLTRAIN_HYDRA_ORIGINAL_CWD"  # where the app was started, when the job sees that folder
MAX_TRACEBACK = 20_000


def encode(value: Any) -> Any:
    """``value`` as JSON-able data: OmegaConf nodes tagged so they come back as such; anything else JSON
    cannot hold as its ``repr`` (tagged)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return {"__omegaconf__": OmegaConf.to_container(value, resolve=True)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: encode(v) for k, v in value.items()}}
    return {"__repr__": repr(value)}


def result_path(output_dir: str) -> Path:
    """Next to the job's outputs: ``$MLTRAIN_OUTPUT_DIR`` when mltrain started the job, else Hydra's output dir."""
    return Path(os.environ.get("MLTRAIN_OUTPUT_DIR") or output_dir) / RESULT_FILE


class JobReturnWriter(Callback):
    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        """``get_original_cwd()`` and ``to_absolute_path()`` answer as in the app's process: the job runs from a
        snapshot, but on a target that sees the app's folder, relative paths the user typed mean that folder."""
        from omegaconf import read_write

        cwd = os.environ.get(ORIGINAL_CWD)
        if cwd:
            with read_write(config.hydra.runtime):
                config.hydra.runtime.cwd = cwd

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from mltrain.hydra_compat import job_value

        value = job_value(job_return)
        if job_return.status == JobStatus.FAILED:
            text = "".join(traceback.format_exception(value))[-MAX_TRACEBACK:]
            data: dict[str, Any] = {"error": {"type": type(value).__name__, "module": type(value).__module__,
                                              "message": str(value), "traceback": text}}
        else:
            data = {"value": encode(value)}
        path = result_path(str(config.hydra.runtime.output_dir))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
