"""The start checks of a generation's new components: all at once, within one bound, cancelled by a stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ce_daemon.daemon import start_checks
from ce_daemon.health import State
from ce_daemon.supervisor import Component
from ce_daemon.testing.sinks import SilentListener


class Asking(Component):
    """Its start connects to a peer on loopback and waits for the peer's first byte."""

    def __init__(self, name: str, port: int) -> None:
        super().__init__(name, "fp")
        self.port = port
        self.disconnected = False

    async def start(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            await reader.read(1)
            self.status.ok("answered")
        finally:
            writer.close()
            self.disconnected = True

    async def run(self, stopping: asyncio.Event) -> None:
        await stopping.wait()


class Ready(Component):
    """Starts at once."""

    async def start(self) -> None:
        self.status.ok("ready")

    async def run(self, stopping: asyncio.Event) -> None:
        await stopping.wait()


@pytest.fixture
async def silent() -> AsyncIterator[SilentListener]:
    async with SilentListener() as listener:
        yield listener


async def test_a_check_not_done_within_the_bound_is_cut_and_degraded(silent: SilentListener) -> None:
    """A start still waiting when the bound passes is cancelled (it cleans up) and its component degraded."""
    hung, ready = Asking("hung", silent.port), Ready("ready", "fp")
    failures = await start_checks([hung, ready], 0.2, asyncio.Event())
    assert failures is not None and list(failures) == ["hung"]
    assert isinstance(failures["hung"], TimeoutError)
    assert hung.status.state is State.DEGRADED
    assert hung.status.detail == "start failed: start check not done within 0.2s"
    assert hung.disconnected
    assert ready.status.state is State.OK


async def test_a_stop_request_cancels_the_checks_under_way(silent: SilentListener) -> None:
    """Three checks waiting together; a stop request: no result (None), and every start cleaned up."""
    components = [Asking(name, silent.port) for name in ("a", "b", "c")]
    stop = asyncio.Event()
    checks = asyncio.create_task(start_checks(components, 60, stop))
    await silent.wait_for_connections(3, timeout=20)
    stop.set()
    assert await checks is None
    assert all(component.disconnected for component in components)
