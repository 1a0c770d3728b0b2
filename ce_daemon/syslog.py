"""The syslog health channel: one logfmt line per health event, separate from the application logs.

The default target is ``/dev/log`` in the local BSD form ``<PRI>ce-daemon[PID]: body``, which
journald and rsyslog parse into identifier, pid, facility and priority. RFC 5424 is for remote
collectors (``udp://`` or ``tcp://`` with octet-counting framing); journald would not parse it on
``/dev/log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal, Protocol

import structlog
from structlog.processors import LogfmtRenderer

from ce_daemon import redact
from ce_daemon.config.model import parse_syslog_target

log = structlog.get_logger(__name__)

Format = Literal["local", "rfc5424"]
Severity = Literal["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]
FieldValue = str | int | float | bool | None

_SEVERITIES: dict[str, int] = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
_FACILITIES: dict[str, int] = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
# A network collector that is down keeps at most this many messages for when it is back; older ones go.
_NETWORK_BACKLOG = 100
_CONNECT_TIMEOUT = 5.0
_WRITE_TIMEOUT = 5.0
_FLUSH_ON_CLOSE = 2.0

_render_logfmt = LogfmtRenderer(key_order=["event"], bool_as_flag=False)


class HealthChannel:
    """Sends health events to syslog: state changes as they happen, heartbeats on a schedule.

    *target* is a unix datagram socket (``/dev/log``, ``/run/x.sock`` or ``unix:/path``),
    ``udp://host:port`` or ``tcp://host:port``, as :func:`~ce_daemon.config.model.parse_syslog_target`
    reads it (a ValueError names what is wrong with any other). Network targets are written by a
    small background task on the running event loop (name resolution and connecting never block it);
    a message that cannot be delivered waits, with at most 100 others, for the next message to try
    again.

    A message identical to the previous one of the same event (same severity and fields) is dropped
    unless *repeat_after* seconds have passed since that one was sent; pass the heartbeat interval.

    An unreachable target is warned about once (``syslog.unavailable``), never raised, and
    ``syslog.available`` is logged when it works again.

    Health lines are counts, states and names: callers must never pass record contents. Text fields
    are scrubbed of the configured secrets and cut to 300 characters (a reason quoting a remote
    answer may carry anything).

    *pid*, *now* (an aware datetime) and *monotonic* exist so tests can fix the header and the clock.
    """

    def __init__(
        self,
        target: str = "/dev/log",
        fmt: Format = "local",
        facility: str = "daemon",
        app_name: str = "ce-daemon",
        hostname: str | None = None,
        *,
        repeat_after: float = 300.0,
        pid: int | None = None,
        now: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if fmt not in ("local", "rfc5424"):
            raise ValueError(f"syslog format must be 'local' or 'rfc5424', not {fmt!r}")
        if facility not in _FACILITIES:
            raise ValueError(f"unknown syslog facility {facility!r}; use one of {', '.join(_FACILITIES)}")
        self.target = target
        self._fmt = fmt
        self._facility = _FACILITIES[facility]
        self._app_name = _header_token(app_name, 48)
        self._hostname = _header_token(hostname if hostname is not None else socket.gethostname(), 255)
        self._repeat_after = repeat_after
        self._pid = pid
        self._now = now or (lambda: datetime.now(UTC))
        self._monotonic = monotonic
        self._last_sent: dict[str, tuple[str, float]] = {}
        self._link = _open_link(target, _Availability(target), octet_counting=fmt == "rfc5424")

    def emit(self, event: str, severity: Severity = "info", **fields: FieldValue) -> None:
        """Send one health line ``event=<event> key=value ...`` now, without blocking or raising.

        Raises ValueError only for an unknown *severity* (a programming error mypy also catches).
        """
        if severity not in _SEVERITIES:
            raise ValueError(f"unknown syslog severity {severity!r}")
        cleaned = {
            key: redact.scrub(value, redact.SYSLOG_LIMIT) if isinstance(value, str) else value
            for key, value in fields.items()
        }
        body = _render_logfmt(None, "", {"event": event, **cleaned})
        if self._is_repeat(event, f"{severity} {body}"):
            return
        self._link.submit(self._format(event, _SEVERITIES[severity], body).encode("utf-8"))

    async def flush(self) -> None:
        """Wait until what was emitted so far was sent or failed (bound it with ``asyncio.timeout``)."""
        await self._link.flush()

    def close(self) -> None:
        """Drop anything still queued and close the connection."""
        self._link.close()

    async def aclose(self) -> None:
        """Deliver what is queued (for at most 2 s), then close: the last words of a shutdown."""
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_FLUSH_ON_CLOSE):
                    await self.flush()
        finally:
            self.close()

    def _is_repeat(self, event: str, message_key: str) -> bool:
        now = self._monotonic()
        previous = self._last_sent.get(event)
        if previous is not None and previous[0] == message_key and now - previous[1] < self._repeat_after:
            return True
        self._last_sent[event] = (message_key, now)
        return False

    def _format(self, event: str, severity: int, body: str) -> str:
        pri = self._facility * 8 + severity
        pid = self._pid if self._pid is not None else os.getpid()
        if self._fmt == "local":
            return f"<{pri}>{self._app_name}[{pid}]: {body}"
        timestamp = self._now().astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        msgid = _header_token(event, 32)
        return f"<{pri}>1 {timestamp} {self._hostname} {self._app_name} {pid} {msgid} - {body}"


def _header_token(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, bounded, ``-`` when empty."""
    token = "".join(c if "!" <= c <= "~" else "_" for c in value)[:limit]
    return token or "-"


