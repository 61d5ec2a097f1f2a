"""One SSH connection to a remote host: settings (with ``~/.ssh/config``), host keys, authentication, ProxyJump.

``SshSettings`` is what a run stores (plain values), so any later process can
reconnect. ``open_transport`` turns it into an authenticated paramiko
``Transport``:

* **config**: ``compute.*`` fields win; the rest comes from the ssh config
  file (``Host`` aliases, ``HostName``, ``Port``, ``User``, ``IdentityFile``,
  ``ProxyJump``, ``UserKnownHostsFile``), as ``ssh`` would read it.
* **host keys** (checked before any credential is sent): ``strict`` refuses
  an unknown or changed key, ``accept_new`` records an unknown one in
  ``known_hosts`` and still refuses a changed one, and a pinned
  ``fingerprint`` (``SHA256:...``) accepts exactly that key. Refusals say
  the fingerprint and how to trust it, in one line.
* **keys**: ``compute.key_file`` alone when set; else ``IdentityFile``s, the
  SSH agent, and the default ``~/.ssh/id_*``.
* **speed**: ``TCP_NODELAY`` (connect+auth 18 ms instead of 60 ms here), AES-GCM
  first (no separate MAC), a large receive window, and a first channel that
  does not wait out sshd's Nagle delay (``open_session``: 43 ms -> 3 ms).

paramiko is imported inside functions: it costs ~145 ms, and ``mltrain --help``
must not pay it; ``open_transport`` imports it without ``invoke`` (below).
Its logger is routed to this module's at debug level (``quiet_paramiko``):
its transport thread logs whole tracebacks at ERROR when a peer breaks the
handshake, which would otherwise reach the user's terminal; the one-line
error raised here already says what went wrong.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from mltrain.errors import ConfigError, TargetError
from mltrain.hosts.base import HostDown

if TYPE_CHECKING:
    from mltrain.targets.ssh.config import SshCompute

log = logging.getLogger(__name__)

POLICIES = ("strict", "accept_new")
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
WINDOW = 8 << 20
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
NUDGES = 25


class LinkDown(HostDown):
    """The host did not answer in time, or the connection broke: worth retrying later."""


@dataclass(frozen=True)
class SshSettings:
    """The connection fields of ``compute=ssh`` (stored on run handles)."""

    host: str
    port: int | None = None
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    host_key_policy: str = "strict"
    fingerprint: str | None = None
    ssh_config: str | None = None
    connect_timeout: float = 10.0
    keepalive: float = 10.0
    remote_dir: str = "~/.mltrain"
    python: str = "python3"

    @classmethod
    def from_config(cls, config: SshCompute) -> SshSettings:
        values = {f.name: getattr(config, f.name) for f in fields(cls) if getattr(config, f.name) is not None}
        settings = cls(**values)
        settings.check()
        return settings

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SshSettings:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        if not self.host or self.host == "???":
            raise ConfigError("compute.host is not set; e.g. compute.host=gpu-box (a name, an address or a Host alias)")
        if self.host_key_policy not in POLICIES:
            raise ConfigError(f"compute.host_key_policy={self.host_key_policy!r}: choose one of {', '.join(POLICIES)}")
        if self.fingerprint and not self.fingerprint.startswith("SHA256:"):
            raise ConfigError(f"compute.fingerprint={self.fingerprint!r}: give it as `ssh-keygen -lf` prints it, "
                              "SHA256:...")
        if self.keepalive <= 0 or self.connect_timeout <= 0:
            raise ConfigError("compute.keepalive and compute.connect_timeout must be positive seconds")

    @property
    def link_timeout(self) -> float:
        """Seconds without any sign of life after which the link counts as dead (the helper beats every keepalive/2)."""
        return max(1.0, 2.0 * self.keepalive)

    @property
    def key(self) -> str:
        return f"{self.user or ''}@{self.host}:{self.port or ''}:{self.remote_dir}"


@dataclass(frozen=True)
class Endpoint:
    """A host as ssh would connect to it, after reading the ssh config."""

    alias: str
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    only_key_files: bool
    proxy_jump: str | None
    known_hosts: str

    @property
    def known_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


class _ToDebug(logging.Handler):
    """paramiko's log records, as debug lines of mltrain's own logger (never to stderr by themselves)."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a logging error must not print its own traceback either
            log.debug("paramiko: %s", record.getMessage())


