"""Real OpenSSH servers for the SSH target's tests: one container per "host", with its own host key.

Every key and file is generated under the test's tmp folder; no test reads or
writes the real ``~/.ssh`` (``ssh_config``, ``known_hosts`` and ``key_file``
always point at tmp files, and the CLI runs with ``HOME`` in tmp). Each
container carries a label naming its fixture and is removed by it.

The container's sshd gives sessions ``MLTRAIN_BOOT_ID_FILE`` (a file the test
can rewrite), which the mltrain helper reads instead of the kernel's boot id:
that is how a test "reboots" the host without one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SSHD_IMAGE = os.environ.get("MLTRAIN_TEST_SSHD_IMAGE", "mltrain-test/sshd:bookworm")
LABEL = "mltrain_test_ssh"
BOOT_ID_FILE = "/etc/mltrain-boot-id"
PROVISION_HINT = "run `bash .ci/provision-docker.sh && bash .ci/provision-ssh.sh` (make provision)"

SSHD_CONFIG = """\
Port 22
HostKey /mnt/cfg/host_key
AuthorizedKeysFile /mnt/cfg/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
MaxSessions 100
MaxStartups 100
LogLevel ERROR
SetEnv MLTRAIN_BOOT_ID_FILE={boot_id_file}
"""


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mltrain-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path


def require_sshd_image() -> None:
    if shutil.which("docker") is None or shutil.which("ssh-keygen") is None:
        pytest.skip(f"docker or ssh-keygen missing; {PROVISION_HINT}")
    probe = subprocess.run(["docker", "image", "inspect", SSHD_IMAGE], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no Docker engine or no image {SSHD_IMAGE}; {PROVISION_HINT}")


class SshHost:
    """One sshd in a container, reachable on a loopback port; keys and client files in ``folder``."""

    def __init__(self, folder: Path, *, tmpfs: str | None = None, client_key: Path | None = None,
                 direct: bool = False) -> None:
        """``direct``: reach sshd at the container's own address, as a machine on the network is reached,
        instead of through the engine's loopback port forwarder (docker-proxy copies every byte in user space)."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cfg = folder / "cfg"
        self.cfg.mkdir(exist_ok=True)
        self.host_key = keygen(self.cfg / "host_key")
        self.client_key = client_key or keygen(folder / "id_ed25519")
        shutil.copy(f"{self.client_key}.pub", self.cfg / "authorized_keys")
        (self.cfg / "sshd_config").write_text(SSHD_CONFIG.format(boot_id_file=BOOT_ID_FILE))
        self.known_hosts = folder / "known_hosts"
        self.ssh_config = folder / "ssh_config"
        self.ssh_config.write_text("")
        self.label = uuid.uuid4().hex[:12]
        command = (f"cat /proc/sys/kernel/random/boot_id > {BOOT_ID_FILE} && mkdir -p /run/sshd && "
                   "exec /usr/sbin/sshd -D -e -f /mnt/cfg/sshd_config")
        args = ["docker", "run", "-d", "--label", f"{LABEL}={self.label}", "-p", "127.0.0.1::22",
                "-v", f"{self.cfg}:/mnt/cfg:ro"]
        if tmpfs:
            args += ["--tmpfs", tmpfs]
        self.container = subprocess.run([*args, SSHD_IMAGE, "sh", "-c", command], check=True, capture_output=True,
                                         text=True).stdout.strip()
        mapping = subprocess.run(["docker", "port", self.container, "22/tcp"], check=True, capture_output=True,
                                 text=True).stdout.split()[0]
        self.host, _, port = mapping.rpartition(":")
        self.port = int(port)
        if direct:
            self.host = subprocess.run(
                ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", self.container],
                check=True, capture_output=True, text=True).stdout.strip()
            self.port = 22
        self._wait_ready()
        self.trust()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    sock.settimeout(1)
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        logs = subprocess.run(["docker", "logs", self.container], capture_output=True, text=True)
        raise RuntimeError(f"sshd did not start: {logs.stdout}{logs.stderr}")

    @property
    def known_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"  # OpenSSH's known_hosts form

    def public_host_key(self) -> str:
        kind, blob = (self.cfg / "host_key.pub").read_text().split()[:2]
        return f"{kind} {blob}"

    def trust(self) -> None:
        self.known_hosts.write_text(f"{self.known_name} {self.public_host_key()}\n")

    def fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", str(self.cfg / "host_key.pub")], check=True, capture_output=True,
                             text=True).stdout
        return out.split()[1]

    def compute(self, **extra: Any) -> dict[str, Any]:
        """``compute=ssh`` fields for this host (short deadlines: tests provoke dead links)."""
        values: dict[str, Any] = {
            "host": self.host, "port": self.port, "user": "root", "key_file": str(self.client_key),
            "known_hosts": str(self.known_hosts), "ssh_config": str(self.ssh_config), "connect_timeout": 3.0,
            "keepalive": 1.0, "remote_dir": "/root/.mltrain", "cancel_grace": 2.0,
        }
        values.update(extra)
        return values

    def overrides(self, **extra: Any) -> list[str]:
        out = ["compute=ssh"]
        for key, value in self.compute(**extra).items():
            out.append(f"compute.{key}={'null' if value is None else value}")
        return out

    def settings(self, **extra: Any) -> Any:
        from mltrain.targets.ssh.conn import SshSettings

        return SshSettings.from_dict(self.compute(**extra))

    def sh(self, script: str, *, check: bool = True) -> str:
        result = subprocess.run(["docker", "exec", self.container, "sh", "-c", script], capture_output=True,
                                text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{script!r} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def pause(self) -> None:
        subprocess.run(["docker", "pause", self.container], check=True, capture_output=True)

    def unpause(self) -> None:
        subprocess.run(["docker", "unpause", self.container], check=True, capture_output=True)

    def reboot_id(self) -> None:
        """What a reboot changes for the helper: the boot id it reads."""
        self.sh(f"cat /proc/sys/kernel/random/uuid > {BOOT_ID_FILE}")

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.container], capture_output=True)


def remove_labelled(label: str) -> None:
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL}={label}"], capture_output=True,
                         text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    """An sshd container for one test module (a module imports it as its ``host`` fixture)."""
    require_sshd_image()
    server = SshHost(tmp_path_factory.mktemp("sshhost"))
    try:
        yield server
    finally:
        server.remove()
