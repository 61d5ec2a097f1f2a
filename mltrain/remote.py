"""Talking to the mltrain helper on a remote host: requests with deadlines, and reconnection with backoff.

A ``Link`` is one SSH connection plus the helper process at its far end
(``mltrain.remote_agent``); one per host per process (``Link.shared``), used
by one request at a time. Every read has a deadline (``link_timeout``, twice
``keepalive``): the helper sends a heartbeat at least every ``keepalive/2``
seconds while a step is busy, so silence for that long means the link is
dead (paramiko's own reads would block forever). A dead link is dropped;
the next request reconnects, no sooner than the backoff allows (1, 2, 4 ...
30 s), and a failed attempt raises ``LinkDown`` at once in between -- so a
monitor keeps polling cheaply while the host is away and the run goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shlex
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from mltrain.errors import TargetError
from mltrain.runner import Runner, StartError
from mltrain.sshconn import LinkDown, SshSettings, open_session, open_transport

log = logging.getLogger(__name__)

HEAD = struct.Struct(">cI")
FRAME = 1 << 20
AGENT_SOURCE = (Path(__file__).parent / "remote_agent.py").read_bytes
MAX_BACKOFF = 30.0


class RemoteError(TargetError):
    """The helper refused a step; ``errno`` is set when an OS call failed there."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


PACKET = 32768


def sendall(channel: Any, data: bytes | bytearray | memoryview) -> None:
    """``channel.sendall`` without its copy of the rest of the buffer after every 32 KiB packet."""
    view = memoryview(data)
    while view:
        sent = channel.send(view[:PACKET])
        view = view[sent:]


class _Agent:
    """One helper process on one exec channel."""

    def __init__(self, channel: Any, timeout: float) -> None:
        self.channel = channel
        self.timeout = timeout
        self.buffer = bytearray()
        self.sent = 0  # payload bytes written to the channel (requests and bodies)

    def send(self, kind: bytes, payload: bytes) -> None:
        sendall(self.channel, HEAD.pack(kind, len(payload)) + payload)
        self.sent += HEAD.size + len(payload)

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send(b"J", json.dumps(obj).encode())

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.channel.recv(max(FRAME, n - len(self.buffer)))
            if not data:
                raise EOFError
            self.buffer += data
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def recv(self) -> tuple[bytes, bytes]:
        kind, size = HEAD.unpack(self._read(HEAD.size))
        return kind, self._read(size)

    def stderr_tail(self) -> str:
        out = b""
        try:
            while self.channel.recv_stderr_ready():
                out += self.channel.recv_stderr(65536)
        except OSError:
            pass
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip()[:300] if lines else ""

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone
            self.channel.close()


