"""``compute=docker``'s settings (``conf/compute/docker.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mltrain.config.groups import ComputeConfig


@dataclass
class DockerCompute(ComputeConfig):
    """A Docker engine: the local one by default, or any engine at ``base_url``."""

    type: str = "docker"
    base_url: str | None = None  # unix://, tcp://host:2376, ssh://user@host; default: $DOCKER_HOST or local socket
    tls_verify: bool = False
    tls_ca_cert: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    user: str | None = None  # default: the caller's uid:gid
    mem_limit: str | None = None  # e.g. 4g
    cpus: float | None = None
    shm_size: str | None = None  # e.g. 1g
    gpus: str | None = None  # "all", a count ("2") or device ids ("0,1")
    volumes: list[str] = field(default_factory=list)  # host:container[:ro|rw]
    allow_engine_socket: bool = False  # let compute.volumes hand the job the engine's socket (root on its host)
    network: str | None = None  # default: the engine's default bridge
    keep_container: bool = False  # keep a failed run's container for inspection
    timeout: float = 60.0  # seconds for one engine API call
    code_transfer: str = "auto"  # auto: bind mount on a local (unix://) engine, copy on a remote one | mount | copy
    labels: dict[str, str] = field(default_factory=dict)  # extra container labels
