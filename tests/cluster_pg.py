"""Test support for the cluster: a PostgreSQL database per test (the test kit's), and managers whose
callbacks record who holds what (so a test waits on events, never on a clock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from ce_daemon.cluster.handle import LeaseHandle
from ce_daemon.cluster.leases import CHANNEL
from ce_daemon.cluster.manager import LeaseManager
from ce_daemon.cluster.settings import ClusterSettings
from ce_daemon.store import open_url
from ce_daemon.testing.state import postgres_database


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A new database with the cluster's tables (the PostgreSQL store migrates them with the core's): its
    URL; dropped on exit."""
    async with postgres_database() as url:
        async with await open_url(url):
            pass
        yield url


class Cluster:
    """Lease managers on one database, and who holds what according to their callbacks.

    ``on_acquired`` records a violation when another running manager's handle of the unit is still
    held: its component could still drive the unit, so that would be two drivers. (A handle that is
    no longer held may await its ``on_released`` a little longer: it drives nothing meanwhile.)
    """

    def __init__(self, dsn: str, ttl: float = 2.0) -> None:
        self.dsn = dsn
        self.ttl = ttl
        self.managers: dict[str, LeaseManager] = {}
        self.holding: dict[str, dict[str, LeaseHandle]] = {}
        self.events: list[tuple[str, str, str]] = []  # (node, "acquired" | "released", unit)
        self.violations: list[str] = []
        self._changed = asyncio.Condition()

    async def start(self, node: str, units: Iterable[str], **settings: Any) -> LeaseManager:
        """Start a manager named ``node`` wanting ``units``."""
        self.holding[node] = {}

        async def acquired(handle: LeaseHandle) -> None:
            others = [
                other
                for other, held in self.holding.items()
                if other != node and handle.unit in held and held[handle.unit].held()
            ]
            if others:
                self.violations.append(f"{node} acquired {handle.unit} still held by {others}")
            await self._record(node, "acquired", handle.unit, handle)

        async def released(unit: str) -> None:
            await self._record(node, "released", unit, None)

        options = {"node_name": node, "lease_ttl": self.ttl, **settings}
        manager = LeaseManager(self.dsn, ClusterSettings(**options), acquired, released)
        self.managers[node] = manager
        await manager.start(units)
        return manager

    async def _record(self, node: str, event: str, unit: str, handle: LeaseHandle | None) -> None:
        async with self._changed:
            self.events.append((node, event, unit))
            if handle is None:
                self.holding[node].pop(unit, None)
            else:
                self.holding[node][unit] = handle
            self._changed.notify_all()

    async def kill(self, node: str) -> None:
        """End ``node`` as a crash would: nothing released, nothing stopped, its leases left to expire."""
        await self.managers.pop(node).abort()
        async with self._changed:
            del self.holding[node]
            self._changed.notify_all()

    async def stop(self, node: str) -> None:
        """Stop ``node`` gracefully."""
        await self.managers.pop(node).stop()
        async with self._changed:
            del self.holding[node]
            self._changed.notify_all()

    async def until(self, condition: Callable[[], bool], timeout: float) -> None:
        """Return once ``condition()`` holds after some callback; fail after ``timeout`` seconds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(condition)

    def shares(self) -> list[int]:
        """Units held per running node, sorted."""
        return sorted(len(held) for held in self.holding.values())

    def holders(self) -> dict[str, list[str]]:
        """Unit → the running nodes that hold it."""
        result: dict[str, list[str]] = {}
        for node, held in self.holding.items():
            for unit in held:
                result.setdefault(unit, []).append(node)
        return result

    def exclusive(self, units: Iterable[str]) -> bool:
        """Whether each of ``units`` is held by exactly one running node (and nothing else is held)."""
        holders = self.holders()
        return set(holders) == set(units) and all(len(nodes) == 1 for nodes in holders.values())

    async def close(self) -> None:
        """Stop every manager still running."""
        for node in list(self.managers):
            await self.stop(node)


@asynccontextmanager
async def cluster(ttl: float = 2.0) -> AsyncIterator[Cluster]:
    """A `Cluster` on a scratch database; its managers are stopped on exit."""
    async with scratch_database() as dsn:
        group = Cluster(dsn, ttl)
        try:
            yield group
        finally:
            await group.close()


async def lease_rows(dsn: str) -> dict[str, tuple[str, int]]:
    """``ce_leases`` as unit → (node, token)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await _lease_rows(conn)
    finally:
        await conn.close()


async def _lease_rows(conn: asyncpg.Connection) -> dict[str, tuple[str, int]]:
    rows = await conn.fetch("SELECT unit, node, token FROM ce_leases")
    return {row["unit"]: (row["node"], row["token"]) for row in rows}


async def until_leases(
    dsn: str, condition: Callable[[dict[str, tuple[str, int]]], bool], timeout: float
) -> dict[str, tuple[str, int]]:
    """``ce_leases`` (as `lease_rows`) once ``condition`` holds, checked again after every release and
    join the managers announce on their ``NOTIFY`` channel."""
    conn = await asyncpg.connect(dsn)
    notified = asyncio.Event()
    await conn.add_listener(CHANNEL, lambda *_: notified.set())
    try:
        async with asyncio.timeout(timeout):
            while not condition(rows := await _lease_rows(conn)):
                await notified.wait()
                notified.clear()
        return rows
    finally:
        await conn.close()
