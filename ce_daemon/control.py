"""The local control socket: ``ce-daemon status``, ``top`` and ``tap`` ask the running daemon through it.

A unix stream socket (mode 0600). A connection sends one request line:

- anything but a JSON object (``status``, as ``ce-daemon status`` sends, or nothing within 2 s): the
  answer is one JSON status snapshot, then the connection closes;
- ``{"tap": "route:NAME", "limit": N}``: the answer is a stream of JSON lines: first
  ``{"tap": NAME, "buffer": B}`` (or ``{"error": ..., "sources": [...]}``), then one
  ``{"stream": ..., "id": ..., "data": ...}`` per sample (see :mod:`ce_daemon.taps`), with
  ``{"dropped": n}`` before a sample when ``n`` were dropped since the last. It ends after ``limit``
  samples, when the client closes its side, or when the daemon stops.

A status carries no secrets and no record contents; a tap carries formatted records, which is why
the socket is only the daemon's user's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from ce_daemon.config.model import Pipeline, unix_socket_path_problem
from ce_daemon.taps import TAP_BUFFER, Tap, TapHub, TapRefusedError

log = structlog.get_logger("ce_daemon.control")

Snapshot = Callable[[], Awaitable[dict[str, Any]]]

REQUEST_LIMIT = 4096
"""Bytes of a request line: a longer one is answered as a plain status request."""
TAP_LINE_LIMIT = 64 * 1024 * 1024
"""Bytes of one line a tap client accepts (a formatted record is far smaller)."""


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
    """Answers status requests, and tap requests when given the runtime's :class:`TapHub`."""

    def __init__(self, path: Path, snapshot: Snapshot, taps: TapHub | None = None) -> None:
        self.path = path
        self.snapshot = snapshot
        self.taps = taps
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
            self._server = await asyncio.start_unix_server(
                self._answer, path=str(self.path), limit=REQUEST_LIMIT
            )
        except OSError as exc:
            log.warning("control.unavailable", socket=str(self.path), error=str(exc))
        finally:
            os.umask(old)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = b""
            with contextlib.suppress(TimeoutError, ValueError):  # ValueError: a line past the limit
                async with asyncio.timeout(2):
                    line = await reader.readline()
            request = _tap_request(line)
            if request is None:
                writer.write(orjson.dumps(await self.snapshot(), default=str) + b"\n")
                await writer.drain()
            else:
                await self._tap(request, reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _tap(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Stream the samples of the component ``request`` names until its limit, the client or a stop."""
        component, limit = request.get("tap"), request.get("limit")
        problem = _tap_problem(component, limit)
        if problem is None and self.taps is None:
            problem = "this daemon has nothing to tap"
        if problem is not None or self.taps is None:
            writer.write(orjson.dumps({"error": problem, "sources": []}) + b"\n")
            await writer.drain()
            return
        try:
            tap = self.taps.open(str(component))
        except TapRefusedError as exc:
            writer.write(orjson.dumps({"error": str(exc), "sources": self.taps.sources()}) + b"\n")
            await writer.drain()
            return
        log.info("control.tap_opened", component=component)
        hangup = asyncio.create_task(_close_at_eof(reader, tap))
        sent = 0
        try:
            writer.write(orjson.dumps({"tap": component, "buffer": TAP_BUFFER}) + b"\n")
            await writer.drain()
            while limit is None or sent < limit:
                sample = await tap.next()
                if sample is None:
                    break
                dropped = tap.take_dropped()
                if dropped:
                    writer.write(orjson.dumps({"dropped": dropped}) + b"\n")
                text = sample.data.decode("utf-8", "backslashreplace")
                writer.write(orjson.dumps({"stream": sample.stream, "id": sample.id, "data": text}) + b"\n")
                await writer.drain()  # a slow reader waits here; the component never does
                sent += 1
        finally:
            self.taps.close(tap)
            hangup.cancel()
            log.info("control.tap_closed", component=component, samples=sent)

    async def close(self) -> None:
        """End every tap, stop listening and remove the socket file (when this server made one)."""
        if self.taps is not None:
            self.taps.close_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _tap_request(line: bytes) -> dict[str, Any] | None:
    """The tap request ``line`` holds (a JSON object), or None: a status request."""
    if not line.lstrip().startswith(b"{"):
        return None
    try:
        request = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {"tap": None}  # refused with a reason, not answered as a status
    return request if isinstance(request, dict) else None


def _tap_problem(component: object, limit: object) -> str | None:
    """What is wrong with a tap request's ``tap`` and ``limit``, or None."""
    if not isinstance(component, str) or not component:
        return 'a tap request is {"tap": "role:name", "limit": N}'
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        return f"a tap's limit is a positive whole number, not {limit!r}"
    return None


async def _close_at_eof(reader: asyncio.StreamReader, tap: Tap) -> None:
    """Close ``tap`` when its client closes its side (whatever it sends meanwhile is read and ignored)."""
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(REQUEST_LIMIT):
            pass
    tap.close()


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


async def tap_samples(
    path: Path,
    component: str,
    limit: int | None = None,
    connect_timeout: float = 5.0,
) -> AsyncIterator[dict[str, Any]]:
    """The JSON lines a tap on ``component`` answers (the first says ``tap`` or ``error``), until it ends.

    ValueError when an answer is not a JSON object (not a daemon's control socket).
    """
    async with asyncio.timeout(connect_timeout):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=TAP_LINE_LIMIT)
    try:
        writer.write(orjson.dumps({"tap": component, "limit": limit}) + b"\n")
        await writer.drain()
        async for line in reader:
            message = orjson.loads(line)
            if not isinstance(message, dict):
                raise ValueError(f"not a tap message: {type(message).__name__}")  # noqa: TRY004 - a bad answer
            yield message
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
