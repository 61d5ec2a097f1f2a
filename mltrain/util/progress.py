"""How long steps show that they are moving: one small seam, three displays, chosen once by the CLI.

An environment build, an SSH upload and a sweep can each take minutes. Each
opens a :class:`Task` on the :class:`Progress` the command installed and
tells it what happens (``step``: a new phase, ``advance``: an amount done);
the display decides how to show it:

* :class:`TerminalProgress` -- stderr is a terminal: the running tasks are
  lines redrawn in place (rich, imported only when the first task opens, so
  ``mltrain --help`` does not pay for it), with the elapsed time ticking.
* :class:`LinesProgress` -- not a terminal (a CI log, a pipe): plain lines,
  where a slow task is every few seconds, and how each ended.
* :class:`NullProgress` -- ``--quiet``, the Python API, a detached sweep
  controller: nothing.

Progress goes to stderr only; a run's ``output.log`` never sees it (the
producers keep writing their own log lines as before).

The producers reach the display through :func:`current` rather than a
parameter threaded through every layer in between (CLI -> submit ->
environment -> runner, CLI -> sweep launcher -> controller): the seam is the
one process-wide choice the CLI makes with :func:`installed`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol

PLAIN_EVERY = 5.0  # seconds: how long a task runs before a plain line says where it is, and between two such


class Task(Protocol):
    """One long step being shown; use it as a context manager (closed on the way out, error or not)."""

    def step(self, text: str, completed: float | None = None) -> None:
        """A new phase (or a result worth a line): ``text`` replaces what the task says."""

    def advance(self, completed: float, text: str | None = None) -> None:
        """``completed`` of the task's total is done (bytes for a transfer, trials for a sweep)."""

    def close(self, text: str | None = None) -> None:
        """The step is over; ``text`` (if any) stays behind as one line, with the time it took."""

    def __enter__(self) -> Task: ...

    def __exit__(self, *exc: object) -> None: ...


class Progress(Protocol):
    def task(self, text: str, *, total: float | None = None, unit: str = "") -> Task:
        """Open a task; ``unit="bytes"`` shows amounts as sizes and a rate."""

    def stop(self) -> None:
        """Clear any live display (the command is ending)."""


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def amount(completed: float, total: float | None, unit: str, elapsed: float) -> str:
    """``3.0 MiB of 12.0 MiB, 1.5 MiB/s`` or ``3 of 12``: the same words on a terminal and in a log."""
    if unit == "bytes":
        text = size(completed) + (f" of {size(total)}" if total is not None else "")
        return text + (f", {size(completed / elapsed)}/s" if elapsed > 0 and completed else "")
    done = f"{completed:g}"
    return done + (f" of {total:g}" if total is not None else "") + (f" {unit}" if unit else "")


class _BaseTask:
    def __init__(self, text: str, total: float | None, unit: str) -> None:
        self.text = text
        self.total = total
        self.unit = unit
        self.completed = 0.0
        self.began = time.monotonic()
        self.closed = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def took(self) -> str:
        """``(2.5s)``, with the average rate for a transfer: the end of a task's closing line."""
        elapsed = self.elapsed
        rate = f", {size(self.completed / elapsed)}/s" if self.unit == "bytes" and elapsed > 0 else ""
        return f"({elapsed:.1f}s{rate})"

    def detail(self) -> str:
        if self.total is None and not self.completed:
            return ""
        return amount(self.completed, self.total, self.unit, self.elapsed)

    def step(self, text: str, completed: float | None = None) -> None:
        self.text = text
        if completed is not None:
            self.completed = completed

    def advance(self, completed: float, text: str | None = None) -> None:
        self.completed = completed
        if text is not None:
            self.text = text

    def close(self, text: str | None = None) -> None:
        self.closed = True

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            self.close()


# ------------------------------------------------------------------ nothing
class NullProgress:
    def task(self, text: str, *, total: float | None = None, unit: str = "") -> Task:
        return _BaseTask(text, total, unit)

    def stop(self) -> None:
        pass


