"""Sockets that stand in for systemd and for syslog collectors in tests.

``NotifySocket`` plays the service manager's ``NOTIFY_SOCKET``; ``SyslogReceiver`` plays journald
(unix datagrams) or a remote collector (UDP, TCP). Both collect every message and let a test wait for
the next one that matches, on the event loop, with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

Match = str | Callable[[str], bool]
Framing = Literal["auto", "octet-counting", "lf"]


class _Collector:
    """Messages in arrival order, and a read position so that each wait sees only newer ones."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._position = 0
        self._arrived = asyncio.Event()

    def _add(self, message: str) -> None:
        self.messages.append(message)
        self._arrived.set()

    async def receive(self, timeout: float = 10) -> str:
        """The next message not yet returned by ``receive`` or ``wait_for``."""
        return await self.wait_for(lambda _: True, timeout)

    async def wait_for(self, match: Match, timeout: float = 10) -> str:
        """The first newer message containing *match* (or satisfying it, if callable).

        Messages skipped on the way stay in ``messages`` but are not looked at again.
        Raises ``TimeoutError`` listing what did arrive.
        """
        matches = match if callable(match) else lambda message: match in message
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._arrived.clear()
                    while self._position < len(self.messages):
                        message = self.messages[self._position]
                        self._position += 1
                        if matches(message):
                            return message
                    await self._arrived.wait()
        except TimeoutError:
            raise TimeoutError(
                f"no message matching {match!r} within {timeout} s; received {self.messages!r}"
            ) from None


class NotifySocket(_Collector):
    """A datagram socket standing in for systemd's ``NOTIFY_SOCKET``.

    Bound at ``<directory>/<name>``, or in the abstract namespace (``@ce-daemon-test-<random>``)
    when *abstract* is true. Use as ``async with NotifySocket(tmp_path) as notify:`` and pass
    ``notify.env`` into the daemon's environment.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        name: str = "notify.sock",
        abstract: bool = False,
    ) -> None:
        super().__init__()
        if abstract:
            self.path = f"@ce-daemon-test-{secrets.token_hex(8)}"
        elif directory is None:
            raise ValueError("NotifySocket needs a directory unless abstract=True")
        else:
            self.path = str(Path(directory) / name)
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment a notifying process needs."""
        return {"NOTIFY_SOCKET": self.path}

    async def __aenter__(self) -> Self:
        address = "\0" + self.path[1:] if self.path.startswith("@") else self.path
        self._transport = await _bind_unix_datagram(address, self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket and remove its file."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            if not self.path.startswith("@"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)


class SyslogReceiver(_Collector):
    """A syslog collector on loopback: ``udp``, ``unix`` (datagram) or ``tcp``.

    ``target`` is the string to put in the pipeline's syslog settings. TCP frames are read as
    octet-counted (``"<len> <msg>"``), LF-terminated, or either (``auto``, told apart by the first byte
    as RFC 6587 allows); a stream that breaks the framing asked for is recorded in ``framing_errors``
    and its connection dropped. Messages are kept without framing or trailing newline.
    """

    def __init__(
        self,
        transport: Literal["udp", "unix", "tcp"] = "udp",
        *,
        directory: str | os.PathLike[str] | None = None,
        name: str = "syslog.sock",
        port: int = 0,
        framing: Framing = "auto",
    ) -> None:
        super().__init__()
        if transport == "unix" and directory is None:
            raise ValueError("a unix SyslogReceiver needs a directory")
        self.transport = transport
        self.framing_errors: list[str] = []
        self._path = str(Path(directory) / name) if directory is not None else ""
        self._port = port
        self._framing = framing
        self._datagrams: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The UDP or TCP port it listens on (once entered)."""
        return self._port

    @property
    def target(self) -> str:
        """``udp://127.0.0.1:PORT``, ``tcp://127.0.0.1:PORT`` or ``unix:/path``."""
        if self.transport == "unix":
            return f"unix:{self._path}"
        return f"{self.transport}://127.0.0.1:{self._port}"

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        if self.transport == "unix":
            self._datagrams = await _bind_unix_datagram(self._path, self)
        elif self.transport == "udp":
            self._datagrams, _ = await loop.create_datagram_endpoint(
                lambda: _DatagramProtocol(self), local_addr=("127.0.0.1", self._port)
            )
            self._port = self._datagrams.get_extra_info("sockname")[1]
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._port)
            self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, drop open connections and remove the socket file."""
        if self._datagrams is not None:
            self._datagrams.close()
            self._datagrams = None
            if self._path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path)
        if self._server is not None:
            await stop_serving(self._server, self._connections)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while frame := await self._read_frame(reader):
                self._add(frame.decode("utf-8", errors="replace"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the sender went away mid-frame: what arrived whole is kept
        except (ValueError, asyncio.LimitOverrunError) as exc:
            self.framing_errors.append(str(exc))
        finally:
            self._connections.discard(task)
            writer.close()

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes | None:
        first = await reader.read(1)
        if not first:
            return None
        octet_counted = first.isdigit()
        if self._framing == "octet-counting" and not octet_counted:
            raise ValueError(f"expected an octet count, got {first!r}")
        if self._framing == "lf" and octet_counted:
            raise ValueError(f"expected an LF-terminated message starting with '<', got {first!r}")
        if octet_counted:
            count = first + await reader.readuntil(b" ")
            return await reader.readexactly(int(count[:-1]))
        return (first + await reader.readuntil(b"\n"))[:-1]


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, collector: _Collector) -> None:
        self._collector = collector

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._collector._add(data.decode("utf-8", errors="replace"))


async def _bind_unix_datagram(address: str, collector: _Collector) -> asyncio.DatagramTransport:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(address)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _DatagramProtocol(collector), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    return transport


async def stop_serving(server: asyncio.Server, connections: set[asyncio.Task[None]]) -> None:
    """Stop ``server`` and end ``connections``, the tasks handling its clients (before Python 3.12,
    ``wait_closed`` waits for none of them)."""
    server.close()
    for connection in connections:
        connection.cancel()
    await asyncio.gather(*connections, return_exceptions=True)
    await server.wait_closed()


def loopback_ports(pid: int, protocol: Literal["tcp", "udp"]) -> list[int]:
    """The ports of process ``pid``'s sockets bound to 127.0.0.1 (for TCP, the listening ones).

    Read from /proc (the socket inodes among the process's file descriptors, matched in
    /proc/net/tcp or udp): how a test learns the port a server it told to bind port 0 was given,
    when the server does not say.
    """
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/net/{protocol}").read_text().splitlines()[1:]:
            fields = line.split()
            address, _, port = fields[1].partition(":")
            listening = protocol == "udp" or fields[3] == "0A"  # 0A: TCP_LISTEN
            if fields[9] in inodes and address == "0100007F" and listening:
                ports.add(int(port, 16))
    return sorted(ports)
