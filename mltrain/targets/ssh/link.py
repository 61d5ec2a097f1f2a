"""Talking to the mltrain helper on a remote host: requests with deadlines, and reconnection with backoff.

A ``Link`` is one SSH connection plus the helper process at its far end
(``mltrain.hosts.agent``); one per host per process (``Link.shared``), used
by one request at a time. Every read has a deadline (``link_timeout``, twice
``keepalive``): the helper sends a heartbeat at least every ``keepalive/2``
seconds while a step is busy, so silence for that long means the link is
dead (paramiko's own reads would block forever). A dead link is dropped;
the next request reconnects, no sooner than the backoff allows (1, 2, 4 ...
30 s), and a failed attempt raises ``LinkDown`` at once in between -- so a
monitor keeps polling cheaply while the host is away and the run goes on.

Everything the host sends is hostile input: a frame's size is checked
against its kind's limit before a byte of it is read, unknown kinds,
non-object JSON, data frames nobody asked for and heartbeats from steps that
never wait are refused, and each reply field is read with its type checked
(``Reply.take``). Any of these is a ``BadReply``: one line naming the host;
the helper is dropped (its stream is out of step) and nothing of it is used.
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
from typing import Any, ClassVar, TypeVar

from mltrain.errors import TargetError
from mltrain.hosts.runner import Runner, StartError
from mltrain.targets.ssh.conn import LinkDown, SshSettings, open_session, open_transport

log = logging.getLogger(__name__)

HEAD = struct.Struct(">cI")
FRAME = 1 << 20
AGENT_SOURCE = (Path(__file__).parents[2] / "hosts" / "agent.py").read_bytes
MAX_BACKOFF = 30.0
# The largest frame of each kind an honest helper sends: JSON up to a list of every blob of a snapshot at the
# 200,000-file limit (~14 MB); data up to one read_log chunk (4 MiB) or command output (64 KiB frames).
LIMITS = {b"J": 32 << 20, b"D": 8 << 20, b"E": 8 << 20}
STDERR_TAIL = 64 << 10
T = TypeVar("T")


class RemoteError(TargetError):
    """The helper refused a step; ``errno`` is set when an OS call failed there."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class BadReply(TargetError):
    """The host answered outside the protocol (a broken or hostile host): nothing of the answer is used."""


def printable(text: str, limit: int = 300) -> str:
    """Host-supplied text fit for one line of the user's terminal: no control characters, bounded."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def _bad(where: str, op: str, what: str) -> BadReply:
    return BadReply(f"bad reply from the mltrain helper on {where} ({op}): {what}; nothing of it was used (check "
                    "that compute.python is a plain Python 3 there and that nothing tampers with the host)")


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))


class Reply(dict[str, Any]):
    """A helper's JSON reply; ``take`` reads one field, refusing a missing one or one of another type."""

    def __init__(self, data: dict[str, Any], where: str, op: str) -> None:
        super().__init__(data)
        self.where = where
        self.op = op

    def bad(self, what: str) -> BadReply:
        return _bad(self.where, self.op, what)

    def take(self, key: str, kind: type[T]) -> T:
        value = self.get(key)
        if isinstance(value, kind) and _is(value, kind):
            return value
        if key not in self:
            raise self.bad(f"{key!r} is missing")
        raise self.bad(f"{key!r} is of type {type(value).__name__}, not {kind.__name__}")

    def maybe(self, key: str, kind: type[T]) -> T | None:
        """The field, or None when it is absent or null."""
        return None if self.get(key) is None else self.take(key, kind)

    def take_list(self, key: str, kind: type[T]) -> list[T]:
        values = self.take(key, list)
        for value in values:
            if not _is(value, kind):
                raise self.bad(f"{key!r} holds a value of type {type(value).__name__}, not only {kind.__name__}")
        return values


PACKET = 32768


def sendall(channel: Any, data: bytes | bytearray | memoryview) -> None:
    """``channel.sendall`` without its copy of the rest of the buffer after every 32 KiB packet."""
    view = memoryview(data)
    while view:
        sent = channel.send(view[:PACKET])
        view = view[sent:]


