"""The local control socket: ``ce-daemon status`` asks the running daemon through it.

A unix stream socket (mode 0600) answering one JSON document per connection. It carries
no secrets and no record contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from ce_daemon.config.model import Pipeline, unix_socket_path_problem

log = structlog.get_logger("ce_daemon.control")

Snapshot = Callable[[], Awaitable[dict[str, Any]]]


def control_socket_path(config: Pipeline) -> Path:
    """Where the daemon listens: ``control.socket``, else ``control.sock`` beside the state database."""
    return config.control.socket or config.state.path.parent / "control.sock"


_PSEUDO_FILE_SYSTEMS = (Path("/proc"), Path("/sys"))


def socket_path_problem(path: Path) -> str | None:
    """Why no daemon could listen on a unix socket at ``path``, when that can be told without trying.

    Told: a path too long for a unix socket, a parent that is not a directory, a place in /proc or
    /sys (they hold no sockets), something other than a socket already there. Not told: whether the
    daemon's user may create files in the directory (``check`` may run as another user); a socket
    that cannot be bound is logged (``control.unavailable``) and ``status`` then exits 4.
    """
    problem = unix_socket_path_problem(str(path))
    if problem:
        return problem
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent  # the daemon creates what is missing below the first that exists
    if not directory.is_dir():
        return f"{directory} is not a directory"
    for pseudo in _PSEUDO_FILE_SYSTEMS:
        if directory.resolve().is_relative_to(pseudo):
            return f"{path} would lie in {pseudo}, which cannot hold sockets"
    with contextlib.suppress(OSError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return f"{path} exists and is not a socket"
    return None


class ControlServer:
    """Answers status requests on a unix socket."""

    def __init__(self, path: Path, snapshot: Snapshot) -> None:
        self.path = path
        self.snapshot = snapshot
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen (replacing a stale socket left by a killed daemon, never a file of another kind).

        A socket that cannot be bound is logged (``control.unavailable``), not raised: the pipeline
        runs on, and ``status`` tells such a daemon apart by the lock it holds.
        """
        old = os.umask(0o177)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(self.path.lstat().st_mode):
                    self.path.unlink()
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
        """Stop listening and remove the socket file (when this server made one)."""
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
