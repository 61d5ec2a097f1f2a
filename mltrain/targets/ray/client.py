"""The Ray cluster's Jobs API over plain HTTP: bounded, with a timeout on every request, one line per failure.

Why not Ray's ``JobSubmissionClient``: importing ``ray`` costs about a second in every
client process (a sweep's workers, ``runs show``), and its calls have no overall timeout.
The REST API it wraps is small and versioned (``/api/version``), so mltrain speaks it
directly -- the same endpoints, the same content-addressed package store (``/api/packages``).
One ``Cluster`` per address is shared by every run of a process (``Cluster.shared``), and
what the cluster answered once (its version, its resource totals) is kept for that process.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, ClassVar

from mltrain.errors import TargetError

log = logging.getLogger(__name__)

API_VERSION = "4"  # the Jobs API version mltrain speaks (Ray 2.x dashboards answer "4" since Ray 2.9)
MIN_RAY = (2, 9)
MAX_REPLY = 64 * 1024 * 1024  # bytes of one reply (a job's whole log); more is cut
HINT = "start one with `ray start --head` or set compute.address (or $RAY_ADDRESS) to its dashboard, e.g. " \
       "http://HEAD:8265"


class Unreachable(TargetError):
    """The cluster did not answer (a refused port, an unknown name, a timeout)."""


@dataclass(frozen=True)
class Totals:
    """Resources (``resources_total``) of one node, or summed over ``nodes`` nodes."""

    cpus: float
    gpus: float
    memory: float
    nodes: int


class Cluster:
    """One Ray dashboard: ``url`` with ``timeout`` seconds for each request."""

    _shared: ClassVar[dict[tuple[str, float], Cluster]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._version: dict[str, Any] | None = None
        self._nodes: list[Totals] | None = None

    @classmethod
    def shared(cls, url: str, timeout: float) -> Cluster:
        with cls._lock:
            key = (url.rstrip("/"), timeout)
            found = cls._shared.get(key)
            if found is None:
                found = cls._shared[key] = cls(url, timeout)
            return found

    # ---------------------------------------------------------------- HTTP
    def request(self, method: str, path: str, *, body: bytes | None = None, json_body: Any = None,
                content_type: str = "application/json", ok: tuple[int, ...] = (200,)) -> tuple[int, bytes]:
        """``(status, body)``; statuses outside ``ok`` (and 404 when listed) are the caller's to read."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, _read(resp)
        except urllib.error.HTTPError as exc:
            data = _read(exc)
            if exc.code in ok:
                return exc.code, data
            raise TargetError(f"the Ray cluster at {self.url} refused {method} {path}: HTTP {exc.code} "
                              f"{_first_line(data)}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach the Ray cluster at {self.url} ({reason}, timeout {self.timeout:g} s); "
                              f"{HINT}") from None

    def get_json(self, path: str) -> Any:
        _, data = self.request("GET", path)
        try:
            return json.loads(data)
        except ValueError:
            raise TargetError(f"{self.url}{path} did not answer JSON: {self.url} is not a Ray dashboard; "
                              "check compute.address (the dashboard's port, default 8265)") from None

    # ------------------------------------------------------------ questions
    def version(self) -> dict[str, Any]:
        """``/api/version``, checked: a Ray dashboard whose Jobs API mltrain speaks (else one line)."""
        if self._version is not None:
            return self._version
        try:
            status, data = self.request("GET", "/api/version", ok=(200, 404, 405))
        except Unreachable:
            raise
        except TargetError:
            status, data = 0, b""
        try:
            found = json.loads(data) if status == 200 else None
        except ValueError:
            found = None
        if not isinstance(found, dict) or "ray_version" not in found:
            raise TargetError(f"{self.url} answers but is not a Ray dashboard (GET /api/version gave "
                              f"{'HTTP ' + str(status) if status != 200 else 'no Ray version'}); check compute.address "
                              "(the dashboard's port, default 8265)")
        ray_version = str(found["ray_version"])
        if str(found.get("version")) != API_VERSION or _major_minor(ray_version) < MIN_RAY:
            raise TargetError(f"Ray version mismatch: the cluster at {self.url} runs Ray {ray_version} (Jobs API "
                              f"{found.get('version')}); mltrain needs Ray >= {'.'.join(map(str, MIN_RAY))} "
                              f"(Jobs API {API_VERSION}); upgrade the cluster, e.g. pip install -U 'ray[default]'")
        local = _local_ray()
        if local and _major_minor(local) != _major_minor(ray_version):
            log.warning("this machine has Ray %s, the cluster at %s runs Ray %s", local, self.url, ray_version)
        self._version = found
        return found

    def nodes(self) -> list[Totals]:
        """Each alive node's resources (asked once per process: no probe per sweep trial)."""
        if self._nodes is not None:
            return self._nodes
        data = self.get_json("/api/v0/nodes?limit=10000&detail=true")
        result = ((data or {}).get("data") or {}).get("result") if isinstance(data, dict) else None
        rows = result.get("result", []) if isinstance(result, dict) else result
        found = []
        for node in rows if isinstance(rows, list) else []:
            if not isinstance(node, dict) or node.get("state") != "ALIVE":
                continue
            total = node.get("resources_total") or {}
            found.append(Totals(float(total.get("CPU", 0) or 0), float(total.get("GPU", 0) or 0),
                                float(total.get("memory", 0) or 0), 1))
        self._nodes = found
        return found

    def totals(self) -> Totals:
        """The cluster's resources, summed over its alive nodes."""
        nodes = self.nodes()
        return Totals(sum(n.cpus for n in nodes), sum(n.gpus for n in nodes), sum(n.memory for n in nodes), len(nodes))

    def largest_node(self) -> Totals:
        """The most of each resource one node has: what one job's entrypoint can ever be given."""
        nodes = self.nodes() or [Totals(0, 0, 0, 0)]
        return Totals(max(n.cpus for n in nodes), max(n.gpus for n in nodes), max(n.memory for n in nodes), 1)

    def has_package(self, uri: str) -> bool:
        status, _ = self.request("GET", f"/api/packages/{_package_path(uri)}", ok=(200, 404))
        return status == 200

    def put_package(self, uri: str, data: bytes) -> None:
        self.request("PUT", f"/api/packages/{_package_path(uri)}", body=data, content_type="application/octet-stream")

    def submit(self, payload: dict[str, Any]) -> str:
        _, data = self.request("POST", "/api/jobs/", json_body=payload)
        return str(json.loads(data)["submission_id"])

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job's details, or None if the cluster does not know it (a restarted head)."""
        status, data = self.request("GET", f"/api/jobs/{urllib.parse.quote(job_id)}", ok=(200, 404))
        if status == 404:
            return None
        found = json.loads(data)
        return found if isinstance(found, dict) else None

    def stop(self, job_id: str) -> None:
        self.request("POST", f"/api/jobs/{urllib.parse.quote(job_id)}/stop", ok=(200, 404))

    def logs(self, job_id: str) -> str:
        status, data = self.request("GET", f"/api/jobs/{urllib.parse.quote(job_id)}/logs", ok=(200, 404))
        if status == 404:
            return ""
        found = json.loads(data)
        return str(found.get("logs", "")) if isinstance(found, dict) else ""


def _package_path(uri: str) -> str:
    protocol, _, name = uri.partition("://")
    return f"{protocol}/{name}"


def _read(resp: Any) -> bytes:
    data: bytes = resp.read(MAX_REPLY + 1)
    return data[:MAX_REPLY]


def _first_line(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:300]


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


def _local_ray() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return None
