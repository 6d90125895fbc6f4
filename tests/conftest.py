"""Suite-wide rules: the suite runs as root on a real kernel (CI does); no silent skips."""

from __future__ import annotations

import os
import socket

import pytest

from tests.netns import host, veth

__all__ = ["host", "veth"]  # fixtures for every test: one private host namespace, one veth


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("retinad's tests load eBPF programs: run them as root (make test)")


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
