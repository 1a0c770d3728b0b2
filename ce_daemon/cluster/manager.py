"""The lease manager: one per node, it keeps this node's share of the units and nothing more.

Two tasks, each on its own connection, so a heartbeat never queues behind anything:

- the *renewer* heartbeats and renews every lease held, each ``renew_interval``. A lease missing from
  the answer was taken over (this node was paused past its expiry): its handle is lost at once. When
  renewals fail for longer than a handle's window, every handle has stopped being held by then;
  the node reports ``cannot reach the database since …`` and stops its units.
- the *balancer* runs a round (`ce_daemon.cluster.balance.plan`) every ``renew_interval``, sooner when
  another node's lease is due to expire (so a dead node's units move ``lease_ttl`` after its last
  renewal), and at once when a node joins, acquires, releases or leaves (``LISTEN``/``NOTIFY``) or
  `LeaseManager.set_units` changes the wanted set. It alone calls ``on_acquired`` and ``on_released``,
  and releases a lease only after ``on_released`` returned: a graceful handover never has two drivers.

The state store's connections are not used: a spool transaction must never delay a renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime

import asyncpg
import structlog

from ce_daemon import __version__
from ce_daemon.cluster import leases
from ce_daemon.cluster.balance import plan
from ce_daemon.cluster.handle import LeaseHandle
from ce_daemon.cluster.leases import DB_ERRORS, Connection, NodeIdentity
from ce_daemon.cluster.settings import ClusterSettings
from ce_daemon.cluster.status import ClusterStatus, cluster_status
from ce_daemon.errors import CeDaemonError, describe
from ce_daemon.store.base import Fence
from ce_daemon.store.postgres import session_settings

log = structlog.get_logger("ce_daemon.cluster")

OnAcquired = Callable[[LeaseHandle], Awaitable[None]]
OnReleased = Callable[[str], Awaitable[None]]

EXPIRY_SLACK = 0.05
"""Seconds the balancer waits past a foreign lease's expiry, so the database sees it expired."""


class ClusterError(CeDaemonError):
    """This node cannot take part in the cluster (its name is in use, the database is unusable)."""


class _Link:
    """One connection of the manager, opened on first use and again after it broke."""

    def __init__(self, dsn: str, purpose: str, timeout: float) -> None:
        self._dsn = dsn
        self._purpose = purpose
        self._timeout = timeout
        self._conn: Connection | None = None
        self.on_connect: Callable[[Connection], Awaitable[None]] | None = None

    async def get(self) -> Connection:
        if self._conn is None or self._conn.is_closed():
            conn: Connection = await asyncpg.connect(
                self._dsn,
                timeout=self._timeout,
                # A node paused inside an acquire (FOR UPDATE) must not keep those rows from the others.
                server_settings={**session_settings(), "application_name": f"ce-daemon {self._purpose}"},
            )
            try:
                if self.on_connect is not None:
                    await self.on_connect(conn)
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
        return self._conn

    def drop(self) -> None:
        """Forget a connection in an unknown state (the next `get` opens another)."""
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close(timeout=self._timeout)
            except DB_ERRORS:
                conn.terminate()


