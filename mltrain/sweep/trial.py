"""One trial of ``mltrain -m``: mltrain's Hydra task function, and what a trial streams while it runs.

``TrialTask`` is the task function the CLI hands to Hydra. Under mltrain's
launcher Hydra's bookkeeping calls ``prepare_trial`` in the main thread
(validate the config, build the RunSpec, check the script exists) and the
sweep controller runs the trial later in a worker thread. Under any other
launcher Hydra calls the task itself and the trial runs there and then, as a
plain submit would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mltrain.config.spec import RunSpec
from mltrain.errors import RunFailed
from mltrain.sweep.jobs import PreparingTask

FILE_POLL_SECONDS = 0.2


@dataclass
class PreparedTrial:
    """A validated trial that has not started: its spec and the config it came from."""

    spec: RunSpec
    cfg: DictConfig
    container: dict[str, Any]  # ``cfg`` as plain data, interpolations kept: what the trial's fingerprint hashes

    def run(self, report: Callable[[str], None] | None = None, name: str = "") -> Any:
        """Submit and wait, with no sweep around it; raises RunFailed unless the run completed.

        ``report`` hears a line when the run starts and when it ends (``name`` says which trial it is).
        """
        from mltrain.run import submit_spec

        run = submit_spec(self.spec)
        if report is not None:
            report(f"{name} started as run {run.id}")
        record = run.wait()
        if report is not None:
            took = f" in {record.duration:.1f}s" if record.duration is not None else ""
            report(f"{name} {record.status}{took}" + (f": {record.reason}" if record.reason else ""))
        if record.status != "Completed":
            raise RunFailed(f"run {record.id} {record.status.lower()}: {record.reason}")
        return record


class TrialTask(PreparingTask):
    """The Hydra task function of ``mltrain -m``.

    Trials of one sweep mostly differ in ``params`` alone. When a trial's config,
    ``params`` aside, equals the previous trial's and holds no interpolation (so
    nothing else can depend on ``params``), the previous validation stands and only
    ``params`` is resolved again -- exactly what ``validate`` would return, at a
    fraction of its cost.
    """

    __module__ = "mltrain.cli.main"  # Hydra names the job after the task's module

    def __init__(self) -> None:
        from mltrain.sweep.yaml_blocks import YamlBlocks

        self._last: tuple[dict[str, Any], Any] | None = None  # (config without params, its validation)
        self._yaml = YamlBlocks()  # each trial's config.yaml, made from the blocks it shares with the last

    def prepare_trial(self, cfg: DictConfig, overrides: list[str]) -> PreparedTrial:
        from omegaconf import OmegaConf

        from mltrain.config.spec import check_source

        container: dict[str, Any] = OmegaConf.to_container(cfg, resolve=False)  # type: ignore[assignment]
        spec = RunSpec.from_config(self._validate(cfg, container), self._yaml.to_yaml(cfg, container), overrides)
        check_source(spec)
        return PreparedTrial(spec, cfg, container)

    def _validate(self, cfg: DictConfig, container: dict[str, Any]) -> Any:
        import dataclasses

        from omegaconf import OmegaConf

        from mltrain.config.schema import validate

        rest = {k: v for k, v in container.items() if k != "params"}
        if self._last is not None and self._last[0] == rest:
            try:
                if not OmegaConf.missing_keys(cfg.params):
                    params = OmegaConf.to_container(cfg.params, resolve=True)
                    assert isinstance(params, dict)
                    return dataclasses.replace(self._last[1], params={str(k): v for k, v in params.items()})
            except Exception:  # validate, below, reports it in its own words
                pass
        validated = validate(cfg)
        self._last = None if "${" in repr(rest) else (rest, validated)
        return validated

    def __call__(self, cfg: DictConfig) -> Any:
        """A trial run by a launcher other than mltrain's (``hydra/launcher=basic``, ...): there and then."""
        from hydra.core.hydra_config import HydraConfig

        from mltrain.sweep.report import shown_params
        from mltrain.sweep.session import current

        session = current()
        hydra = HydraConfig.get()
        overrides = list(hydra.overrides.task)
        prepared = self.prepare_trial(cfg, overrides)
        report = session.report if session is not None else None
        return prepared.run(report, f"trial {hydra.job.num} ({shown_params(overrides)})")


class MetricMonitor:
    """The primary metric as a running trial streams it, from both channels.

    ``feed`` takes the run's log as ``follow`` reads it (``::metric`` lines);
    ``poll_file`` reads new lines of its metrics file (at most every 0.2 s).
    Written by the trial's worker thread, read by the controller's.
    """

    def __init__(self, name: str | None, metrics_file: Path | None = None) -> None:
        self.name = name
        self.metrics_file = metrics_file
        self._lock = threading.Lock()
        self._curve: list[float] = []
        self._pending = b""
        self._file_offset = 0
        self._polled = 0.0

    def feed(self, chunk: bytes) -> None:
        from mltrain.tracking.metrics import PROTOCOL_PREFIX, parse_line

        if self.name is None:
            return
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        prefix = PROTOCOL_PREFIX.encode()
        values = [m.value for line in lines if prefix in line
                  for m in parse_line(line.decode("utf-8", "replace")) if m.name == self.name]
        self._add(values)

    def poll_file(self) -> None:
        from mltrain.tracking.metrics import read_metrics_file

        now = time.monotonic()
        if self.name is None or self.metrics_file is None or now - self._polled < FILE_POLL_SECONDS:
            return
        self._polled = now
        metrics, self._file_offset = read_metrics_file(self.metrics_file, self._file_offset)
        self._add([m.value for m in metrics if m.name == self.name])

    def _add(self, values: list[float]) -> None:
        if values:
            with self._lock:
                self._curve.extend(values)

    def curve(self) -> list[float]:
        with self._lock:
            return list(self._curve)