class _Availability:
    """Warns once when the target stops working and once when it works again."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._down = False

    def failed(self, error: Exception) -> None:
        if not self._down:
            log.warning("syslog.unavailable", target=self._target, error=str(error) or type(error).__name__)
        self._down = True

    def ok(self) -> None:
        if self._down:
            log.info("syslog.available", target=self._target)
        self._down = False


class _Link(Protocol):
    def submit(self, data: bytes) -> None: ...
    async def flush(self) -> None: ...
    def close(self) -> None: ...


def _open_link(target: str, availability: _Availability, *, octet_counting: bool) -> _Link:
    where = parse_syslog_target(target)  # the reading `check` validated the target with
    if where.transport == "unix":
        return _UnixDatagramLink(where.address, availability)
    if where.transport == "udp":
        return _NetworkLink(_UdpSender(where.address, where.port), availability)
    return _NetworkLink(_TcpSender(where.address, where.port, octet_counting=octet_counting), availability)


class _UnixDatagramLink:
    """A local datagram socket: sent at once, addressed on every send so a restarted journald is found."""

    def __init__(self, path: str, availability: _Availability) -> None:
        self._path = path
        self._availability = availability
        self._socket: socket.socket | None = None

    def submit(self, data: bytes) -> None:
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(data, self._path)
        except OSError as exc:
            self._availability.failed(exc)
        else:
            self._availability.ok()

    async def flush(self) -> None:
        return

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class _Sender(Protocol):
    async def send(self, data: bytes) -> None: ...
    def disconnect(self) -> None: ...


class _NetworkLink:
    """Queues messages for a collector and writes them from a task that runs only while there is work."""

    def __init__(self, sender: _Sender, availability: _Availability) -> None:
        self._sender = sender
        self._availability = availability
        self._pending: deque[bytes] = deque(maxlen=_NETWORK_BACKLOG)
        self._task: asyncio.Task[None] | None = None

    def submit(self, data: bytes) -> None:
        self._pending.append(data)
        if self._task is not None and not self._task.done():
            return  # the running task picks it up before it finishes
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError as exc:
            self._availability.failed(exc)  # kept queued for the next message sent from the loop
            return
        self._task = loop.create_task(self._deliver(), name="syslog.deliver")

    async def _deliver(self) -> None:
        while self._pending:
            try:
                await self._sender.send(self._pending[0])
            except OSError as exc:  # includes refused connections, resolution failures and timeouts
                self._sender.disconnect()
                self._availability.failed(exc)
                return  # retried when the next message arrives, not in a loop against a dead collector
            self._pending.popleft()
            self._availability.ok()

    async def flush(self) -> None:
        if self._task is not None:
            # wait() rather than await: a caller's timeout must not cancel the delivery itself.
            await asyncio.wait({self._task})

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._sender.disconnect()
        self._pending.clear()


class _UdpSender:
    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None

    async def send(self, data: bytes) -> None:
        if self._socket is None:
            loop = asyncio.get_running_loop()
            family, kind, proto, _, address = (
                await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
            )[0]
            sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
            sock.setblocking(False)
            try:
                # Connected, so an ICMP "port unreachable" surfaces as an error on a later send.
                sock.connect(address)
            except OSError:
                sock.close()
                raise
            self._socket = sock
        self._socket.send(data)

    def disconnect(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class _TcpSender:
    def __init__(self, host: str, port: int, *, octet_counting: bool) -> None:
        self._host = host
        self._port = port
        self._octet_counting = octet_counting
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, data: bytes) -> None:
        # A collector that closed its end shows as EOF: reconnect rather than lose a line into a dead socket.
        if self._reader is None or self._writer is None or self._reader.at_eof() or self._writer.is_closing():
            self.disconnect()
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        # RFC 6587: octet counting for RFC 5424 collectors, LF-terminated lines for the local form.
        frame = b"%d %b" % (len(data), data) if self._octet_counting else data + b"\n"
        self._writer.write(frame)
        async with asyncio.timeout(_WRITE_TIMEOUT):
            await self._writer.drain()

    def disconnect(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
