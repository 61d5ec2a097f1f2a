"""Shared fixtures: temp projects, the real CLI in a subprocess, and CI's no-skip rule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
MLTRAIN = str(BIN / "mltrain")
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a skipped test is a failure: CI must exercise every real component."""
    outcome = yield
    report = outcome.get_result()
    if ON_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (not allowed): {report.longrepr}"


def pytest_configure(config: pytest.Config) -> None:
    """Give SIGINT its usual Python handler when the suite was started with it ignored.

    A shell without job control starts a background job (``make test &``, ``nohup``, some CI runners) with
    SIGINT ignored, and an ignored signal stays ignored across ``exec`` (``restore_signals`` resets only
    SIGPIPE and SIGXFSZ): every CLI a test starts would ignore it too, and a Ctrl-C test would wait for
    an exit that never comes. A *handled* signal is reset to its default in the child at ``exec``, so with
    a handler here every process the suite starts begins with SIGINT at its default, however the suite was
    started (cheaper than a ``preexec_fn`` in each child, which also rules out vfork).
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # a pytest-xdist worker: the terminal size the suite itself was started with
        for name, value in workerinput["mltrain_terminal_env"].items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_TERMINAL_ENV = ("COLUMNS", "LINES")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: hand each worker the controller's ``COLUMNS`` and ``LINES`` (or their absence).

    A worker finds ``COLUMNS=80 LINES=24`` in its environment where the suite had none, and every CLI a test
    starts would inherit them: output that fits the terminal's width (``runs plot``) would differ from a run
    in one process.
    """
    node.workerinput["mltrain_terminal_env"] = {name: os.environ.get(name) for name in _TERMINAL_ENV}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the shared Ray cluster, if this process started one, while the session is still ours to finish."""
    raytest = sys.modules.get("raytest")
    if raytest is not None:
        raytest.stop_shared()


_STARTED: list[tuple[subprocess.Popen[str], Project]] = []


@pytest.fixture(autouse=True)
def reap_started() -> Iterator[None]:
    """Every ``Project.popen`` process is gone after its test, whatever the test did.

    A test that failed half-way (a timeout) leaves its CLI running: kill it by pid, reap it (an unreaped
    ``Popen`` raises ResourceWarning later, in whichever test happens to run then), and cancel the runs it
    left going, so their scripts (in sessions of their own) do not outlive the test either.
    """
    yield
    started, _STARTED[:] = list(_STARTED), []
    for proc, proj in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
            proj.cancel_unfinished()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mltrain-cache")


@pytest.fixture
def base_env(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLTRAIN_", "HYDRA_"))}
    env["MLTRAIN_CACHE_DIR"] = str(cache_dir)
    return env


TRAIN = textwrap.dedent(
    """
    import json, os, sys
    print("argv", json.dumps(sys.argv[1:]))
    print("run", os.environ.get("MLTRAIN_RUN_ID"))
    print("::metric loss=0.5 step=1")
    out = os.environ["MLTRAIN_OUTPUT_DIR"]
    with open(os.path.join(out, "result.txt"), "w") as fh:
        fh.write("done")
    sys.exit(int(os.environ.get("EXIT_WITH", "0")))
    """
)

FIT = textwrap.dedent(
    """
    import os, sys
    import mltrain
    args = sys.argv[1:]
    lr = float(args[args.index("--lr") + 1])
    for step in range(4):
        mltrain.log_metric("acc", lr * (step + 1), step=step)
    print("::metric loss=0.5 step=3")
    with open(os.path.join(os.environ["MLTRAIN_OUTPUT_DIR"], "model.txt"), "w") as fh:
        fh.write(" ".join(args))
    """
)
"""A script that takes ``--lr``, logs ``acc`` = lr x (step + 1) over 4 steps (timestamped) and ``loss`` on stdout,
and writes its arguments to ``outputs/model.txt`` (the API and MLflow tests)."""


class Project:
    """A temp project folder and a way to run the real ``mltrain`` command in it."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def run(
        self,
        *args: str,
        timeout: float = 120,
        check: bool = False,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [MLTRAIN, *args],
            cwd=cwd or self.root,
            env={**self.env, **(env or {})},
            text=True,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"mltrain {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def popen(self, *args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[str]:
        """The CLI in the background; the ``reap_started`` fixture kills and reaps it if the test does not."""
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            [MLTRAIN, *args],
            cwd=self.root,
            env={**self.env, **(env or {})},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )
        _STARTED.append((proc, self))
        return proc

    def cancel_unfinished(self) -> None:
        """Cancel the runs still going in this project (their scripts run in sessions of their own)."""
        import json

        listed = self.run("runs", "list", "--json", "--limit", "0")
        if listed.returncode != 0:
            return  # no run history: nothing was started
        for record in json.loads(listed.stdout):
            if record["status"] not in ("Completed", "Failed", "Canceled"):
                self.run("runs", "cancel", str(record["id"]))

    def runs(self) -> list[dict[str, object]]:
        import json

        return json.loads(self.run("runs", "list", "--json", "--limit", "0", check=True).stdout)  # type: ignore[no-any-return]

    @property
    def workspace(self) -> Path:
        return self.root / ".mltrain"


@pytest.fixture
def project(tmp_path: Path, base_env: dict[str, str]) -> Project:
    root = tmp_path / "proj"
    root.mkdir()
    proj = Project(root, base_env)
    proj.write("train.py", TRAIN)
    return proj


@pytest.fixture
def in_project(project: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The Python API in-process, in the project's folder, with the environment the CLI tests give the command."""
    monkeypatch.chdir(project.root)
    for key in [k for k in os.environ if k.startswith("MLTRAIN_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLTRAIN_CACHE_DIR", project.env["MLTRAIN_CACHE_DIR"])
    return project


def run_in_pty(project: Project, *args: str, env: dict[str, str] | None = None, timeout: float = 180,
               watch: Callable[[bytes], None] | None = None) -> tuple[int, bytes]:
    """The CLI with a pseudo-terminal (``pty``) as stdout and stderr, as in a shell: its exit code and output.

    ``watch`` sees the output so far each time more arrives (to act on what the CLI shows while it runs).
    """
    import pty
    import select
    import time

    leader, follower = pty.openpty()
    proc = subprocess.Popen([MLTRAIN, *args], cwd=project.root, stdin=subprocess.DEVNULL, stdout=follower,
                            stderr=follower, env={**project.env, "TERM": "xterm", "COLUMNS": "150", **(env or {})})
    os.close(follower)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            out += data
            if watch is not None:
                watch(bytes(out))
        return proc.wait(timeout=max(deadline - time.monotonic(), 1)), bytes(out)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """A user error: non-zero exit, exactly one line on stderr naming the problem, no traceback."""
    assert result.returncode != 0, result
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mltrain: error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def need_optuna() -> None:
    """Skip (a failure under CI=true) where optuna, the tpe sampler's optional extra, is not installed."""
    pytest.importorskip("optuna", reason="sweep.sampler=tpe needs the optuna extra (in .[dev]; make test installs it)")


def process_alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a process reparented to init here may linger as one)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate: Any, timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something true (returned) or ``timeout`` seconds pass (an AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"still not true after {timeout} s: {predicate}")


def errors_in_threads(work: Callable[[int], object], count: int) -> list[BaseException]:
    """Run ``work(n)`` for n in range(count) on as many threads at once; what each raised (a thread's own
    exception is otherwise only printed, and the test would pass)."""
    import threading

    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