def quiet_paramiko() -> None:
    """Route the ``paramiko`` logger into mltrain's at debug level, and stop it from reaching the root's handlers."""
    logger = logging.getLogger("paramiko")
    if not any(isinstance(h, _ToDebug) for h in logger.handlers):
        logger.addHandler(_ToDebug())
    logger.propagate = False


def import_paramiko() -> Any:
    """``import paramiko``, its logger routed into mltrain's first.

    paramiko also imports ``invoke`` (only to run an ssh config's ``Match exec`` line): ~40 ms of
    every client that opens an SSH connection, accepted rather than hidden behind a ``sys.modules``
    entry that every other thread and library in the process would see.
    """
    quiet_paramiko()
    import paramiko

    return paramiko


def _ssh_config_lookup(settings: SshSettings, alias: str) -> dict[str, Any]:
    import paramiko

    path = os.path.expanduser(settings.ssh_config or "~/.ssh/config")
    if not os.path.exists(path):
        if settings.ssh_config:
            raise ConfigError(f"compute.ssh_config: {path} does not exist")
        return {}
    try:
        return dict(paramiko.SSHConfig.from_path(path).lookup(alias))
    except Exception as exc:  # a malformed file
        raise ConfigError(f"cannot read the ssh config {path}: {exc}") from exc


