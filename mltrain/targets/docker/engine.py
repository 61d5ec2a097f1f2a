"""The Docker Engine API on the standard library: the one seam through which mltrain talks to an engine.

Why not docker-py for this: importing it (with requests and urllib3) costs
more than a tenth of a second, a fifth of a cached run's wall time, and a run
needs only a dozen plain HTTP calls. So ``Engine`` speaks HTTP/1.1 itself
(``http.client``) over the engine's unix socket, plain TCP, or TCP+TLS
(``compute.tls_*``); an ``ssh://`` engine is reached through a unix socket that
``mltrain.targets.ssh.tunnel`` forwards over our own SSH connection (same host-key
rules as ``compute=ssh``). docker-py is imported only to build an image (its
``.dockerignore`` matcher and context tar).

* One keep-alive connection per thread; a connection the engine closed while
  idle is reopened once. A stream (logs, archive, build output) borrows the
  thread's connection and gives it back only when read to the end.
* The API version is pinned (``API_VERSION``) instead of asked for: no
  ``/version`` round trip per process. Only an engine that refuses it costs
  one ``/version`` call, and the version it accepts is used from then on
  (and stored on run handles).
* Every call has a deadline (``compute.timeout``); a blocking call (wait,
  stop) gets its own wait on top. A followed log stream has none: it ends
  when the container stops, or when its reader closes it.
* Errors: the engine's refusals are ``EngineError`` (``NotFound`` for 404)
  carrying the engine's message; anything on the way to the engine (no
  socket, refused, TLS, timeout) is the one-line "cannot reach the Docker
  engine ..." ``TargetError`` of ``mltrain.targets.docker.util.unreachable``.
"""

from __future__ import annotations

import codecs
import contextlib
import http.client
import json
import os
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

from mltrain.errors import ConfigError, TargetError
from mltrain.targets.docker.util import EngineConfig, EngineError, NotFound, unreachable

API_VERSION = "1.41"  # Docker 20.10; every engine since 2020 accepts it
CHUNK = 65536
STDOUT, STDERR = 1, 2


__all__ = ["API_VERSION", "Engine", "EngineError", "NotFound", "Stream", "connect", "demux", "json_events",
           "since_param"]


