"""Engine mechanics shared by everything that talks to a Docker engine.

The Docker target (``mltrain.targets.docker.executor``), the Docker environment
(``mltrain.environments.docker``) and the SSH target (which hands the host's
engine to the environment) need the same few things: how to reach an engine
(``EngineConfig``, ``connect`` -> a ``mltrain.targets.docker.engine.Engine``), engine
errors turned into one-line ``TargetError``s, and tar streams to send. Archives
pulled back from a container are hostile input, extracted by
``mltrain.util.archive``.

Nothing here imports docker-py; ``import_docker`` is for building images only.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import posixpath
import sys
import tarfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mltrain.errors import TargetError

if TYPE_CHECKING:
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.manifest import Manifest
    from mltrain.targets.docker.config import DockerCompute
    from mltrain.targets.docker.engine import Engine

log = logging.getLogger(__name__)

LOCAL_SOCKET = "unix:///var/run/docker.sock"
SOCKET_PATHS = ("/var/run/docker.sock", "/run/docker.sock")
START_HINT = (
    "start one (as root: `systemctl start docker`, or `dockerd > /tmp/dockerd.log 2>&1 &`) "
    "or point at one with compute.base_url=unix:///path.sock|tcp://host:2376|ssh://user@host (or $DOCKER_HOST)"
)


def import_docker() -> Any:
    """``import docker`` (only to build an image) without paramiko, which docker-py loads for ssh:// alone.

    docker-py imports paramiko eagerly for its optional ssh:// transport, which
    is 115 of its 210 ms; the import is guarded by ``ImportError`` in docker-py,
    so hiding paramiko while docker loads skips it. mltrain reaches ssh://
    engines through its own tunnel (``mltrain.targets.docker.engine``), never docker-py's.
    """
    if "docker" in sys.modules or "paramiko" in sys.modules:
        return importlib.import_module("docker")
    sys.modules["paramiko"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module("docker")
    finally:
        del sys.modules["paramiko"]


# ------------------------------------------------------------------ the engine
@dataclass(frozen=True)
class EngineConfig:
    """How to reach one engine: the connection fields of ``compute=docker`` (stored on run handles)."""

    base_url: str | None = None
    tls_verify: bool = False
    tls_ca_cert: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    timeout: float = 60.0

    @classmethod
    def from_config(cls, config: DockerCompute) -> EngineConfig:
        return cls(base_url=config.base_url, tls_verify=config.tls_verify, tls_ca_cert=config.tls_ca_cert,
                   tls_client_cert=config.tls_client_cert, tls_client_key=config.tls_client_key,
                   timeout=config.timeout)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def url(self) -> str:
        """The engine's address: ``base_url``, else ``$DOCKER_HOST``, else the local socket."""
        return self.base_url or os.environ.get("DOCKER_HOST") or LOCAL_SOCKET

    @property
    def is_local(self) -> bool:
        """A unix socket is on this machine, so host paths can be bind-mounted."""
        return self.url.startswith(("unix://", "/"))

    def uses_tls(self) -> bool:
        return bool(self.tls_verify or self.tls_ca_cert or self.tls_client_cert)

    def describe(self) -> str:
        return "local engine" if self.url == LOCAL_SOCKET else self.url


def engine_sockets(engine: EngineConfig) -> list[str]:
    """Where the engine's socket may lie on the engine's host: the usual paths, and the unix socket its URL names."""
    sockets = list(SOCKET_PATHS)
    url = engine.url
    path = url[len("unix://"):] if url.startswith("unix://") else url if url.startswith("/") else ""
    if path and path not in sockets:
        sockets.append(path)
    return sockets


