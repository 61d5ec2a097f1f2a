"""``compute=ssh``'s settings (``conf/compute/ssh.yaml``); ``compute=spark``'s ``compute.ssh`` takes the same keys."""

from __future__ import annotations

from dataclasses import dataclass

from mltrain.config.groups import MISSING, ComputeConfig


@dataclass
class SshCompute(ComputeConfig):
    """A remote machine reached over SSH; nothing to install there but Python (or Docker)."""

    type: str = "ssh"
    host: str = MISSING  # a hostname, an address, or a Host alias from ~/.ssh/config
    port: int | None = None  # default: ~/.ssh/config, else 22
    user: str | None = None  # default: ~/.ssh/config, else the local user
    key_file: str | None = None  # default: ~/.ssh/config IdentityFile, else the SSH agent and default keys
    known_hosts: str | None = None  # default: ~/.ssh/known_hosts
    host_key_policy: str = "strict"  # strict: unknown or changed keys refused | accept_new
    fingerprint: str | None = None  # pin the host key: SHA256:... (as `ssh-keygen -lf` prints it)
    ssh_config: str | None = None  # default: ~/.ssh/config
    connect_timeout: float = 10.0
    keepalive: float = 10.0  # seconds between keepalives; a dead link is noticed within a few of these
    remote_dir: str = "~/.mltrain"  # blob cache, environments and run folders on the remote
    python: str = "python3"  # the host's Python 3 that runs mltrain's helper there (stdlib only, >= 3.8)