# -------------------------------------------------------------- plain lines
class _LineTask(_BaseTask):
    def __init__(self, owner: LinesProgress, text: str, total: float | None, unit: str) -> None:
        super().__init__(text, total, unit)
        self.owner = owner
        self.last = ""  # the last line said about it, and when
        self.said = 0.0

    def line(self) -> str:
        detail = self.detail()
        return f"{self.text}: {detail}" if detail else self.text

    def close(self, text: str | None = None) -> None:
        if not self.closed:
            self.owner.closed(self)
            if text:
                self.owner.write(f"{text} {self.took()}")
        super().close(text)


class LinesProgress:
    """Plain ``mltrain: ...`` lines for a log: a task still running after ``every`` seconds says where it is
    (its step, amount and time so far), again when that changed ``every`` seconds later or, unchanged, six
    times ``every`` later; every task says how it ended.

    A quick step (most of them) is one closing line, and one that fails quickly is none: its error stays
    the one line it is.
    """

    def __init__(self, stream: IO[str], every: float | None = None) -> None:
        self.stream = stream
        self.every = every if every is not None else float(os.environ.get("MLTRAIN_PROGRESS_EVERY") or PLAIN_EVERY)
        self._lock = threading.Lock()
        self._open: list[_LineTask] = []
        self._wake = threading.Event()
        self._ticker: threading.Thread | None = None

    def task(self, text: str, *, total: float | None = None, unit: str = "") -> Task:
        task = _LineTask(self, text, total, unit)
        with self._lock:
            self._open.append(task)
            if self._ticker is None:
                self._wake = threading.Event()  # its own: a ticker told to stop stays stopped
                self._ticker = threading.Thread(target=self._tick, args=(self._wake,), name="mltrain-progress",
                                                daemon=True)
                self._ticker.start()
        return task

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(self.every):
            now = time.monotonic()
            with self._lock:  # changed since said, or not said for a while (a long step is not a hung one)
                due = [t for t in self._open if t.elapsed >= self.every
                       and (t.line() != t.last or now - t.said >= 6 * self.every)]
            for task in due:
                task.last, task.said = task.line(), now
                self.write(f"{task.last} ({task.elapsed:.0f}s so far)")

    def closed(self, task: _LineTask) -> None:
        with self._lock:
            if task in self._open:
                self._open.remove(task)
            if not self._open:
                self._stop_ticker()

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._wake.set()
            self._ticker = None

    def write(self, line: str) -> None:
        self.stream.write(f"mltrain: {line}\n")
        self.stream.flush()

    def stop(self) -> None:
        with self._lock:
            self._open.clear()
            self._stop_ticker()


# -------------------------------------------------------- a terminal (rich)
class _LiveTask(_BaseTask):
    def __init__(self, owner: TerminalProgress, text: str, total: float | None, unit: str) -> None:
        super().__init__(text, total, unit)
        self.owner = owner
        self.id: Any = None

    def step(self, text: str, completed: float | None = None) -> None:
        super().step(text, completed)
        self.owner.update(self, now=True)  # a new step is drawn at once; amounts wait for the next tick

    def advance(self, completed: float, text: str | None = None) -> None:
        super().advance(completed, text)
        self.owner.update(self)

    def close(self, text: str | None = None) -> None:
        if not self.closed:
            self.owner.finish(self, f"{text} {self.took()}" if text else None)
        super().close(text)