def socket_exposure(source: str, sockets: Iterable[str], resolve: Callable[[str], str | None] | None = None,
                    ) -> tuple[str, str] | None:
    """``(socket, how)`` when bind-mounting host path ``source`` hands a container the engine's socket, else None.

    A bind exposes the socket when it is the socket, holds it (``/``, ``/var``,
    ``/run``, ``/var/run``) or lies inside it. Both sides are compared as
    written and, through ``resolve`` (symlinks resolved on the engine's host,
    None where that host's files cannot be seen), as the engine will see them:
    the engine follows links in a bind's source, and ``/var/run`` is usually a
    link to ``/run``.
    """

    def forms(path: str) -> list[str]:
        out = [_clean(path)]
        real = resolve(path) if resolve is not None else None
        if real and _clean(real) not in out:
            out.append(_clean(real))
        return out

    for sock in sockets:
        for s in forms(sock):
            for src in forms(source):
                how = "is" if src == s else "holds" if _under(s, src) else "lies inside" if _under(src, s) else ""
                if how:
                    said = source if src == _clean(source) else f"{source} (a link to {src})"
                    return sock, f"{said} is the socket" if said == s else f"{said} {how} {s}"
    return None


def _clean(path: str) -> str:
    return "/" + posixpath.normpath(path).lstrip("/")


def _under(child: str, parent: str) -> bool:
    return child != parent and (parent == "/" or child.startswith(parent + "/"))


def connect(engine: EngineConfig, *, version: str | None = None) -> Engine:
    """The ``engine.Engine`` for ``engine`` (no call made yet: the first one finds out if it answers).

    ``version``: the API version a stored run handle recorded; default: the pinned one.
    """
    from mltrain.targets.docker.engine import Engine

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


def unreachable(engine: EngineConfig, exc: BaseException) -> TargetError:
    text = str(exc)
    if isinstance(exc, TargetError):
        return exc
    if "FileNotFoundError" in text or "No such file" in text:
        why = "no engine socket there"
    elif "PermissionError" in text or "Permission denied" in text:
        return TargetError(
            f"permission denied on the Docker engine socket {engine.url}; add your user to the `docker` group "
            "(then log in again) or run mltrain as a user allowed to use it"
        )
    elif "Connection refused" in text:
        why = "connection refused"
    elif "SSL" in text or "certificate" in text.lower():
        return TargetError(
            f"TLS handshake with the Docker engine at {engine.url} failed ({_first_line(text)}); "
            "check compute.tls_ca_cert, compute.tls_client_cert and compute.tls_client_key"
        )
    elif "timed out" in text.lower() or "Timeout" in type(exc).__name__:
        why = "timed out"
    else:
        why = _first_line(text)
    return TargetError(f"cannot reach the Docker engine at {engine.url} ({why}); {START_HINT}")


def engine_error(what: str, exc: BaseException) -> TargetError:
    """Turn an error raised while doing ``what`` into one line naming it.

    An unreachable engine is already a ``TargetError`` (``docker_api`` raises
    :func:`unreachable`); any other ``OSError`` is local (a full disk while
    copying outputs out), so it is named as such, not blamed on the engine.
    """
    from mltrain.targets.docker.engine import EngineError

    if isinstance(exc, EngineError):
        return TargetError(f"Docker engine refused to {what}: {_first_line(exc.explanation)}")
    if isinstance(exc, TargetError):
        return exc  # already one line (an unreachable engine says how to start one)
    return TargetError(f"could not {what}: {_first_line(str(exc)) or type(exc).__name__}")


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


def is_not_found(exc: BaseException) -> bool:
    from mltrain.targets.docker.engine import NotFound

    return isinstance(exc, NotFound)


# ------------------------------------------------------------------- tar making
def dir_entry(name: str, *, uid: int = 0, gid: int = 0, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode, info.uid, info.gid = mode, uid, gid
    return info


def tar_bytes(entries: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A small tar in memory, from (header, content) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, content in entries:
            if content is None:
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def add_snapshot(tar: tarfile.TarFile, manifest: Manifest, blobs: BlobStore, prefix: str) -> None:
    """Add a snapshot's files (from the blob store) under ``prefix/``, root-owned and not writable by others."""
    made: set[str] = set()
    for entry in manifest.entries:
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in made:
                made.add(folder)
                tar.addfile(dir_entry(f"{prefix}/{folder}"))
        info = tarfile.TarInfo(f"{prefix}/{entry.path}")
        info.uid = info.gid = 0
        if entry.link is not None:
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.link, 0o777
            tar.addfile(info)
            continue
        info.mode, info.size = entry.mode, entry.size
        with open(blobs.path(entry.digest), "rb") as fh:
            tar.addfile(info, fh)
