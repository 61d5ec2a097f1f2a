"""The command-runner seam: where an environment runs its commands and keeps its few files.

Environments (``user_managed``, ``venv``) and the interpreter probe do the
same work on this machine and on a remote host; only the place differs. So
they ask the target for a ``Runner`` (``target.runner()``) and use it for
everything that touches the machine: run a command (argv, never a shell
string), read or write a small file, take a lock, find a program.

As in invoke/fabric, ``Runner.run`` is shared -- collecting output, feeding
lines to a callback, keeping stdout and stderr apart -- and a runner only
supplies the hook that starts a command and waits for it (``_execute``).
``LocalRunner`` uses subprocess and the local file system;
``mltrain.targets.ssh.link.RemoteRunner`` asks the helper on the remote host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

LineFn = Callable[[str], None]


class StartError(Exception):
    """The command could not be started (no such program, timed out); ``str`` says why."""


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def last_line(self) -> str:
        """The last non-empty line of the output (stderr first): what a one-line error shows."""
        for text in (self.stderr, self.stdout):
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if lines:
                return lines[-1]
        return "no output"


class _Lines:
    """Splits output into lines for ``on_line`` while keeping all of it."""

    def __init__(self, on_line: LineFn | None) -> None:
        self.on_line = on_line
        self.out = bytearray()
        self.err = bytearray()
        self._pending = b""

    def feed(self, data: bytes, is_err: bool) -> None:
        (self.err if is_err else self.out).extend(data)
        if self.on_line is None:
            return
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self.on_line(line.decode(errors="replace").rstrip("\r"))

    def close(self) -> None:
        if self.on_line is not None and self._pending:
            self.on_line(self._pending.decode(errors="replace"))
        self._pending = b""


class Runner(ABC):
    """One machine, as environments see it (see the module docstring)."""

    name: str = "this machine"
    key: str = "local"  # stable identity, for caches kept on this machine about that one
    shares_files: bool = True  # the caller's files are visible there at the same paths

    def run(self, argv: list[str], *, on_line: LineFn | None = None, merge: bool = False,
            timeout: float | None = None, env: dict[str, str] | None = None) -> Completed:
        """Run ``argv`` to its end. ``merge`` sends stderr into stdout (one ordered stream, for build logs)."""
        lines = _Lines(on_line)
        try:
            code = self._execute(list(argv), lines.feed, merge=merge, timeout=timeout, env=env)
        finally:
            lines.close()
        return Completed(tuple(argv), code, lines.out.decode(errors="replace"), lines.err.decode(errors="replace"))

    @abstractmethod
    def _execute(self, argv: list[str], sink: Callable[[bytes, bool], None], *, merge: bool,
                 timeout: float | None, env: dict[str, str] | None) -> int:
        """Start ``argv``, hand each piece of output to ``sink(data, is_stderr)``, return its exit code."""

    @abstractmethod
    def default_python(self) -> str:
        """The interpreter an environment uses when the config names none."""

    @abstractmethod
    def env_root(self, local_default: Path) -> str:
        """Where built environments live there (``local_default`` is the caller's cache folder)."""

    @abstractmethod
    def which(self, name: str) -> tuple[str | None, bool]:
        """(absolute path or None, is it executable) for a path or a name looked up on PATH there."""

    @abstractmethod
    def find_tool(self, name: str) -> str | None:
        """An executable helper program (e.g. ``uv``) there, or None."""

    @abstractmethod
    def realpath(self, path: str) -> str: ...

    @abstractmethod
    def mtimes(self, paths: list[str]) -> list[int]:
        """``st_mtime_ns`` of each path, -1 where it is missing."""

    @abstractmethod
    def read_text(self, path: str) -> str | None:
        """The file's text, None if it does not exist."""

    @abstractmethod
    def write_text(self, path: str, text: str) -> None:
        """Write atomically (a reader sees the old file or the new one)."""

    @abstractmethod
    def makedirs(self, path: str) -> None: ...

    @abstractmethod
    def remove_tree(self, path: str) -> None: ...

    @abstractmethod
    def lock(self, path: str) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock on ``path`` there, held for the ``with`` block (released if the holder dies)."""


class LocalRunner(Runner):
    """This machine."""

    def _execute(self, argv: list[str], sink: Callable[[bytes, bool], None], *, merge: bool,
                 timeout: float | None, env: dict[str, str] | None) -> int:
        from mltrain.hosts.client import child_popen_kwargs

        try:  # while a run is prepared, in its process group (mltrain.hosts.client): it must not outlive the client
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                                    env={**os.environ, **env} if env else None, **child_popen_kwargs())
        except OSError as exc:
            raise StartError(exc.strerror or str(exc)) from exc
        with proc, selectors.DefaultSelector() as selector:  # the process's pipes close with it
            assert proc.stdout is not None
            selector.register(proc.stdout, selectors.EVENT_READ, False)
            if proc.stderr is not None:
                selector.register(proc.stderr, selectors.EVENT_READ, True)
            deadline = None if timeout is None else _now() + timeout
            while selector.get_map():
                left = None if deadline is None else deadline - _now()
                if left is not None and left <= 0:
                    proc.kill()
                    proc.wait()
                    raise StartError(f"timed out after {timeout:g} s")
                for key, _ in selector.select(left):
                    data = os.read(key.fd, 65536)
                    if data:
                        sink(data, bool(key.data))
                    else:
                        selector.unregister(key.fileobj)
            return proc.wait()

    def default_python(self) -> str:
        return sys.executable

    def env_root(self, local_default: Path) -> str:
        return str(local_default)

    def which(self, name: str) -> tuple[str | None, bool]:
        found = name if os.path.isabs(name) else shutil.which(name)
        if not found or not os.path.exists(found):
            return None, False
        return os.path.abspath(found), os.access(found, os.X_OK)

    def find_tool(self, name: str) -> str | None:
        beside = Path(sys.executable).parent / name  # the tool installed with mltrain, if any
        if beside.exists():
            return str(beside)
        return shutil.which(name)

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def mtimes(self, paths: list[str]) -> list[int]:
        stamps = []
        for path in paths:
            try:
                stamps.append(os.stat(path).st_mtime_ns)
            except OSError:
                stamps.append(-1)
        return stamps

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            return None

    def write_text(self, path: str, text: str) -> None:
        from mltrain.hosts.agent import write_atomic

        write_atomic(path, text.encode())

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[None]:
        with open(path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield


def _now() -> float:
    import time

    return time.monotonic()


LOCAL = LocalRunner()


def runner_for(target: object | None) -> Runner:
    """The target's runner; no target (a caller outside any run) means this machine."""
    if target is None:
        return LOCAL
    runner: Runner = target.runner()  # type: ignore[attr-defined]
    return runner
