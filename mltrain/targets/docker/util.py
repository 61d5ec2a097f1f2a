"""Engine mechanics shared by everything that talks to a Docker engine.

The Docker target (``mltrain.targets.docker.executor``), the Docker environment
(``mltrain.environments.docker``) and the SSH target (which hands the host's
engine to the environment) need the same few things: how to reach an engine
(``EngineConfig``; ``mltrain.targets.docker.engine.connect`` makes the client),
engine errors turned into one-line ``TargetError``s, and tar streams to send.
Archives pulled back from a container are hostile input, extracted by
``mltrain.util.archive``. Nothing here imports the engine client or docker-py.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mltrain.errors import TargetError
from mltrain.hosts.container import SOCKET_PATHS

if TYPE_CHECKING:
    from mltrain.snapshot.blobstore import BlobStore
    from mltrain.snapshot.manifest import Manifest
    from mltrain.targets.docker.config import DockerCompute

log = logging.getLogger(__name__)

LOCAL_SOCKET = "unix:///var/run/docker.sock"
START_HINT = (
    "start one (as root: `systemctl start docker`, or `dockerd > /tmp/dockerd.log 2>&1 &`) "
    "or point at one with compute.base_url=unix:///path.sock|tcp://host:2376|ssh://user@host (or $DOCKER_HOST)"
)


# ------------------------------------------------------------------ the engine
class EngineError(TargetError):
    """The engine answered a call with an error status."""

    def __init__(self, status: int, explanation: str) -> None:
        super().__init__(explanation)
        self.status = status
        self.explanation = explanation


class NotFound(EngineError):
    """404: no such container or image."""


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
    if isinstance(exc, EngineError):
        return TargetError(f"Docker engine refused to {what}: {_first_line(exc.explanation)}")
    if isinstance(exc, TargetError):
        return exc  # already one line (an unreachable engine says how to start one)
    return TargetError(f"could not {what}: {_first_line(str(exc)) or type(exc).__name__}")


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


def is_not_found(exc: BaseException) -> bool:
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
