"""sd_notify(3) without a dependency: readiness, reload, stop, status and watchdog messages.

The protocol is one AF_UNIX datagram per notification, fields separated by newlines, sent to the
socket named by ``$NOTIFY_SOCKET``. Outside systemd (started by hand, in tests) that variable is
unset and every method quietly does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import structlog

from ce_daemon import redact
from ce_daemon.health import HealthRegistry

log = structlog.get_logger(__name__)


class Notifier:
    """Sends sd_notify messages to the service manager; never raises into the caller.

    Build it with :meth:`from_env`. One non-blocking datagram socket is opened on first use and
    kept until :meth:`close`. A failed send is logged once at debug (``systemd.notify_failed``)
    until a later send succeeds again: the daemon must keep running whatever the manager does.
    """

    def __init__(self, notify_socket: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(notify_socket)
        self._notify_socket = notify_socket
        self._watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self._failing = False
        if notify_socket and self._address is None:
            log.debug(
                "systemd.notify_failed", socket=notify_socket, error="not an absolute or @abstract path"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from *environ*."""
        return cls(environ.get("NOTIFY_SOCKET"), watchdog_usec=_watchdog_usec(environ))

    @property
    def enabled(self) -> bool:
        """True when a usable ``NOTIFY_SOCKET`` was given."""
        return self._address is not None

    def send(self, *fields: str) -> None:
        """Send raw ``KEY=value`` fields in one datagram (the caller keeps each field to one line)."""
        if self._address is None or not fields:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            # Non-blocking: a manager too busy to drain its queue loses a status line, never our loop.
            self._socket.sendto("\n".join(fields).encode("utf-8"), self._address)
        except OSError as exc:
            if not self._failing:
                log.debug("systemd.notify_failed", socket=self._notify_socket, error=repr(exc))
            self._failing = True
        else:
            self._failing = False

    def ready(self, status: str | None = None) -> None:
        """Startup or reload finished: ``READY=1`` (and ``STATUS=``)."""
        self.send("READY=1", *_status_field(status))

    def reloading(self, status: str | None = None) -> None:
        """A reload starts: ``RELOADING=1`` with ``MONOTONIC_USEC`` in the same datagram.

        ``Type=notify-reload`` requires the timestamp, older managers ignore it, so it is always sent.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status_field(status))

    def stopping(self, status: str | None = None) -> None:
        """Shutdown starts: ``STOPPING=1`` (and ``STATUS=``)."""
        self.send("STOPPING=1", *_status_field(status))

    def status(self, text: str) -> None:
        """The one-line status that ``systemctl status`` shows."""
        self.send(*_status_field(text))

    def watchdog(self) -> None:
        """Keep-alive ping: ``WATCHDOG=1``."""
        self.send("WATCHDOG=1")

    def watchdog_trigger(self) -> None:
        """Ask the manager to act as if the watchdog expired (we detected a wedge ourselves)."""
        self.send("WATCHDOG=trigger")

    def extend_timeout(self, seconds: float) -> None:
        """Extend a slow start or stop by *seconds* from now: ``EXTEND_TIMEOUT_USEC=``."""
        self.send(f"EXTEND_TIMEOUT_USEC={round(seconds * 1_000_000)}")

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None when it is off."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket; later sends open a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


async def keep_watchdog_fed(notifier: Notifier, health: HealthRegistry, stall_limit: float) -> None:
    """Pet the systemd watchdog every half period while the event loop keeps time and no component stalls.

    Returns at once when systemd asked for no watchdog. A loop late by a whole period, or a component
    that made no progress for ``stall_limit`` seconds, withholds the ping (``daemon.watchdog_withheld``):
    systemd then restarts the daemon, as it should for a hung process.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        lag = loop.time() - before - interval
        stalled = health.stalled(stall_limit)
        if lag < interval and not stalled:
            notifier.watchdog()
        else:
            log.error("daemon.watchdog_withheld", loop_lag_s=round(lag, 3), stalled=stalled)


def _socket_address(notify_socket: str | None) -> str | None:
    if not notify_socket:
        return None
    if notify_socket.startswith("@"):
        # Abstract namespace: the kernel name starts with a NUL byte in place of the "@".
        return "\0" + notify_socket[1:]
    if notify_socket.startswith("/"):
        return notify_socket
    return None


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        # The variables are inherited by children; a WATCHDOG_PID naming another process means
        # the watchdog belongs to someone else (sd_watchdog_enabled(3)).
        if "WATCHDOG_PID" in environ and int(environ["WATCHDOG_PID"]) != os.getpid():
            return None
    except ValueError:
        return None
    return usec if usec > 0 else None


def _status_field(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # A newline would start a new field in the datagram; systemctl shows one line anyway.
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return ("STATUS=" + redact.scrub(line, redact.NOTIFY_LIMIT),)
