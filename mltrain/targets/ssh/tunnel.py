"""A local unix socket that leads to the Docker engine of an SSH host, over an existing connection.

docker-py's own ``ssh://`` transport opens its own SSH connection with its
own host-key and key rules, which would bypass ``compute.known_hosts``,
``host_key_policy``, ``fingerprint`` and ``key_file``. Instead every
connection the Docker client makes to this socket becomes one exec channel
on our connection running ``docker system dial-stdio`` (what the docker CLI
itself does for ``ssh://`` hosts), with bytes pumped both ways.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import weakref
from typing import Any

from mltrain.targets.ssh.link import Link

log = logging.getLogger(__name__)


class DockerTunnel:
    def __init__(self, link: Link, command: str = "docker system dial-stdio") -> None:
        self.link = link
        self.command = command
        self._dir = tempfile.mkdtemp(prefix="mltrain-docker-")
        # Removed with the tunnel, or at exit: a CLI process never closes the engine it attached through.
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self._dir, True)
        self.path = os.path.join(self._dir, "docker.sock")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(8)
        self._closed = False
        threading.Thread(target=self._accept, name="mltrain-docker-tunnel", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            with self.link.lock:
                self.link.hello()  # connected (or reconnected) before a channel is opened
                channel = self.link.transport.open_session(timeout=self.link.settings.connect_timeout)
            channel.exec_command(self.command)
        except Exception as exc:
            log.warning("cannot reach the Docker engine on %s: %s", self.link.where, exc)
            client.close()
            return
        threading.Thread(target=_pump, args=(channel.recv, client.sendall, client), daemon=True).start()
        _pump(client.recv, channel.sendall, channel)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.close()
        self._remove_dir()


def _pump(read: Any, write: Any, other: Any) -> None:
    try:
        while True:
            data = read(65536)
            if not data:
                break
            write(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(Exception):
            if hasattr(other, "shutdown_write"):
                other.shutdown_write()
            else:
                other.shutdown(socket.SHUT_WR)
