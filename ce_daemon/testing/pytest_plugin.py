"""pytest fixtures for ce-daemon and its plugins (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ce_daemon.testing.sockets import NotifySocket, SyslogReceiver


@pytest.fixture
async def notify_socket(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    """A bound sd_notify datagram socket; pass ``notify_socket.env`` to the daemon."""
    async with NotifySocket(tmp_path) as sock:
        yield sock


@pytest.fixture
async def syslog_receiver() -> AsyncIterator[SyslogReceiver]:
    """A UDP syslog receiver on loopback; ``syslog_receiver.target`` goes into ``health.syslog.target``."""
    async with SyslogReceiver("udp") as receiver:
        yield receiver
