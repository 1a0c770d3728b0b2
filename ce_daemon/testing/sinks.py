"""Helpers for the tests of log sinks: a sink made or opened, a port nothing listens on or that never
answers, TLS verification."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from ce_daemon.errors import TransientError
from ce_daemon.plugin import Health, LogSink, OutRecord, PluginContext
from ce_daemon.testing.sockets import stop_serving

SinkT = TypeVar("SinkT", bound=LogSink)


def make_sink(
    sink_class: type[SinkT], options: Mapping[str, Any], base_dir: Path, name: str = "sink"
) -> SinkT:
    """A ``sink_class`` with ``options`` (as in a pipeline file in ``base_dir``), not opened yet."""
    return sink_class(
        sink_class.Options.model_validate(dict(options)),
        PluginContext(name=name, base_dir=base_dir, data_dir=base_dir),
    )


@contextlib.asynccontextmanager
async def open_sink(
    sink_class: type[SinkT], options: Mapping[str, Any], base_dir: Path, name: str = "sink"
) -> AsyncIterator[SinkT]:
    """A ``sink_class`` with ``options`` (from a pipeline file in ``base_dir``): opened, then closed."""
    sink = make_sink(sink_class, options, base_dir, name)
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


def closed_port() -> int:
    """A loopback TCP port nothing listens on (the OS gave it out, then it was released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass(frozen=True, slots=True)
class Attempt:
    """How a sink fared against a peer: its health, and what ``send`` raised (None: delivered)."""

    health: Health
    error: Exception | None


async def attempt(sink: LogSink, batch: Sequence[OutRecord]) -> Attempt:
    """Check the health of ``sink``, then send ``batch`` through it."""
    health = await sink.health()
    try:
        await sink.send(batch)
    except Exception as exc:  # noqa: BLE001 - the test asserts which error it expected
        return Attempt(health, exc)
    return Attempt(health, None)


async def assert_tls_verified(
    open_with: Callable[[dict[str, Any]], AbstractAsyncContextManager[LogSink]],
    batch: Sequence[OutRecord],
    ca_file: str,
) -> None:
    """Assert that a sink refuses a peer whose certificate a test CA signed, until told to trust the CA.

    ``open_with(extra_options)`` opens the sink: with ``{}`` its health is bad and ``send`` raises a
    :class:`TransientError`, both naming the certificate; with ``{"tls": {"ca_file": ca_file}}``
    it is healthy and delivers ``batch``.
    """
    async with open_with({}) as sink:
        untrusted = await attempt(sink, batch)
    assert not untrusted.health.ok, untrusted
    assert "certificate" in untrusted.health.detail.lower(), untrusted
    assert isinstance(untrusted.error, TransientError) and "certificate" in str(untrusted.error), untrusted
    async with open_with({"tls": {"ca_file": ca_file}}) as sink:
        trusted = await attempt(sink, batch)
    assert trusted.health.ok and trusted.error is None, trusted


class SilentListener:
    """A loopback TCP port that accepts connections and never answers (a peer hung mid-request).

    ``async with SilentListener() as silent:`` then point a sink at ``127.0.0.1:{silent.port}``; a
    test waits until so many connections are open at once (:meth:`wait_for_connections`). Every
    connection is dropped on exit.
    """

    def __init__(self) -> None:
        self.port = 0
        self.open = 0
        """Connections open right now."""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await stop_serving(self._server, self._connections)
            self._server = None

    async def wait_for_connections(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` connections are open at the same time (TimeoutError after ``timeout`` s)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.open >= count)

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        await self._count(+1)
        try:
            while await reader.read(65536):  # take whatever is sent, answer nothing, until the peer leaves
                pass
        except ConnectionError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            await self._count(-1)

    async def _count(self, change: int) -> None:
        async with self._changed:
            self.open += change
            self._changed.notify_all()