class LeaseManager:
    """Holds this node's share of the wanted units, each behind a lease with a fencing token.

    ``on_acquired(handle)`` starts the unit's component (it should return once started);
    ``on_released(unit)`` stops it, and is awaited before the lease is given back. Units are opaque
    names, the same on every node (``tenant:<name>``, ``route:<name>``).
    """

    def __init__(
        self,
        dsn: str,
        settings: ClusterSettings,
        on_acquired: OnAcquired,
        on_released: OnReleased,
    ) -> None:
        self.settings = settings
        self.node = settings.node_name
        self._dsn = dsn
        self._on_acquired = on_acquired
        self._on_released = on_released
        self._me = NodeIdentity(self.node, socket.gethostname(), os.getpid(), __version__)
        self._ttl = settings.lease_ttl
        self._interval = settings.renew_interval
        self._renewer = _Link(dsn, f"lease renewer {self.node}", self._interval)
        self._balancer = _Link(dsn, f"lease balancer {self.node}", self._interval)
        self._balancer.on_connect = self._listen
        self._wanted: frozenset[str] = frozenset()
        self._handles: dict[str, LeaseHandle] = {}
        self._wake = asyncio.Event()
        self._balanced = asyncio.Event()  # set once the first round after `start` has ended
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._renewed_at = time.monotonic()  # when the last successful renewal was sent
        self._failing_since: datetime | None = None
        self._last_error = ""
        self.detail: dict[str, object] = {}
        """Published in this node's ``ce_nodes.detail`` with each heartbeat (shown by ``status``)."""

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, units: Iterable[str] = ()) -> None:
        """Join the cluster, then keep this node's share of ``units`` until `stop`.

        A node of the same name that is still live delays the join until its row expires (a process
        restarted faster than its old lease expired), or fails it after two ttls (another live
        process uses the name: each node needs its own ``node_name``).
        """
        self._wanted = frozenset(units)
        try:
            await self._join()
        except BaseException:
            self._balancer.drop()
            raise
        self._tasks = [
            asyncio.create_task(self._renew_forever(), name=f"cluster-renew:{self.node}"),
            asyncio.create_task(self._balance_forever(), name=f"cluster-balance:{self.node}"),
        ]
        log.info("cluster.joined", node=self.node, units=len(self._wanted))

    async def first_round(self) -> None:
        """Wait until the first balancing round after `start` has ended: the units this node took in it
        have started (``on_acquired`` returned), whatever it took (a late joiner may take nothing)."""
        await self._balanced.wait()

    def set_units(self, units: Iterable[str]) -> None:
        """The units the cluster should run (at start and reload; the same set on every node)."""
        self._wanted = frozenset(units)
        self._wake.set()

    async def stop(self) -> None:
        """Stop every unit held here, then release all at once so other nodes take them over now.

        Leases are renewed until the last unit has stopped: a slow stop never lets a lease lapse.
        """
        if not self._tasks:
            return
        renew_task, balance_task = self._tasks
        self._closing = True
        self._wake.set()
        await balance_task
        await self._stop_units(list(self._handles.values()))
        renew_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renew_task
        self._tasks = []
        try:
            async with asyncio.timeout(self._interval):
                await leases.leave(await self._balancer.get(), self.node)
        except DB_ERRORS as exc:
            log.warning("cluster.leave_failed", node=self.node, error=describe(exc))
        await self._balancer.close()
        await self._renewer.close()
        log.info("cluster.left", node=self.node)

    async def abort(self) -> None:
        """Drop out at once, releasing nothing: the leases expire and other nodes take over after
        ``lease_ttl``, as after a crash (a forced exit: the process is about to end)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for handle in self._handles.values():
            handle.lose()
        self._renewer.drop()
        self._balancer.drop()

    # -- what the daemon reads -------------------------------------------------------------------

    @property
    def handles(self) -> Mapping[str, LeaseHandle]:
        """The units held here (a handle that was lost stays until its unit has been stopped)."""
        return dict(self._handles)

    @property
    def wanted(self) -> frozenset[str]:
        """The units the cluster should run (`set_units`)."""
        return self._wanted

    def health(self) -> str | None:
        """None while renewals succeed; else why this node drives nothing (for health and status)."""
        if self._failing_since is None or time.monotonic() - self._renewed_at < self._window:
            return None
        since = self._failing_since.isoformat(timespec="seconds")
        return f"cannot reach the database since {since}: {self._last_error}"

    async def status(self) -> ClusterStatus:
        """Every node of the cluster, what it holds and since when (on a connection of its own)."""
        async with asyncio.timeout(self._interval):
            return await cluster_status(self._dsn, self._wanted)

    # -- joining ---------------------------------------------------------------------------------

    @property
    def _window(self) -> float:
        return self._ttl - self.settings.margin

    async def _join(self) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 2 * self._ttl
        try:
            while True:
                async with asyncio.timeout(self._interval):
                    conn = await self._balancer.get()
                    other = await leases.find_node(conn, self.node)
                    replace = (
                        other is not None and other.host == self._me.host and not _pid_running(other.pid)
                    )
                    if await leases.join(conn, self._me, self._ttl, replace_live=replace):
                        await leases.announce(conn, self.node)
                        break
                if other is None:  # its row was written between our two statements: look again
                    continue
                if loop.time() + other.expires_in > give_up:
                    raise ClusterError(
                        f"node name {self.node!r} is in use by the live process {other.pid} on "
                        f"{other.host}: give each node its own cluster.node_name"
                    )
                log.info("cluster.join_waiting", node=self.node, host=other.host, pid=other.pid)
                await asyncio.sleep(max(other.expires_in, 0) + EXPIRY_SLACK)
        except DB_ERRORS as exc:
            raise ClusterError(f"cannot join the cluster in the state database: {describe(exc)}") from exc
        self._renewed_at = time.monotonic()

    async def _listen(self, conn: Connection) -> None:
        await conn.add_listener(leases.CHANNEL, self._notified)

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if payload != self.node:
            self._wake.set()

    # -- renewer ---------------------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        while True:
            sent = time.monotonic()
            try:
                await self._renew(sent)
            except DB_ERRORS as exc:
                self._renewal_failed(exc)
            await asyncio.sleep(max(0.0, sent + self._interval - time.monotonic()))

    async def _renew(self, sent: float) -> None:
        held = [handle for handle in self._handles.values() if not handle.lost]
        async with asyncio.timeout(self._interval):
            conn = await self._renewer.get()
            renewed = await leases.renew(
                conn, self._me, self._ttl, {h.unit: h.token for h in held}, self.detail
            )
        if self._failing_since is not None:
            log.info("cluster.database_reachable", node=self.node, since=self._failing_since.isoformat())
            self._failing_since = None
        self._renewed_at = sent
        for handle in held:
            if handle.unit in renewed:
                handle.renewed(sent)
            elif self._handles.get(handle.unit) is handle:  # not released meanwhile: taken over
                handle.lose()
                log.error("cluster.lease_lost", node=self.node, unit=handle.unit, token=handle.token)
                self._wake.set()

    def _renewal_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, TimeoutError):  # a timed-out statement was cancelled; the rest is unknown
            self._renewer.drop()
        if self._failing_since is None:
            self._failing_since = datetime.now(UTC)
        self._last_error = describe(exc)
        log.warning("cluster.renew_failed", node=self.node, error=self._last_error)
        fenced = [h for h in self._handles.values() if not h.lost and not h.held()]
        for handle in fenced:
            handle.lose()
        if fenced:
            log.error(
                "cluster.fenced",
                node=self.node,
                units=[h.unit for h in fenced],
                reason=self.health(),
            )
            self._wake.set()

    # -- balancer --------------------------------------------------------------------------------

    async def _balance_forever(self) -> None:
        while not self._closing:
            self._wake.clear()
            wait = await self._balance()
            self._balanced.set()
            if self._closing:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _balance(self) -> float:
        """One round; the seconds until the next one is due."""
        await self._stop_units([h for h in self._handles.values() if h.lost])
        if self._closing:
            return 0.0
        try:
            async with asyncio.timeout(self._interval):
                conn = await self._balancer.get()
                rows, live = await leases.snapshot(conn)
                # A handle lost since this round began counts as held until the next round has
                # stopped its unit: its row is no orphan yet, and its unit not acquirable again.
                todo = plan(self.node, self._wanted, set(self._handles), rows, live)
                if todo.orphans:
                    await leases.release(conn, self.node, {row.unit: row.token for row in todo.orphans})
            if todo.release:
                await self._release(conn, [self._handles[unit] for unit in todo.release])
            if todo.acquire and self._failing_since is None:
                await self._acquire(conn, todo.acquire)
        except DB_ERRORS as exc:
            self._balancer.drop()
            log.warning("cluster.balance_failed", node=self.node, error=describe(exc))
            return self._interval
        if todo.wake_in is None:
            return self._interval
        return min(self._interval, todo.wake_in + EXPIRY_SLACK)

    async def _acquire(self, conn: Connection, units: Collection[str]) -> None:
        sent = time.monotonic()
        async with asyncio.timeout(self._interval):
            won = await leases.acquire(conn, self.node, self._ttl, units)
        failed: dict[str, int] = {}
        for unit, token in sorted(won.items()):
            handle = LeaseHandle(unit, Fence(unit, self.node, token), sent, self._ttl, self.settings.margin)
            self._handles[unit] = handle
            log.info("cluster.lease_acquired", node=self.node, unit=unit, token=token)
            try:
                await self._on_acquired(handle)
            except Exception as exc:  # noqa: BLE001 - one unit that cannot start must not stop the others
                log.error("cluster.start_failed", node=self.node, unit=unit, error=describe(exc))
                del self._handles[unit]
                handle.lose()
                failed[unit] = token
        if failed:
            async with asyncio.timeout(self._interval):
                await leases.release(conn, self.node, failed)

    async def _release(self, conn: Connection, handles: list[LeaseHandle]) -> None:
        await self._stop_units(handles)
        async with asyncio.timeout(self._interval):
            await leases.release(conn, self.node, {h.unit: h.token for h in handles})
        for handle in handles:
            log.info("cluster.lease_released", node=self.node, unit=handle.unit, token=handle.token)

    async def _stop_units(self, handles: list[LeaseHandle]) -> None:
        """``on_released`` for every handle at once, then forget them (their leases are not ours to use)."""
        results = await asyncio.gather(*(self._on_released(h.unit) for h in handles), return_exceptions=True)
        for handle, result in zip(handles, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                log.error("cluster.stop_failed", node=self.node, unit=handle.unit, error=describe(result))
            handle.lose()
            if self._handles.get(handle.unit) is handle:
                del self._handles[handle.unit]


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