class Link:
    """An SSH connection to one host and its helper; see the module docstring."""

    _pool: ClassVar[dict[str, Link]] = {}
    _pool_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, settings: SshSettings) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self.transport: Any = None
        self.agent: _Agent | None = None
        self.info: dict[str, Any] = {}
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: TargetError | None = None
        self._sent_before = 0  # by helpers of earlier connections

    @classmethod
    def shared(cls, settings: SshSettings) -> Link:
        with cls._pool_lock:
            link = cls._pool.get(settings.key)
            if link is None or link.settings != settings:
                link = cls._pool[settings.key] = cls(settings)
            return link

    @property
    def where(self) -> str:
        return self.settings.host

    # ---------------------------------------------------------- connecting
    def _ensure(self) -> _Agent:
        if self.agent is not None:
            return self.agent
        if self.transport is None or not self.transport.is_active():
            now = time.monotonic()
            if now < self._retry_at and self._last_error is not None:
                raise LinkDown(str(self._last_error))
            try:
                self.transport = open_transport(self.settings)
            except LinkDown as exc:
                self._failures += 1
                self._retry_at = time.monotonic() + min(MAX_BACKOFF, 0.5 * 2 ** self._failures)
                self._last_error = exc
                raise
            if self._failures:
                log.warning("reconnected to %s", self.where)
            self._failures = 0
            self._last_error = None
        self.agent = self._start_agent()
        return self.agent

    def _start_agent(self) -> _Agent:
        from mltrain.remote_agent import BOOT

        source = AGENT_SOURCE()
        digest = hashlib.sha256(source).hexdigest()[:16]
        beat = self.settings.keepalive / 2
        command = " ".join(shlex.quote(w) for w in (self.settings.python, "-S", "-c", BOOT, self.settings.remote_dir,
                                                     digest, f"{beat:g}"))
        # paramiko waits for the exec reply without a deadline: a watchdog closes the transport instead.
        watchdog = threading.Timer(self.settings.connect_timeout + self.settings.link_timeout, self.transport.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            channel = open_session(self.transport, self.settings.connect_timeout)
            channel.settimeout(self.settings.link_timeout)
            channel.exec_command(command)
            agent = _Agent(channel, self.settings.link_timeout)
            _, payload = agent.recv()
            hello = json.loads(payload)
            if hello.get("need") == "agent":
                agent.send(b"D", source)
                _kind, payload = agent.recv()
                hello = json.loads(payload)
        except EOFError:
            tail = agent.stderr_tail()
            raise TargetError(f"the mltrain helper did not start on {self.where} ({tail or 'no message'}); it "
                              "needs Python 3.8+: install it there or set compute.python to its path") from None
        except (TimeoutError, OSError) as exc:
            self._drop()
            raise LinkDown(f"lost the connection to {self.where} while starting the helper ({exc})") from exc
        except Exception as exc:
            import paramiko

            if not isinstance(exc, paramiko.SSHException):
                raise
            self._drop()
            raise LinkDown(f"lost the connection to {self.where} while starting the helper ({exc})") from exc
        finally:
            watchdog.cancel()
        self.info = hello
        return agent

    @property
    def bytes_sent(self) -> int:
        """Payload bytes this link has written to its helpers (what an upload costs, before SSH framing)."""
        return self._sent_before + (self.agent.sent if self.agent is not None else 0)

    def _forget_agent(self) -> None:
        if self.agent is not None:
            self._sent_before += self.agent.sent
            self.agent.close()
        self.agent = None

    def _drop(self) -> None:
        if self.agent is not None:
            self._sent_before += self.agent.sent
            self.agent.close()
        self.agent = None
        if self.transport is not None:
            with contextlib.suppress(Exception):  # already gone
                self.transport.close()
        self.transport = None

    def close(self) -> None:
        with self.lock:
            self._drop()

    def hello(self) -> dict[str, Any]:
        with self.lock:
            self._ensure()
            return self.info

    # ------------------------------------------------------------ requests
    def request(self, msg: dict[str, Any], *, on_data: Callable[[bytes, bytes], None] | None = None,
                body: Iterable[tuple[bytes, bytes]] | None = None, retry: bool = False) -> dict[str, Any]:
        """Send one request (then ``body`` frames) and return the reply; D/E frames go to ``on_data``.

        ``retry``: the step is idempotent, so try once more on a fresh link if this one drops.
        """
        for attempt in (0, 1):
            with self.lock:
                agent = self._ensure()
                try:
                    agent.send_json(msg)
                    if body is not None:
                        self._send_body(agent, body)
                    return self._reply(agent, on_data)
                except RemoteError:
                    raise
                except EOFError:
                    tail = agent.stderr_tail()
                    self._forget_agent()
                    error: TargetError = LinkDown(f"the connection to {self.where} closed during {msg.get('op')}"
                                                  + (f" ({tail})" if tail else ""))
                except OSError as exc:  # timeouts included
                    self._drop()
                    error = LinkDown(f"lost the connection to {self.where} during {msg.get('op')} "
                                     f"({type(exc).__name__}: {exc or 'no answer in time'})")
                except Exception as exc:
                    import paramiko

                    if not isinstance(exc, paramiko.SSHException):
                        raise
                    self._drop()
                    error = LinkDown(f"lost the connection to {self.where} during {msg.get('op')} ({exc})")
            if not retry or attempt:
                raise error
            log.warning("%s; retrying once", error)
        raise AssertionError("unreachable")

    def _send_body(self, agent: _Agent, body: Iterable[tuple[bytes, bytes]]) -> None:
        """Stream frames; stop early if the helper has already answered (it failed and is exiting)."""
        pending = bytearray()
        for kind, payload in body:
            pending += HEAD.pack(kind, len(payload))
            pending += payload
            if len(pending) >= FRAME:
                if agent.channel.recv_ready():
                    return
                sendall(agent.channel, pending)
                agent.sent += len(pending)
                pending.clear()
        if pending:
            sendall(agent.channel, pending)
            agent.sent += len(pending)

    def _reply(self, agent: _Agent, on_data: Callable[[bytes, bytes], None] | None) -> dict[str, Any]:
        while True:
            kind, payload = agent.recv()
            if kind != b"J":
                if on_data is not None:
                    on_data(kind, payload)
                continue
            reply: dict[str, Any] = json.loads(payload)
            if "hb" in reply:
                continue
            if "error" in reply:
                if reply.get("fatal"):
                    self._forget_agent()
                raise RemoteError(f"{self.where}: {reply['error']}", reply.get("errno"))
            return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        return self.request({"op": op, **args})


class RemoteRunner(Runner):
    """Commands and small files on the remote host, through its helper."""

    shares_files = False

    def __init__(self, link: Link) -> None:
        self.link = link
        self.name = f"host {link.where}"
        self.key = f"ssh:{link.settings.key}"

    def _execute(self, argv: list[str], sink: Callable[[bytes, bool], None], *, merge: bool,
                 timeout: float | None, env: dict[str, str] | None) -> int:
        reply = self.link.request({"op": "run", "argv": argv, "merge": merge, "timeout": timeout, "env": env or {}},
                                  on_data=lambda kind, data: sink(data, kind == b"E"))
        if reply.get("start_error"):
            raise StartError(reply["start_error"])
        if reply.get("timed_out"):
            raise StartError(f"timed out after {timeout:g} s")
        return int(reply["exit"])

    def default_python(self) -> str:
        return "python3"

    def env_root(self, local_default: Path) -> str:
        return f"{self.link.hello()['root']}/cache"

    def which(self, name: str) -> tuple[str | None, bool]:
        reply = self.link.call("which", name=name)
        return reply["path"], bool(reply.get("executable"))

    def find_tool(self, name: str) -> str | None:
        path, executable = self.which(name)
        return path if executable else None

    def realpath(self, path: str) -> str:
        return str(self.link.call("realpath", path=path)["path"])

    def mtimes(self, paths: list[str]) -> list[int]:
        return [int(m) for m in self.link.call("mtimes", paths=paths)["mtimes"]]

    def read_text(self, path: str) -> str | None:
        text = self.link.call("read_text", path=path)["text"]
        return None if text is None else str(text)

    def write_text(self, path: str, text: str) -> None:
        self.link.call("write_text", path=path, text=text)

    def makedirs(self, path: str) -> None:
        self.link.call("makedirs", path=path)

    def remove_tree(self, path: str) -> None:
        self.link.call("rmtree", path=path)

    @contextmanager
    def lock(self, path: str) -> Iterator[None]:
        self.link.call("lock", path=path)
        try:
            yield
        finally:
            with contextlib.suppress(LinkDown):  # the helper died with the link, and the lock with it
                self.link.call("unlock", path=path)
