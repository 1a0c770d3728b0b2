"""The local control socket: ``ce-daemon status`` asks the running daemon through it.

A unix stream socket (mode 0600) answering one JSON document per connection. It carries
no secrets and no record contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from ce_daemon.config.model import Pipeline

log = structlog.get_logger("ce_daemon.control")

Snapshot = Callable[[], Awaitable[dict[str, Any]]]


def control_socket_path(config: Pipeline) -> Path:
    """Where the daemon listens: ``control.socket``, else ``control.sock`` beside the state database."""
    return config.control.socket or config.state.path.parent / "control.sock"


class ControlServer:
    """Answers status requests on a unix socket."""

    def __init__(self, path: Path, snapshot: Snapshot) -> None:
        self.path = path
        self.snapshot = snapshot
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen (replacing a stale socket file left by a killed daemon)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._answer, path=str(self.path))
        except OSError as exc:
            log.warning("control.unavailable", socket=str(self.path), error=str(exc))
        finally:
            os.umask(old)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await reader.readline()
            writer.write(orjson.dumps(await self.snapshot(), default=str) + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def ask_status(path: Path, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109 - one bound overall
    """Ask the daemon listening on ``path`` for its status snapshot (ValueError: the answer is not one)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(b"status\n")
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
    result = orjson.loads(data)
    if not isinstance(result, dict):
        raise ValueError(f"not a status snapshot: {type(result).__name__}")  # noqa: TRY004 - a bad answer, not a bad call
    return result
