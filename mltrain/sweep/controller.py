"""A sweep beyond launching: its record, resuming, reusing finished trials, early termination, failures, cancel.

The launcher (:mod:`mltrain.sweep.launcher`) asks this controller, in its
main thread, what to do with each prepared trial:

* **reuse** -- a trial whose fingerprint (its config without the ``sweep``
  block + the snapshot + the environment) already has a Completed run, in
  this sweep or any earlier one, is not run again; nor is one this sweep
  already stopped early.
* **adopt** -- a trial of this sweep whose run is still going (its
  controller died) is followed again, not started twice.
* **run** -- anything else: submitted with the sweep's snapshot, then
  followed in a worker thread while its primary metric streams into a
  :class:`~mltrain.sweep.trial.MetricMonitor`.

Between results, ``tick`` applies the early-termination policy to the
streamed curves and reads ``sweeps cancel`` requests; a trial told to stop
is cancelled by its own worker (``follow(stop=...)``) and recorded Canceled.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from mltrain.config.spec import RunSpec

from mltrain.errors import MltrainError, StoreError
from mltrain.plan.stages import SnapshotRef, Stage
from mltrain.store.db import (
    CANCELED,
    COMPLETED,
    FAILED,
    RUNNING,
    RunRecord,
    Store,
    SweepRecord,
    TrialRecord,
    new_run_id,
)
from mltrain.store.workspace import Workspace
from mltrain.sweep.gpus import GpuPools
from mltrain.sweep.process import alive, command, controller_log, spawn, sweep_dir, this_process
from mltrain.sweep.report import EARLY, number, shown_params
from mltrain.sweep.samplers import COMPLETE, PRUNED, Outcome, Sampler, Suggestion
from mltrain.sweep.samplers import FAILED as FAILED_OUTCOME
from mltrain.sweep.session import SweepSession, current
from mltrain.sweep.stopping import policy_for
from mltrain.sweep.supervisor import Supervisor
from mltrain.sweep.trial import MetricMonitor, PreparedTrial
from mltrain.targets import executor_class
from mltrain.util.progress import TrialBoard

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.5
# The longest look between reads of a quiet trial's log: a trial's early stop or cancel waits at most this
# long; its end does not (the wait wakes on it).
TRIAL_IDLE_WAIT = 0.5
CPU_FILE_ENV = "MLTRAIN_DEBUG_SWEEP_CPU"


@dataclass
class Trial:
    idx: int
    swept: list[str]
    fingerprint: str
    prepared: PreparedTrial
    monitor: MetricMonitor
    run_id: str | None = None
    reused: bool = False  # an earlier run with the same fingerprint stands for it
    stop_reason: str | None = None
    curve: list[float] | None = None  # set when it ended: the primary metric as recorded
    judged: int = 0  # reports the policy has looked at

    def poll_stop(self) -> str | None:
        self.monitor.poll_file()
        return self.stop_reason


@dataclass
class SweepOutcome:
    sweep_id: str
    status: str
    reason: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


class FirstAlone:
    """The first submission for each key (target + environment) runs alone; the rest side by side.

    That first one imports the target's SDK (two threads importing ``docker`` at once can see it
    half-initialized) and builds the environment, once; later trials find both ready.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._done: set[str] = set()

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        if key not in self._done:
            with self._guard:
                lock = self._locks.setdefault(key, threading.Lock())
            with lock:
                if key not in self._done:
                    try:
                        yield
                    finally:
                        self._done.add(key)
                    return
        yield


def _tell_cpu() -> None:
    """For the benchmark: this process's own CPU seconds so far (all threads, no child process) and its main
    thread's (the serial part), written to the file ``MLTRAIN_DEBUG_SWEEP_CPU`` names, when it names one."""
    path = os.environ.get(CPU_FILE_ENV)
    if path:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        main = resource.getrusage(resource.RUSAGE_THREAD)  # close runs in the main thread: the serial part
        Path(path).write_text(f"{usage.ru_utime + usage.ru_stime:.6f} {main.ru_utime + main.ru_stime:.6f}\n")