class TerminalProgress:
    """The running tasks as lines at the bottom of the terminal, redrawn in place (rich's live display).

    Lines written to ``sys.stderr``/``sys.stdout`` while it is up (build output, ``mltrain: ...`` lines)
    scroll above it; a finished task leaves its closing text as an ordinary line.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._lock = threading.RLock()
        self._live: Any = None
        self._open = 0

    def task(self, text: str, *, total: float | None = None, unit: str = "") -> Task:
        task = _LiveTask(self, text, total, unit)
        with self._lock:
            if self._live is None:
                self._live = self._start()
            task.id = self._live.add_task(text, total=total, detail=task.detail())
            self._open += 1
            self._live.refresh()  # shown now, not at the next tick
        return task

    def _start(self) -> Any:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        class Bar(BarColumn):  # only for a task with a total: a build's length is unknown
            def render(self, task: Any) -> Any:
                return super().render(task) if task.total is not None else Text("")

        # soft_wrap: lines printed above the display (build output) are wrapped by the terminal, not split.
        # stdout is routed above the display only when it is the terminal too: redirected elsewhere, what a
        # command prints must stay in that file, not move to stderr.
        console = Console(file=self.stream, highlight=False, soft_wrap=True)
        live = Progress(SpinnerColumn(), TimeElapsedColumn(), TextColumn("{task.description}"), Bar(bar_width=24),
                        TextColumn("{task.fields[detail]}"), console=console, transient=True,
                        redirect_stdout=_isatty(sys.stdout))
        live.start()
        return live

    def update(self, task: _LiveTask, *, now: bool = False) -> None:
        with self._lock:
            if self._live is not None and task.id is not None:
                self._live.update(task.id, description=task.text, completed=task.completed, detail=task.detail(),
                                  refresh=now)

    def finish(self, task: _LiveTask, line: str | None) -> None:
        with self._lock:
            if self._live is None or task.id is None:
                return
            self._live.remove_task(task.id)
            if line:
                self._live.console.print(f"mltrain: {line}", markup=False)
            self._open -= 1
            if self._open == 0:
                self.stop()

    def stop(self) -> None:
        with self._lock:
            if self._live is not None:
                live, self._live, self._open = self._live, None, 0
                live.stop()


# ------------------------------------------------------------ a sweep's tally
class TrialBoard:
    """A sweep's trials as one task: done, running, left, and the best primary metric so far.

    The controller calls ``started`` when a trial gets a worker and ``ended`` when its result is in
    (both from the launcher's main thread); a trial that needed no worker (reused) only ends.
    """

    def __init__(self, label: str, planned: int, metric: str | None, goal: str) -> None:
        self.label = label
        self.planned = planned
        self.metric = metric
        self.goal = goal
        self.done = 0
        self.running: set[int] = set()
        self.best: tuple[float, int] | None = None
        self.task = current().task(self.text(), total=planned)

    def text(self) -> str:
        left = max(self.planned - self.done - len(self.running), 0)
        text = f"{self.label}: {self.done} done, {len(self.running)} running, {left} left"
        if self.best is not None:
            text += f", best {self.metric}={self.best[0]:g} (trial {self.best[1]})"
        return text

    def started(self, idx: int) -> None:
        self.running.add(idx)
        self.task.step(self.text(), self.done)

    def ended(self, idx: int, value: float | None) -> None:
        self.done += 1
        self.running.discard(idx)
        if value is not None and (self.best is None or (value > self.best[0] if self.goal == "max"
                                                         else value < self.best[0])):
            self.best = (value, idx)
        self.task.step(self.text(), self.done)

    def close(self) -> None:
        """The final tally stays behind as a line (a terminal's display is gone after the sweep)."""
        self.task.close(self.text())


# ---------------------------------------------------------- the one choice
def choose(stream: IO[str], *, quiet: bool = False) -> Progress:
    """``--quiet``: nothing; a terminal: redrawn in place; anything else: plain lines."""
    if quiet:
        return NullProgress()
    if _isatty(stream) and os.environ.get("TERM", "") != "dumb":
        return TerminalProgress(stream)
    return LinesProgress(stream)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed, or not a file at all
        return False


_current: list[Progress] = []


def current() -> Progress:
    """The display the running command chose; nothing when none did (the Python API)."""
    return _current[-1] if _current else NullProgress()


@contextmanager
def installed(progress: Progress) -> Iterator[Progress]:
    """Make ``progress`` the process's display while the command runs; its live display ends with it."""
    _current.append(progress)
    try:
        yield progress
    finally:
        _current.remove(progress)
        progress.stop()