# ------------------------------------------------------------------ framing
def demux(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(stream, payload)`` frames of a multiplexed stream (non-tty container output), from chunks cut anywhere.

    Each frame is an 8-byte header -- stream (1 stdout, 2 stderr), three zero
    bytes, the payload length big-endian -- then the payload.
    """
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        start = 0
        while len(buf) - start >= 8:
            size = int.from_bytes(buf[start + 4:start + 8], "big")
            end = start + 8 + size
            if len(buf) < end:
                break
            yield buf[start], bytes(buf[start + 8:end])
            start = end
        del buf[:start]
    if buf:
        raise TargetError(f"the engine's log stream ended inside a frame ({len(buf)} bytes left over)")


def json_events(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a build or pull progress stream, however the chunks cut them."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may be cut between chunks
    text = ""
    for chunk in chunks:
        text += utf8.decode(chunk)
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text):
                break
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except ValueError:
                break  # incomplete: wait for the next chunk
            if isinstance(obj, dict):
                yield obj
        text = text[pos:]
    if text.strip():
        raise TargetError(f"the engine's progress stream ended mid-message: {text.strip()[:120]!r}")


def since_param(since_ns: int) -> str:
    """The ``since`` query value (``seconds.nanoseconds``) for a time in nanoseconds since the epoch."""
    return f"{since_ns // 10**9}.{since_ns % 10**9:09d}"


# --------------------------------------------------------------- connections
class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Stream:
    """A streamed response body: iterate for raw chunks as they arrive; ``close`` may be called from any thread."""

    def __init__(self, engine: Engine, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self._engine = engine
        self._conn = conn
        self._response = response
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            while not self._closed:
                data = self._response.read1(CHUNK)
                if not data:
                    break
                yield data
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not self._closed:
                raise self._engine.unreachable(exc) from exc
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._response.isclosed():  # read to the end: the connection can serve the next call
            self._engine._give_back(self._conn)
            return
        sock = self._conn.sock
        if sock is not None:  # wakes a reader blocked in another thread
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()


def connect(engine: EngineConfig, *, version: str | None = None) -> Engine:
    """The ``Engine`` for ``engine`` (no call made yet: the first one finds out if it answers).

    ``version``: the API version a stored run handle recorded; default: the pinned one.
    """
    return Engine(engine, version=version)


_SHARED: dict[EngineConfig, Engine] = {}
_SHARED_MAX = 16  # engines of SSH tunnels that have closed fall out (their socket path is never reused)
_SHARED_LOCK = threading.Lock()


def shared_engine(engine: EngineConfig) -> Engine:
    """One ``Engine`` per engine in this process (it is thread-safe), whoever asks: the target that runs the
    containers and the environment that builds the image share its connections (one TLS handshake, not two)."""
    with _SHARED_LOCK:
        found = _SHARED.get(engine)
        if found is None:
            found = _SHARED[engine] = connect(engine)
            while len(_SHARED) > _SHARED_MAX:
                del _SHARED[next(iter(_SHARED))]
        return found


class Engine:
    """One Docker engine, reached as ``config`` says; safe to share between threads."""

    def __init__(self, config: EngineConfig, *, version: str | None = None) -> None:
        self.config = config
        self.api_version = version or API_VERSION
        self._local = threading.local()
        self._tunnel: Any = None
        self._lock = threading.Lock()
        url = config.url
        if url.startswith("/"):
            url = "unix://" + url
        self._url = urlsplit(url)
        if self._url.scheme not in ("unix", "tcp", "http", "https", "ssh"):
            raise ConfigError(f"compute.base_url={config.url!r}: use unix:///path.sock, tcp://host:port or "
                              "ssh://user@host")
        if config.tls_client_cert and not config.tls_client_key:
            raise ConfigError("compute.tls_client_cert is set without compute.tls_client_key; set both")

    def unreachable(self, exc: BaseException) -> TargetError:
        return unreachable(self.config, exc)

    # ------------------------------------------------------------- transport
    def _new_connection(self, timeout: float) -> http.client.HTTPConnection:
        scheme = self._url.scheme
        if scheme == "ssh":
            return _UnixConnection(self._ssh_socket(), timeout)
        if scheme == "unix":
            return _UnixConnection(self._url.path, timeout)
        host, port = self._url.hostname or "localhost", self._url.port
        if scheme == "https" or self.config.uses_tls():
            return http.client.HTTPSConnection(host, port or 2376, timeout=timeout, context=self._tls_context())
        return http.client.HTTPConnection(host, port or 2375, timeout=timeout)

    def _tls_context(self) -> ssl.SSLContext:
        cfg = self.config
        verify = bool(cfg.tls_ca_cert or cfg.tls_verify)
        for setting in ("tls_ca_cert", "tls_client_cert", "tls_client_key"):
            path = getattr(cfg, setting)
            if path and not os.path.isfile(path):
                raise ConfigError(f"compute.{setting}={path!r}: no such file; point it at the engine's PEM file")
        try:
            ctx = ssl.create_default_context(cafile=cfg.tls_ca_cert) if verify else ssl._create_unverified_context()
            if cfg.tls_client_cert:
                ctx.load_cert_chain(cfg.tls_client_cert, cfg.tls_client_key)
        except OSError as exc:  # ssl.SSLError included: a file that is not a certificate or key
            raise ConfigError(f"cannot load the Docker TLS files: {exc.strerror or exc}; check that "
                              "compute.tls_ca_cert, compute.tls_client_cert and compute.tls_client_key are PEM "
                              "files") from None
        return ctx

    def _ssh_socket(self) -> str:
        """A local socket forwarded to the engine of the ``ssh://`` host (see ``mltrain.targets.ssh.tunnel``)."""
        with self._lock:
            if self._tunnel is None:
                from mltrain.targets.ssh.conn import SshSettings
                from mltrain.targets.ssh.link import Link
                from mltrain.targets.ssh.tunnel import DockerTunnel

                settings = SshSettings(host=self._url.hostname or "", port=self._url.port,
                                       user=self._url.username)
                settings.check()
                link = Link.shared(settings)
                try:
                    link.hello()  # connected, host key checked: its own error, not a reset socket later
                except Exception as exc:
                    raise TargetError(f"cannot reach the Docker engine at {self.config.url}: "
                                      f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from exc
                self._tunnel = DockerTunnel(link)
            return str(self._tunnel.path)

    def host_realpath(self, path: str) -> str | None:
        """``path`` with symlinks resolved on the engine's host; None where its files cannot be seen (tcp://).

        The file system of an ``ssh://`` engine's host is asked through the
        same connection as the engine (its helper resolves the path there).
        """
        scheme = self._url.scheme
        if scheme == "unix":
            return os.path.realpath(path)
        if scheme != "ssh":
            return None
        self._ssh_socket()  # connected (host key checked) as for any engine call
        try:
            return str(self._tunnel.link.call("realpath", path=path)["path"])
        except Exception as exc:
            raise self.unreachable(exc) from exc

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's idle connection (and True), or a new one (and False)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            return conn, True
        return self._new_connection(self.config.timeout), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        if getattr(self._local, "conn", None) is None:
            self._local.conn = conn
        else:
            conn.close()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _path(self, path: str, params: Mapping[str, Any] | None, versioned: bool) -> str:
        prefix = f"/v{self.api_version}" if versioned else ""
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        return prefix + path + (f"?{urlencode(query)}" if query else "")

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                body: bytes | IO[bytes] | None = None, headers: Mapping[str, str] | None = None,
                wait: float | None = 0.0, limit: float | None = None, versioned: bool = True,
                stream: bool = False) -> Any:
        """Call the engine; returns the decoded JSON (or None), or a ``Stream`` with ``stream=True``.

        ``wait``: seconds the engine may legitimately take on top of the
        ``compute.timeout`` deadline (None: no deadline, for followed streams).
        ``limit``: instead, a deadline whose passing is an answer, not an
        error: the call returns None.
        """
        timeout = limit if limit is not None else None if wait is None else self.config.timeout + wait
        for attempt in (0, 1):
            conn, reused = self._take()
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                if attempt and hasattr(body, "seek"):
                    body.seek(0)  # type: ignore[union-attr]
                conn.request(method, self._path(path, params, versioned), body=body,
                             headers=dict(headers or {}))
                response = conn.getresponse()
                if response.status < 400 and stream:
                    return Stream(self, conn, response)
                data = response.read()
            except TimeoutError as exc:
                conn.close()
                if limit is not None:
                    return None
                raise self.unreachable(exc) from exc
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                if reused and not attempt:  # the engine closed the idle connection: once more, on a new one
                    continue
                raise self.unreachable(exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise self.unreachable(exc) from exc
            self._give_back(conn)
            if response.status < 400:
                return json.loads(data) if data and "json" in response.getheader("Content-Type", "") else None
            message = _message(data) or f"HTTP {response.status}"
            refused_version = response.status == 400 and versioned and "client version" in message
            if refused_version and not attempt and self._negotiate():
                continue
            raise (NotFound if response.status == 404 else EngineError)(response.status, message)
        raise TargetError("internal: no attempt left")  # pragma: no cover

    def _negotiate(self) -> bool:
        """The engine refused our API version: take the highest it offers (up to ours, if it accepts ours' range)."""
        info = self.request("GET", "/version", versioned=False)
        offered = str(info.get("ApiVersion") or "")
        minimum = str(info.get("MinAPIVersion") or "1.12")
        chosen = min(offered, API_VERSION, key=_version_key) if offered else ""
        if _version_key(chosen) < _version_key(minimum):
            chosen = offered
        if not chosen or chosen == self.api_version:
            return False
        self.api_version = chosen
        return True

    # ------------------------------------------------------------ operations
    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        try:
            return dict(self.request("GET", f"/images/{quote(ref, safe='')}/json"))
        except NotFound:
            return None

    def images(self, label: str | None = None) -> list[dict[str, Any]]:
        """Image summaries (``Id``, ``RepoTags``, ``Labels``, ``Created``), those carrying ``label`` if given."""
        filters = json.dumps({"label": [label]}) if label else None
        return list(self.request("GET", "/images/json", params={"filters": filters}) or [])

    def remove_image(self, image: str) -> str | None:
        """Remove an image (never forced); None when done, else why not (e.g. a container uses it)."""
        try:
            self.request("DELETE", f"/images/{quote(image, safe='')}", wait=30.0)
        except NotFound:
            return None
        except EngineError as exc:
            return str(exc)
        return None

    def inspect_volume(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.request("GET", f"/volumes/{quote(name, safe='')}"))
        except NotFound:
            return None

    def create_container(self, spec: Mapping[str, Any], name: str | None = None) -> str:
        body = json.dumps(spec).encode()
        answer = self.request("POST", "/containers/create", params={"name": name}, body=body,
                              headers={"Content-Type": "application/json"})
        return str(answer["Id"])

    def start(self, container: str) -> None:
        self.request("POST", f"/containers/{container}/start")

    def inspect_container(self, container: str) -> dict[str, Any] | None:
        try:
            return dict(self.request("GET", f"/containers/{container}/json"))
        except NotFound:
            return None

    def wait(self, container: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until the container stops (``{"StatusCode": ..}``); None if ``timeout`` seconds pass first."""
        answer = self.request("POST", f"/containers/{container}/wait",
                              limit=self.config.timeout if timeout is None else timeout)
        return None if answer is None else dict(answer)

    def logs(self, container: str, *, follow: bool = False, timestamps: bool = False,
             since_ns: int | None = None) -> Stream:
        """The container's output, both streams, as a multiplexed ``Stream`` (``demux`` it)."""
        params = {"stdout": True, "stderr": True, "follow": follow, "timestamps": timestamps,
                  "since": since_param(since_ns) if since_ns else None}
        return self.request("GET", f"/containers/{container}/logs", params=params, stream=True,  # type: ignore[no-any-return]
                            wait=None if follow else 0.0)

    def stop(self, container: str, grace: int) -> None:
        """TERM now, KILL after ``grace`` seconds (the engine's ``docker stop``)."""
        try:
            self.request("POST", f"/containers/{container}/stop", params={"t": grace}, wait=grace + 10.0)
        except EngineError as exc:
            if exc.status != 304:  # 304: already stopped
                raise

    def remove(self, container: str) -> None:
        """Force-remove the container and its anonymous volumes; gone already is fine."""
        with contextlib.suppress(NotFound):
            self.request("DELETE", f"/containers/{container}", params={"force": True, "v": True})

    def get_archive(self, container: str, path: str) -> Stream:
        """A tar stream of ``path`` in the container."""
        return self.request("GET", f"/containers/{container}/archive", params={"path": path},  # type: ignore[no-any-return]
                            stream=True)

    def put_archive(self, container: str, path: str, data: IO[bytes], size: int) -> None:
        """Unpack the tar in ``data`` at ``path`` in the (created) container."""
        self.request("PUT", f"/containers/{container}/archive", params={"path": path}, body=data,
                     headers={"Content-Type": "application/x-tar", "Content-Length": str(size)}, wait=60.0)

    def build(self, context: IO[bytes], size: int, *, tag: str, dockerfile: str,
              buildargs: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Build from a tar context; yields the progress events (``stream``, ``status``, ``aux``, ``error``)."""
        params = {"t": tag, "dockerfile": dockerfile, "rm": True, "forcerm": True, "pull": False,
                  "buildargs": json.dumps(dict(buildargs)) if buildargs else None}
        stream = self.request("POST", "/build", params=params, body=context, wait=None, stream=True,
                              headers={"Content-Type": "application/x-tar", "Content-Length": str(size)})
        return json_events(stream)

    def pull(self, repository: str, tag: str) -> Iterator[dict[str, Any]]:
        """Pull ``repository:tag``; yields the progress events."""
        stream = self.request("POST", "/images/create", params={"fromImage": repository, "tag": tag},
                              wait=None, stream=True)
        return json_events(stream)

    def run_to_end(self, spec: Mapping[str, Any], timeout: float) -> tuple[int, bytes, bytes]:
        """Create, start, wait for and remove a short-lived container; its exit code, stdout and stderr."""
        container = self.create_container(spec)
        try:
            self.start(container)
            result = self.wait(container, timeout=timeout)
            if result is None:
                raise TargetError(f"the container did not finish within {timeout:g} s")
            out: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray()}
            for kind, payload in demux(self.logs(container)):
                out.setdefault(kind, bytearray()).extend(payload)
            return int(result.get("StatusCode", -1)), bytes(out[STDOUT]), bytes(out[STDERR])
        finally:
            self.remove(container)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _message(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return str(parsed.get("message", text)) if isinstance(parsed, dict) else text


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)

