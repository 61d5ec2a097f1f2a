"""The sshd container every SSH test module starts once (its own: a module's tests may leave state on it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sshtest import SshHost, require_sshd_image


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    require_sshd_image()
    server = SshHost(tmp_path_factory.mktemp("sshhost"))
    try:
        yield server
    finally:
        server.remove()