def resolve(settings: SshSettings, alias: str | None = None) -> Endpoint:
    """Where and how to connect: compute.* first, then the ssh config's entry for the alias."""
    target = alias or settings.host
    user_part, _, host_part = target.rpartition("@") if "@" in target else ("", "", target)
    host_part, _, port_part = host_part.partition(":") if host_part.count(":") == 1 else (host_part, "", "")
    entry = _ssh_config_lookup(settings, host_part)
    final = alias is None
    port = (settings.port if final else None) or (int(port_part) if port_part else None) or int(entry.get("port", 22))
    user = ((settings.user if final else None) or user_part or entry.get("user") or _local_user())
    explicit = settings.key_file if final else None
    key_files = (explicit,) if explicit else tuple(entry.get("identityfile", []))
    known = settings.known_hosts or (entry.get("userknownhostsfile") or "~/.ssh/known_hosts").split()[0]
    jump = entry.get("proxyjump")
    return Endpoint(
        alias=target, hostname=entry.get("hostname", host_part), port=port, user=user,
        key_files=tuple(os.path.expanduser(k) for k in key_files),
        only_key_files=bool(explicit) or str(entry.get("identitiesonly", "no")).lower() == "yes",
        proxy_jump=None if not jump or jump.lower() == "none" else jump,
        known_hosts=os.path.expanduser(known),
    )


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def fingerprint(key: Any) -> str:
    """``SHA256:...`` as ``ssh-keygen -lf`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


# ----------------------------------------------------------------- connecting
def open_transport(settings: SshSettings) -> Any:
    """An authenticated ``paramiko.Transport`` to the configured host (through its ProxyJump chain)."""
    import_paramiko()
    endpoint = resolve(settings)
    hops = [h.strip() for h in endpoint.proxy_jump.split(",")] if endpoint.proxy_jump else []
    via = None
    for hop in hops:
        via = _connect(settings, resolve(settings, hop), via, pin=None)
    return _connect(settings, endpoint, via, pin=settings.fingerprint)


def _connect(settings: SshSettings, endpoint: Endpoint, via: Any, *, pin: str | None) -> Any:
    import paramiko

    timeout = settings.connect_timeout
    where = f"{endpoint.user}@{endpoint.hostname}:{endpoint.port}"
    try:
        if via is None:
            sock: Any = socket.create_connection((endpoint.hostname, endpoint.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        else:
            sock = via.open_channel("direct-tcpip", (endpoint.hostname, endpoint.port), ("127.0.0.1", 0),
                                    timeout=timeout)
    except (OSError, paramiko.SSHException) as exc:
        raise LinkDown(f"cannot connect to {where} ({_why(exc)}); check compute.host/compute.port and that sshd "
                       "runs there") from exc
    transport = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=32768)
    transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
    options = transport.get_security_options()
    options.ciphers = [c for c in FAST_CIPHERS if c in options.ciphers] + [
        c for c in options.ciphers if c not in FAST_CIPHERS]
    known = _load_known_hosts(endpoint.known_hosts)
    known_types = list(known.lookup(endpoint.known_name) or {})
    if known_types and not pin:
        options.key_types = [t for t in known_types if t in options.key_types] + [
            t for t in options.key_types if t not in known_types]
    try:
        transport.start_client(timeout=timeout)  # returns, without an error, when its timeout passes first
        if not transport.remote_version:
            raise _NoBanner
        if not transport.is_active() or getattr(transport, "host_key", None) is None:
            raise LinkDown(f"SSH handshake with {where} did not finish in {timeout:g} s; check compute.host/"
                           "compute.port, or raise compute.connect_timeout for a slow link")
        _check_host_key(transport.get_remote_server_key(), endpoint, known, settings.host_key_policy, pin)
        _authenticate(transport, endpoint)
    except BaseException as exc:
        transport.close()
        if isinstance(exc, TargetError):
            raise
        if isinstance(exc, (OSError, EOFError, paramiko.SSHException, _NoBanner)):
            if not transport.remote_version:
                raise LinkDown(_no_banner(endpoint, timeout, exc)) from None
            raise LinkDown(f"SSH handshake with {where} failed ({_why(exc)})") from exc
        raise
    transport.set_keepalive(max(1, int(settings.keepalive)))
    return transport


class _NoBanner(Exception):
    """start_client gave up waiting before the peer sent its ``SSH-2.0-...`` line."""


def _no_banner(endpoint: Endpoint, timeout: float, exc: BaseException) -> str:
    """Why a peer sent no SSH banner: it closed the connection, or it stayed silent (paramiko's banner_timeout)."""
    where = f"{endpoint.hostname}:{endpoint.port}"
    if isinstance(exc.__context__, EOFError) or isinstance(exc, EOFError):
        return (f"{where} closed the connection without an SSH banner; is that port an SSH server? check "
                "compute.host/compute.port")
    return (f"no SSH banner from {where} in {timeout:g} s; is that port an SSH server? check compute.host/"
            "compute.port, or raise compute.connect_timeout for a slow link")


def open_session(transport: Any, timeout: float) -> Any:
    """``transport.open_session``, without waiting out a delayed ACK on a fresh connection (~40 ms).

    Right after authentication OpenSSH sends small messages of its own
    (host keys, a debug line); with Nagle on (sshd sets TCP_NODELAY only for
    interactive sessions) the channel confirmation then waits until our kernel
    ACKs them, which it delays by 40 ms. An SSH ignore message every few ms
    while we wait carries that ACK at once.
    """
    opened = threading.Event()

    def nudge() -> None:
        for _ in range(NUDGES):
            if opened.wait(0.002):
                return
            try:
                transport.send_ignore(1)
            except Exception:  # the transport died: open_session reports it
                return

    threading.Thread(target=nudge, name="mltrain-ssh-nudge", daemon=True).start()
    try:
        return transport.open_session(timeout=timeout)
    finally:
        opened.set()


def _why(exc: BaseException) -> str:
    """An exception's first line, fit for the user's terminal (a peer's banner can hold anything)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return "".join(c if c.isprintable() else "?" for c in text[:200])


def _load_known_hosts(path: str) -> Any:
    import paramiko

    keys = paramiko.HostKeys()
    if os.path.exists(path):
        try:
            keys.load(path)
        except (OSError, paramiko.SSHException) as exc:
            raise ConfigError(f"cannot read known_hosts file {path}: {exc}") from exc
    return keys


def _check_host_key(key: Any, endpoint: Endpoint, known: Any, policy: str, pin: str | None) -> None:
    name, kind, print_ = endpoint.known_name, key.get_name(), fingerprint(key)
    if pin:
        if print_ == pin:
            return
        raise TargetError(f"host key of {name} is {kind} {print_}, not the pinned compute.fingerprint={pin}; "
                          "if the host was reinstalled, check the new key out of band and pin that")
    entry = known.lookup(name) or {}
    if kind in entry and entry[kind] == key:
        return
    if entry:
        old = ", ".join(f"{t} {fingerprint(k)}" for t, k in entry.items())
        raise TargetError(f"host key of {name} has CHANGED (now {kind} {print_}; {endpoint.known_hosts} has {old}): "
                          "refusing to connect, this may be an attack; if the host was reinstalled, remove the old "
                          f"key with `ssh-keygen -R '{name}' -f {endpoint.known_hosts}` and connect again")
    line = f"{name} {kind} {key.get_base64()}"
    if policy == "accept_new":
        _append_known_host(endpoint.known_hosts, line)
        log.warning("recorded the new host key of %s (%s %s) in %s", name, kind, print_, endpoint.known_hosts)
        return
    port = f"-p {endpoint.port} " if endpoint.port != 22 else ""
    raise TargetError(f"unknown host key for {name}: {kind} {print_}; if that is the host's key, trust it with "
                      f"`ssh-keyscan {port}-t {kind} {endpoint.hostname} >> {endpoint.known_hosts}` (the line: "
                      f"{line}), or pin it with compute.fingerprint={print_}, or allow first use with "
                      "compute.host_key_policy=accept_new")


def _append_known_host(path: str, line: str) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(line + "\n")


def _authenticate(transport: Any, endpoint: Endpoint) -> None:
    import paramiko

    tried: list[str] = []
    problems: list[str] = []
    for label, key in _candidate_keys(endpoint, problems):
        try:
            transport.auth_publickey(endpoint.user, key)
        except paramiko.AuthenticationException:
            tried.append(label)
            continue
        if transport.is_authenticated():
            return
    detail = "; ".join(problems + ([f"refused: {', '.join(tried)}"] if tried else ["no key to offer"]))
    hint = "set compute.key_file, load the key into ssh-agent (ssh-add)" if not tried else (
        "add the public key to ~/.ssh/authorized_keys on the host, or set compute.key_file / compute.user")
    raise TargetError(f"SSH authentication as {endpoint.user} on {endpoint.known_name} failed ({detail}); {hint}")


def _candidate_keys(endpoint: Endpoint, problems: list[str]) -> Any:
    import paramiko

    files = list(endpoint.key_files)
    for path in files:
        if not os.path.exists(path):
            problems.append(f"key file {path} does not exist")
            continue
        try:
            yield path, paramiko.PKey.from_path(path)
        except paramiko.PasswordRequiredException:
            problems.append(f"{path} is passphrase-protected (load it into ssh-agent with ssh-add)")
        except (paramiko.SSHException, OSError, ValueError) as exc:
            problems.append(f"cannot load {path}: {_why(exc)}")
    if endpoint.only_key_files and files:
        return
    try:
        agent_keys = paramiko.Agent().get_keys()
    except paramiko.SSHException:
        agent_keys = ()
    for key in agent_keys:
        yield f"agent key {fingerprint(key)}", key
    if files:
        return
    for name in DEFAULT_KEYS:
        path = os.path.expanduser(f"~/.ssh/{name}")
        if os.path.exists(path):
            try:
                yield path, paramiko.PKey.from_path(path)
            except paramiko.SSHException:
                continue
