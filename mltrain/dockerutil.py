"""Engine mechanics shared by everything that talks to a Docker engine.

The Docker target (``mltrain.executors.docker``), the Docker environment
(``mltrain.environments.docker``) and the SSH target (which hands the host's
engine to the environment) need the same few things: how to reach an engine
(``EngineConfig``, ``connect`` -> a ``mltrain.docker_api.Engine``), engine
errors turned into one-line ``TargetError``s, tar streams, and a *safe*
extraction of archives pulled back from a container (whatever a job leaves in
its output folder is untrusted: no absolute paths, no ``..``, no links leaving
the target).

Nothing here imports docker-py; ``import_docker`` is for building images only.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import posixpath
import stat
import sys
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltrain.errors import TargetError
from mltrain.snapshot_manifest import link_stays_inside

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
    engines through its own tunnel (``mltrain.docker_api``), never docker-py's.
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
    def from_config(cls, config: Any) -> EngineConfig:
        return cls(**{k: getattr(config, k) for k in cls.__dataclass_fields__ if hasattr(config, k)})

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


def connect(engine: EngineConfig, *, version: str | None = None) -> Any:
    """The ``mltrain.docker_api.Engine`` for ``engine`` (no call made yet: the first one finds out if it answers).

    ``version``: the API version a stored run handle recorded; default: the pinned one.
    """
    from mltrain.docker_api import Engine

    return Engine(engine, version=version)


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
    from mltrain.docker_api import EngineError

    if isinstance(exc, EngineError):
        return TargetError(f"Docker engine refused to {what}: {_first_line(exc.explanation)}")
    if isinstance(exc, TargetError):
        return exc  # already one line (an unreachable engine says how to start one)
    return TargetError(f"could not {what}: {_first_line(str(exc)) or type(exc).__name__}")


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


def is_not_found(exc: BaseException) -> bool:
    from mltrain.docker_api import NotFound

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


def add_snapshot(tar: tarfile.TarFile, manifest: Any, blobs: Any, prefix: str) -> None:
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


# ------------------------------------------------------------ safe extraction
class ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (what ``get_archive`` returns), for ``tarfile`` streams."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def safe_extract(chunks: Iterable[bytes], routes: Mapping[str, Path]) -> list[str]:
    """Extract the members of a tar stream that ``routes`` asks for; return what was refused (and why).

    ``routes`` maps a member name to a destination: ``{"run/outputs": dir, "run/metrics.jsonl": file}``
    extracts everything under ``run/outputs/`` into ``dir`` and that one file
    to ``file``; other members are ignored. Refused (and logged): absolute
    names, ``..``, links whose target leaves the destination, hard links,
    devices and FIFOs, anything whose folder resolves outside the destination
    (a link planted earlier in the stream). Modes lose setuid and group/other
    write; owners are not applied.
    """
    refused: list[str] = []
    roots = {key.strip("/"): Path(dest) for key, dest in routes.items()}
    with tarfile.open(fileobj=io.BufferedReader(ChunkReader(chunks)), mode="r|") as tar:
        for member in tar:
            name = member.name.strip("/")
            route = next((k for k in roots if name == k or name.startswith(k + "/")), None)
            if route is None:
                continue
            dest = roots[route]
            rel = name[len(route):].strip("/")
            if not rel:  # the route itself: a folder to fill, or the one file wanted
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    refused.append(f"{name}: not a regular file")
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                _extract_one(tar, member, str(dest))
                continue
            dest.mkdir(parents=True, exist_ok=True)
            root_real = os.path.realpath(dest)
            target = os.path.join(root_real, rel)
            problem = _member_problem(rel, member)
            if problem is None and not _inside(root_real, os.path.dirname(target)):
                problem = "its folder leads outside the destination"
            if problem is not None:
                refused.append(f"{name}: {problem}")
                continue
            _extract_one(tar, member, target)
    for item in refused:
        log.warning("not extracted: %s", item)
    return refused


def _member_problem(rel: str, member: tarfile.TarInfo) -> str | None:
    parts = rel.split("/")
    if not rel or os.path.isabs(rel) or ".." in parts or "\0" in rel:
        return "not a clean relative path"
    if member.islnk():
        return "hard link"
    if member.issym():
        return None if link_stays_inside(rel, member.linkname) else "symlink leading outside"
    if not (member.isfile() or member.isdir()):
        return "not a regular file, folder or symlink"
    return None


def _inside(root_real: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def _extract_one(tar: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if member.isdir():
        if os.path.islink(target):
            os.unlink(target)
        os.makedirs(target, exist_ok=True)
        os.chmod(target, (member.mode & 0o755) | 0o700)
        return
    if os.path.lexists(target) and (os.path.islink(target) or not os.path.isfile(target)):
        if os.path.isdir(target) and not os.path.islink(target):
            import shutil

            shutil.rmtree(target)
        else:
            os.unlink(target)
    if member.issym():
        os.symlink(member.linkname, target)
        return
    source = tar.extractfile(member)
    assert source is not None
    tmp = f"{target}.mltrain-tmp"
    with open(tmp, "wb") as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)
    os.chmod(tmp, (member.mode & 0o755) | stat.S_IRUSR | stat.S_IWUSR)
    os.replace(tmp, target)