class _Agent:
    """One helper process on one exec channel."""

    def __init__(self, channel: Any, timeout: float, where: str) -> None:
        self.channel = channel
        self.timeout = timeout
        self.where = where
        self.op = "hello"  # the step being answered, for messages
        self.deadline: float | None = None  # monotonic time by which the step must be answered, when it has one
        self.buffer = bytearray()
        self.sent = 0  # payload bytes written to the channel (requests and bodies)

    def send(self, kind: bytes, payload: bytes) -> None:
        sendall(self.channel, HEAD.pack(kind, len(payload)) + payload)
        self.sent += HEAD.size + len(payload)

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send(b"J", json.dumps(obj).encode())

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise TimeoutError(f"{self.op} still busy past its deadline")
            data = self.channel.recv(max(FRAME, n - len(self.buffer)))
            if not data:
                raise EOFError
            self.buffer += data
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def bad(self, what: str) -> BadReply:
        return _bad(self.where, self.op, what)

    def recv(self) -> tuple[bytes, bytes]:
        """One frame, its size checked against its kind's limit before any of it is read."""
        kind, size = HEAD.unpack(self._read(HEAD.size))
        limit = LIMITS.get(kind)
        if limit is None:
            raise self.bad(f"a frame of unknown kind {kind!r}")
        if size > limit:
            raise self.bad(f"a {kind.decode()} frame of {size} bytes, over its limit of {limit >> 20} MiB")
        return kind, self._read(size)

    def parse(self, payload: bytes) -> Reply:
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            raise self.bad("a JSON frame that is not JSON") from None
        if not isinstance(obj, dict):
            raise self.bad(f"a JSON {type(obj).__name__} where an object was due")
        return Reply(obj, self.where, self.op)

    def recv_json(self) -> Reply:
        kind, payload = self.recv()
        if kind != b"J":
            raise self.bad("a data frame where a JSON reply was due")
        return self.parse(payload)

    def stderr_tail(self) -> str:
        out = b""
        try:
            while len(out) < STDERR_TAIL and self.channel.recv_stderr_ready():
                out += self.channel.recv_stderr(65536)
        except OSError:
            pass
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
        return printable(lines[-1].strip()) if lines else ""

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
        self.info = Reply({}, settings.host, "hello")
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
        """Start the helper: the host runs its kept copy only if that copy's sha256 is ``digest`` (see BOOT)."""
        from mltrain.hosts.agent import BOOT

        source = AGENT_SOURCE()
        digest = hashlib.sha256(source).hexdigest()
        beat = self.settings.keepalive / 2
        command = " ".join(shlex.quote(w) for w in (self.settings.python, "-I", "-S", "-c", BOOT,
                                                     self.settings.remote_dir, digest, f"{beat:g}"))
        # paramiko waits for the exec reply without a deadline: a watchdog closes the transport instead.
        watchdog = threading.Timer(self.settings.connect_timeout + self.settings.link_timeout, self.transport.close)
        watchdog.daemon = True
        watchdog.start()
        agent: _Agent | None = None
        try:
            channel = open_session(self.transport, self.settings.connect_timeout)
            channel.settimeout(self.settings.link_timeout)
            channel.exec_command(command)
            agent = _Agent(channel, self.settings.link_timeout, self.where)
            hello = agent.recv_json()
            if hello.get("need") == "agent":
                uncached = hello.maybe("uncached", str)
                if uncached:
                    log.warning("%s: %s; mltrain's helper is sent on every connection instead of kept there",
                                self.where, printable(uncached))
                agent.send(b"D", source)
                hello = agent.recv_json()
            if "error" in hello:
                raise TargetError(f"the mltrain helper did not start on {self.where}: "
                                  f"{printable(str(hello['error']))}")
            self._check_hello(hello)
        except TargetError:  # a bad reply, or the helper's own refusal
            if agent is not None:
                agent.close()
            raise
        except EOFError:
            tail = agent.stderr_tail() if agent is not None else ""
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

    @staticmethod
    def _check_hello(hello: Reply) -> None:
        """The fields the client uses later; ``root`` is built into paths sent back and shown to the user."""
        from mltrain.hosts.agent import PROTOCOL

        if hello.take("protocol", int) not in (1, PROTOCOL):  # 1: no codecs offered (uploads go raw)
            raise hello.bad(f"protocol {hello['protocol']}, not {PROTOCOL}")
        for key in ("root", "home", "boot_id", "python"):
            hello.take(key, str)
        hello.take("uid", int)
        hello.take("gid", int)
        root = hello["root"]
        if not root.startswith("/") or printable(root, len(root)) != root:
            raise hello.bad("'root' is not an absolute path of printable characters")

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

    def hello(self) -> Reply:
        with self.lock:
            self._ensure()
            return self.info

    # ------------------------------------------------------------ requests
    def request(self, msg: dict[str, Any], *, on_data: Callable[[bytes, bytes], None] | None = None,
                body: Iterable[tuple[bytes, bytes]] | None = None, retry: bool = False,
                max_data: int | None = None, deadline: float | None = None) -> Reply:
        """Send one request (then ``body`` frames) and return the reply; D/E frames go to ``on_data``.

        ``retry``: the step is idempotent, so try once more on a fresh link if this one drops.
        ``max_data``: the most D/E bytes the step may send back (more is a ``BadReply``).
        ``deadline``: seconds the whole step may take, heartbeats or not (a step that has its own time limit).
        """
        for attempt in (0, 1):
            with self.lock:
                agent = self._ensure()
                try:
                    agent.op = str(msg.get("op"))
                    agent.deadline = None if deadline is None else time.monotonic() + deadline
                    agent.send_json(msg)
                    if body is not None:
                        self._send_body(agent, body)
                    return self._reply(agent, on_data, max_data)
                except RemoteError:
                    raise
                except BadReply:
                    self._forget_agent()
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

    def _reply(self, agent: _Agent, on_data: Callable[[bytes, bytes], None] | None,
               max_data: int | None) -> Reply:
        from mltrain.hosts.agent import BEATING

        received = 0
        while True:
            kind, payload = agent.recv()
            if kind != b"J":
                if on_data is None:
                    raise agent.bad("data frames from a step that sends none")
                received += len(payload)
                if max_data is not None and received > max_data:
                    raise agent.bad(f"more than the {max_data} bytes of data asked for")
                on_data(kind, payload)
                continue
            reply = agent.parse(payload)
            if "hb" in reply:
                if agent.op not in BEATING:
                    raise agent.bad("a heartbeat from a step that never waits")
                continue
            if "error" in reply:
                if reply.get("fatal"):
                    self._forget_agent()
                errno = reply.get("errno")
                raise RemoteError(f"{self.where}: {printable(str(reply['error']))}",
                                  errno if _is(errno, int) else None)
            return reply

    def call(self, op: str, **args: Any) -> Reply:
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
        # the helper kills the command at ``timeout``; a host still busy well past that is not believed
        deadline = None if timeout is None else timeout + 2 * self.link.settings.link_timeout
        reply = self.link.request({"op": "run", "argv": argv, "merge": merge, "timeout": timeout, "env": env or {}},
                                  on_data=lambda kind, data: sink(data, kind == b"E"), deadline=deadline)
        start_error = reply.maybe("start_error", str)
        if start_error:
            raise StartError(printable(start_error))
        if reply.maybe("timed_out", bool):
            raise StartError(f"timed out after {timeout:g} s")
        return reply.take("exit", int)

    def default_python(self) -> str:
        return "python3"

    def env_root(self, local_default: Path) -> str:
        return f"{self.link.hello()['root']}/cache"

    def which(self, name: str) -> tuple[str | None, bool]:
        reply = self.link.call("which", name=name)
        return reply.maybe("path", str), bool(reply.maybe("executable", bool))

    def find_tool(self, name: str) -> str | None:
        path, executable = self.which(name)
        return path if executable else None

    def realpath(self, path: str) -> str:
        return self.link.call("realpath", path=path).take("path", str)

    def mtimes(self, paths: list[str]) -> list[int]:
        reply = self.link.call("mtimes", paths=paths)
        mtimes = reply.take_list("mtimes", int)
        if len(mtimes) != len(paths):
            raise reply.bad(f"{len(mtimes)} mtimes for {len(paths)} paths")
        return mtimes

    def read_text(self, path: str) -> str | None:
        return self.link.call("read_text", path=path).maybe("text", str)

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