def _target_key(spec: RunSpec) -> str:
    """Trials that share this share a target, an environment on it, and their fingerprint's environment part."""
    return repr((spec.compute, spec.environment, spec.source_dir))


def supervisor_for(task_function: Any, config: DictConfig, sampler: Sampler) -> Supervisor:
    """mltrain's controller for an ``mltrain -m`` trial task; Hydra's plain behaviour for anything else."""
    from mltrain.sweep.jobs import takes_prepared

    session = current()
    if session is None or not takes_prepared(task_function):
        return Supervisor()
    controller = SweepController(session, config)
    controller.open()
    controller.sampler = sampler
    return controller


class SweepController(Supervisor):
    def __init__(self, session: SweepSession, master: DictConfig) -> None:
        from mltrain.config.schema import validate_sweep

        self.session = session
        self.settings = validate_sweep(master.get("sweep"))
        self.workspace = Workspace.locate(OmegaConf.select(master, "workspace.dir")).ensure()
        self.store = Store(self.workspace.db_path)
        self.max_concurrent = self.settings.max_concurrent or executor_class(
            str(OmegaConf.select(master, "compute.type"))).default_concurrency()  # the target's answer
        self.policy = policy_for(self.settings.early_termination, self.settings.goal)
        self.sampler: Sampler | None = None
        self.sweep_id = ""
        self.seed = 0
        self.existing: SweepRecord | None = None
        self.old: dict[int, TrialRecord] = {}
        self.trials: dict[int, Trial] = {}
        self.snapshots: dict[str, SnapshotRef] = {}
        self.env_fingerprints: dict[str, str] = {}
        self.stopping: str | None = None
        self.canceled = False
        self.failures = 0
        self.detached = False
        self.started = False
        self._polled = 0.0
        self._report_lock = threading.Lock()
        self._log_file: Any = None
        self._first_alone = FirstAlone()
        self.board: TrialBoard | None = None  # the progress display's tally, once the sweep runs here
        self.gpus = GpuPools(self.workspace)

    # ------------------------------------------------------------- opening
    def open(self) -> int:
        """Find the sweep this command carries on, or name a new one; returns the seed to sample with."""
        session = self.session
        if session.sweep_id:
            self.existing = self.store.get_sweep(session.sweep_id)
        else:
            found = self.store.find_sweeps(key=self._key(), limit=1)
            self.existing = found[0] if found and found[0].status != COMPLETED else None
            if self.existing and self.existing.status == RUNNING and alive(self.existing.controller):
                raise StoreError(
                    f"sweep {self.existing.id} is already running this command (controller pid "
                    f"{self.existing.controller['pid']}); `mltrain sweeps attach {self.existing.id}` follows it"  # type: ignore[index]
                )
        self.sweep_id = self.existing.id if self.existing else new_run_id()
        stored_seed = self.existing.settings.get("seed") if self.existing else None
        seed = self.settings.seed if self.settings.seed is not None else stored_seed
        self.seed = int(seed) if seed is not None else secrets.randbelow(2**31)
        session.sweep = self.sweep_id
        session.sweep_dir = str(sweep_dir(self.workspace, self.sweep_id))
        return self.seed

    @property
    def first_index(self) -> int:
        assert self.sampler is not None
        if self.sampler.upfront_are_trials or not self.existing:
            return 0
        return max([t.idx for t in self.store.trials(self.sweep_id)], default=-1) + 1

    # -------------------------------------------------------------- starting
    def start(self, jobs: Sequence[Any]) -> bool:
        specs = [job.spec for job in jobs]
        self._check_targets(specs)
        stored = (self.existing.settings.get("snapshots") or {}) if (self.existing and self.session.sweep_id) else {}
        for spec in specs:
            self._snapshot(spec, stored)
        assert self.sampler is not None
        settings = dataclasses.asdict(self.settings) | {
            "seed": self.seed, "max_concurrent": self.max_concurrent,
            "snapshots": {k: v.to_dict() for k, v in self.snapshots.items()},
        }
        fields: dict[str, Any] = {"planned": self.sampler.planned, "settings": settings,
                                  "command": command(self.session.args), "controller": this_process()}
        if self.existing:
            self.store.update_sweep(self.sweep_id, status=RUNNING, ended=None, reason=None, cancel_requested=0,
                                    **fields)
            self._resume()
        else:
            experiment = specs[0].experiment if specs else "default"
            self.store.create_sweep(sweep_id=self.sweep_id, key=self._key(), experiment=experiment, **fields)
        if self.session.detach:
            controller = spawn(self.workspace, self.sweep_id, command(self.session.args))
            self.store.update_sweep(self.sweep_id, controller=controller)
            self.session.detached = self.detached = True
            return False
        if not self.session.sweep_id:  # a foreground sweep: `sweeps attach` elsewhere reads this log too
            self._log_file = open(controller_log(self.workspace, self.sweep_id), "a")  # noqa: SIM115 (closed in close)
        self.started = True
        verb = "resumed" if self.old or (self.existing and self.store.trials(self.sweep_id)) else "started"
        self.report(f"sweep {self.sweep_id} {verb}: {self.sampler.planned} trials, up to {self.max_concurrent} at "
                    f"once (mltrain sweeps show {self.sweep_id})")
        self.board = TrialBoard(f"sweep {self.sweep_id}", self.sampler.planned, self.settings.primary_metric,
                                self.settings.goal)
        return True

    def _key(self) -> str:
        from mltrain.environments.base import digest

        return digest({"command": command(self.session.args), "workspace": str(self.workspace.root)})

    def _check_targets(self, specs: Sequence[Any]) -> None:
        """Refuse an environment the target cannot use, once per pair, before anything runs."""
        from mltrain.environments import environment_for
        from mltrain.targets import executor_for

        for spec in specs:
            key = _target_key(spec)
            if key not in self.env_fingerprints:
                executor = executor_for(spec.compute, self.workspace)
                environment = environment_for(spec.environment, source_dir=spec.source_dir, target=executor)
                executor.check_environment(environment)
                self.env_fingerprints[key] = environment.fingerprint()

    def _snapshot(self, spec: RunSpec, stored: dict[str, Any]) -> SnapshotRef:
        key = str(spec.source_dir)
        if key in self.snapshots:
            return self.snapshots[key]
        snap = SnapshotRef(**stored[key]) if key in stored else self._take_snapshot(spec)
        self.snapshots[key] = snap
        return snap

    def _take_snapshot(self, spec: RunSpec) -> SnapshotRef:
        """The plan's SNAPSHOT stage, once for all trials from this source_dir; each trial is given it."""
        from mltrain.environments.base import digest
        from mltrain.plan.snapshot import take

        patch = sweep_dir(self.workspace, self.sweep_id) / f"git-{digest(str(spec.source_dir))[:12]}.patch"
        ref, _ = take(spec, self.workspace, note=self.report, patch_file=patch)
        return ref

    def _resume(self) -> None:
        """Carry on an existing sweep: keep its finished trials, follow its running ones."""
        assert self.sampler is not None
        old = self.store.trials(self.sweep_id)
        if self.sampler.upfront_are_trials:
            self.old = {t.idx: t for t in old}
            return
        # An adaptive sampler learns from the trials that ended; the rest are sampled anew.
        for trial in old:
            record = self._run_record(trial.run_id)
            outcome = self._outcome(record) if record is not None and record.is_terminal else None
            if outcome is not None and outcome.state in (COMPLETE, PRUNED):
                self.sampler.restore(trial.params, outcome)
                continue
            if record is not None and not record.is_terminal:
                from mltrain.targets.base import cancel_run

                cancel_run(self.store, self.workspace, record, reason="its sweep was resumed and samples anew")
            self.store.delete_trial(self.sweep_id, trial.idx)

    # ---------------------------------------------------------------- trials
    def body(self, job_return: Any, suggestion: Suggestion) -> Callable[[], Any] | None:
        from mltrain.hydra_compat import job_number

        work = self._body(job_return, suggestion)
        if work is not None and self.board is not None:
            self.board.started(job_number(job_return))
        return work

    def _body(self, job_return: Any, suggestion: Suggestion) -> Callable[[], Any] | None:
        from mltrain.hydra_compat import job_number, job_value

        prepared: PreparedTrial = job_value(job_return)
        idx = job_number(job_return)
        spec = prepared.spec
        snap = self._snapshot(spec, {})
        trial = Trial(idx, suggestion.swept, self._fingerprint(prepared, snap),
                      prepared, MetricMonitor(self.settings.primary_metric))
        self.trials[idx] = trial
        before = self.old.get(idx)
        record = self._run_record(before.run_id) if before is not None else None
        if record is not None and before is not None and before.fingerprint == trial.fingerprint:
            if not record.is_terminal:
                return self._adopt(trial, record)
            if record.status == COMPLETED or record.reason == EARLY:
                return self._reuse(trial, record, fresh=False)
        elif record is not None and not record.is_terminal:  # its code or config changed since it started
            from mltrain.targets.base import cancel_run

            cancel_run(self.store, self.workspace, record, reason="superseded: the sweep was resumed with changes")
        reused = self.store.completed_run_with(trial.fingerprint, or_canceled_for=EARLY if self.policy else None)
        if reused is not None:
            earlier = self.store.get(reused)
            if earlier.status == COMPLETED or self._stopped_alike(earlier):
                return self._reuse(trial, earlier, fresh=True)
        trial.run_id = new_run_id()
        trial.monitor.metrics_file = self.workspace.run_paths(trial.run_id).metrics
        return lambda: self._run(trial, snap)

    def _fingerprint(self, prepared: PreparedTrial, snap: SnapshotRef) -> str:
        from mltrain.environments.base import digest

        config = {k: v for k, v in prepared.container.items() if k not in ("sweep", "tracking")}  # not what ran
        spec = prepared.spec
        if _target_key(spec) not in self.env_fingerprints:
            self._check_targets([spec])
        environment = self.env_fingerprints[_target_key(spec)]
        return digest({"config": config, "snapshot": snap.id, "environment": environment})

    def _run_record(self, run_id: str | None) -> RunRecord | None:
        from mltrain.errors import RunNotFound
        from mltrain.targets.base import reconcile

        if not run_id:
            return None
        try:
            return reconcile(self.store, self.workspace, self.store.get(run_id))
        except RunNotFound:
            return None

    def _stopped_alike(self, record: RunRecord) -> bool:
        """Whether this sweep would stop ``record`` (a trial stopped early elsewhere) as its own sweep did: the
        same primary metric, goal and policy. A sweep run again with another policy, or none, runs it again."""
        if record.sweep_id is None:
            return False
        try:
            theirs = self.store.get_sweep(record.sweep_id).settings
        except StoreError:
            return False
        ours = dataclasses.asdict(self.settings)
        return all(theirs.get(key) == ours[key] for key in ("primary_metric", "goal", "early_termination"))

    def _reuse(self, trial: Trial, record: RunRecord, *, fresh: bool) -> Callable[[], Any]:
        trial.run_id = record.id
        trial.reused = True
        if fresh:
            self.store.put_trial(TrialRecord(self.sweep_id, trial.idx, trial.swept, trial.fingerprint, record.id,
                                             reused=True))
        state = "stopped early" if record.reason == EARLY else record.status.lower()
        self.report(f"trial {trial.idx} already {state} as run {record.id}: {shown_params(trial.swept)}")
        return lambda: record

    def _adopt(self, trial: Trial, record: RunRecord) -> Callable[[], Any]:
        from mltrain.targets.base import follow, handle_for

        trial.run_id = record.id
        trial.monitor.metrics_file = self.workspace.run_paths(record.id).metrics
        self.report(f"trial {trial.idx} still running as run {record.id}; following it")
        handle = handle_for(record, self.workspace)  # here, in the main thread: it may import the target's SDK

        def body() -> RunRecord:
            with Store(self.workspace.db_path) as store:
                return follow(store, self.workspace, store.get(record.id), out=trial.monitor.feed,
                              stop=trial.poll_stop, handle=handle, idle_wait=TRIAL_IDLE_WAIT)

        return body

    def _run(self, trial: Trial, snap: SnapshotRef) -> RunRecord:
        """The worker's part: carry out the trial's plan, given the sweep's snapshot; follow it until it ends."""
        from mltrain.plan.compile import compile
        from mltrain.plan.execute import execute

        store = self._worker_store()
        with self.gpus.lease(trial.prepared.spec) as spec:  # disjoint devices while the run lasts (sweep.gpus)
            # The trial names its run before the run exists: a resumed sweep finds whatever became of it.
            store.put_trial(TrialRecord(self.sweep_id, trial.idx, trial.swept, trial.fingerprint, trial.run_id))
            try:
                with self._first_alone(_target_key(spec)):
                    run = execute(compile(spec), given={Stage.SNAPSHOT: snap}, sweep_id=self.sweep_id,
                                  run_id=trial.run_id, store=store)
            except MltrainError as exc:
                store.set_trial_error(self.sweep_id, trial.idx, str(exc))
                raise
            self.report(f"trial {trial.idx} started as run {run.id}: {shown_params(trial.swept)}")
            return run.wait(out=trial.monitor.feed, stop=trial.poll_stop, store=store, idle_wait=TRIAL_IDLE_WAIT)

    def _worker_store(self) -> Store:
        """The workers' connection to the run history: the controller's own, shared (a ``Store`` serializes
        its threads' statements).

        With a connection a worker, each commit made the other connections re-read the pages it changed (and
        pass SQLite's process-wide file-lock mutex): the run history cost the workers 2.2-2.9 ms a trial on the
        1,000-trial grid of ``benchmarks/bench_sweep.py``, ~1.9 ms with one. The controller writes the history
        alone meanwhile, so one connection's page cache stays valid between its statements.
        """
        return self.store

    # -------------------------------------------------------------- results
    def finished(self, job_return: Any, suggestion: Suggestion) -> Outcome:
        from mltrain.hydra_compat import job_number

        outcome = self._finished(job_return, suggestion)
        if self.board is not None:
            self.board.ended(job_number(job_return),
                             outcome.value if outcome.state == COMPLETE else None)
        return outcome

    def _finished(self, job_return: Any, suggestion: Suggestion) -> Outcome:
        from hydra.core.utils import JobStatus

        from mltrain.hydra_compat import job_number, job_value

        idx = job_number(job_return)
        trial = self.trials.get(idx)
        if job_return.status == JobStatus.FAILED:
            self._failed()
            self.report(f"trial {idx} failed: {job_value(job_return)}")
            if trial is not None:
                trial.curve = []
            return Outcome(FAILED_OUTCOME)
        assert trial is not None
        record: RunRecord = job_value(job_return)
        outcome = self._outcome(record)
        trial.curve = outcome.curve
        if trial.reused:
            return outcome
        if record.status == FAILED:
            self._failed()
        took = f" in {record.duration:.1f}s" if record.duration is not None else ""
        metric = f" ({self.settings.primary_metric}={number(outcome.value)})" if outcome.value is not None else ""
        why = f": {record.reason}" if record.reason else ""
        self.report(f"trial {idx} {record.status}{took}{metric}{why}")
        if record.status == COMPLETED and self.settings.primary_metric and outcome.value is None:
            self.report(f"trial {idx} logged no {self.settings.primary_metric}; it cannot rank")
        return outcome

    def _outcome(self, record: RunRecord) -> Outcome:
        name = self.settings.primary_metric
        curve = [value for metric, _, value, _ in self.store.metrics(record.id) if metric == name] if name else []
        if record.status == COMPLETED:
            return Outcome(COMPLETE if curve or not name else FAILED_OUTCOME, curve[-1] if curve else None, curve)
        if record.status == CANCELED and record.reason == EARLY:
            return Outcome(PRUNED, curve[-1] if curve else None, curve)
        return Outcome(FAILED_OUTCOME, None, curve)

    def _failed(self) -> None:
        self.failures += 1
        limit = self.settings.max_failures
        if limit and self.failures >= limit and not self.stopping:
            self.stopping = f"{self.failures} trials failed (sweep.max_failures={limit})"
            self.report(f"{self.stopping}: starting no more trials")

    # ----------------------------------------------------------- while running
    def may_start(self) -> bool:
        return self.stopping is None

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._polled >= CANCEL_POLL_SECONDS:
            self._polled = now
            if self.store.get_sweep(self.sweep_id).cancel_requested and not self.canceled:
                self.report("cancel requested (mltrain sweeps cancel)")
                self.cancel("canceled by user (mltrain sweeps cancel)")
        if self.policy is not None:
            self._judge()

    def _judge(self) -> None:
        assert self.policy is not None
        curves = {idx: (t.curve if t.curve is not None else t.monitor.curve()) for idx, t in self.trials.items()}
        for idx, trial in self.trials.items():
            if trial.curve is not None or trial.stop_reason or not trial.run_id:
                continue
            curve = curves[idx]
            for k in range(trial.judged + 1, len(curve) + 1):
                reason = self.policy.should_stop(idx, {**curves, idx: curve[:k]})
                if reason:
                    self.report(f"trial {idx} stopped early: {reason}")
                    trial.stop_reason = EARLY
                    break
            trial.judged = len(curve)

    def cancel(self, reason: str) -> None:
        self.canceled = True
        self.stopping = self.stopping or reason
        for trial in self.trials.values():
            if trial.curve is None:
                trial.stop_reason = trial.stop_reason or reason

    def interrupt(self) -> None:
        self.report("interrupted: cancelling the running trials")
        self.cancel("canceled by user (Ctrl-C)")

    def close(self, error: BaseException | None = None) -> None:
        try:
            if self.board is not None:
                self.board.close()  # the closing report line says how the sweep ended
            if self.started:
                self._finish(error)
        finally:
            self.store.close()  # the workers' too: the pool has ended, none is in use
            if self._log_file is not None:
                self._log_file.close()
            _tell_cpu()

    def _finish(self, error: BaseException | None) -> None:
        if self.canceled or isinstance(error, KeyboardInterrupt):
            status, reason = CANCELED, self.stopping or "canceled by user"
        elif error is not None:
            status, reason = FAILED, f"the sweep broke off: {type(error).__name__}: {error}"
        elif self.failures:
            status = FAILED
            reason = self.stopping or f"{self.failures} of {len(self.trials)} trials failed"
        else:
            status, reason = COMPLETED, None
        self.store.finish_sweep(self.sweep_id, status, reason)
        self.report(f"sweep {self.sweep_id} {status}" + (f": {reason}" if reason else ""))
        self.session.outcome = SweepOutcome(self.sweep_id, status, reason)

    def report(self, line: str) -> None:
        with self._report_lock:
            self.session.report(line)
            if self._log_file is not None:
                self._log_file.write(f"mltrain: {line}\n")
                self._log_file.flush()
