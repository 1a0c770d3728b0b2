"""The statements on ``ce_nodes`` and ``ce_leases``, one function each (PostgreSQL dialect, asyncpg).

Every race between nodes is decided by a single statement: `acquire` takes a unit only if it has no
lease (``INSERT … ON CONFLICT DO NOTHING``) or an expired one, which it locks ``FOR UPDATE SKIP
LOCKED`` (the condition is checked again on the row's latest version once locked, so of two nodes
only one wins); `renew` and `release` touch only rows that still carry this node's name and token.
Multi-row statements take their rows in unit order, so two nodes never wait on each other's rows in
a cycle.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import asyncpg
import orjson

from ce_daemon.cluster.balance import LeaseRow

DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
"""What a statement raises when the database is out of reach, restarting, or refusing it."""

CHANNEL = "ce_cluster"
"""``NOTIFY`` channel: a node that joins, acquires, releases or leaves wakes the others' balancing."""

FORGET_DEAD_NODES_AFTER = 86_400.0
"""Seconds a dead node stays listed by ``status`` before the next node that joins forgets it."""

Connection = asyncpg.Connection


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What a node publishes about itself in ``ce_nodes``."""

    node: str
    host: str
    pid: int
    version: str


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A node's row as another process of the same name finds it when it joins."""

    host: str
    pid: int
    expires_in: float


async def find_node(conn: Connection, node: str) -> NodeRow | None:
    """The row of ``node``, if there is one."""
    row = await conn.fetchrow(
        "SELECT host, pid, EXTRACT(EPOCH FROM expires_at - now())::float8 AS expires_in"
        " FROM ce_nodes WHERE node = $1",
        node,
    )
    return None if row is None else NodeRow(row["host"], row["pid"], row["expires_in"])


async def join(conn: Connection, me: NodeIdentity, ttl: float, *, replace_live: bool = False) -> bool:
    """Register ``me``; False when a live process (not ``replace_live``) already uses the name."""
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM ce_nodes WHERE expires_at < now() - make_interval(secs => $1)"
            " AND NOT EXISTS (SELECT 1 FROM ce_leases WHERE ce_leases.node = ce_nodes.node)",
            FORGET_DEAD_NODES_AFTER,
        )
        joined = await conn.fetchval(
            "INSERT INTO ce_nodes AS n (node, host, pid, version, expires_at)"
            " VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))"
            " ON CONFLICT (node) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,"
            " version = EXCLUDED.version, started_at = now(), heartbeat_at = now(),"
            " expires_at = EXCLUDED.expires_at, detail = '{}'"
            " WHERE n.expires_at <= now() OR (n.host = EXCLUDED.host AND n.pid = EXCLUDED.pid) OR $6"
            " RETURNING true",
            me.node,
            me.host,
            me.pid,
            me.version,
            ttl,
            replace_live,
        )
    return bool(joined)


async def renew(
    conn: Connection,
    me: NodeIdentity,
    ttl: float,
    held: Mapping[str, int],
    detail: Mapping[str, object],
) -> set[str]:
    """Heartbeat, and extend every lease of ``held`` (unit → token) still ours: the units extended.

    One statement, so the node's liveness and its leases expire at the same instant (its heartbeat
    is an upsert: a node forgotten while it was paused comes back).
    """
    units = sorted(held)
    renewed = await conn.fetchval(
        "WITH heartbeat AS ("
        " INSERT INTO ce_nodes AS n (node, host, pid, version, expires_at, detail)"
        " VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), $8::jsonb)"
        " ON CONFLICT (node) DO UPDATE SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at,"
        " detail = EXCLUDED.detail"
        "), renewed AS ("
        " UPDATE ce_leases SET renewed_at = now(), expires_at = now() + make_interval(secs => $5)"
        " FROM unnest($6::text[], $7::bigint[]) AS mine(unit, token)"
        " WHERE ce_leases.unit = mine.unit AND ce_leases.node = $1 AND ce_leases.token = mine.token"
        " RETURNING ce_leases.unit"
        ") SELECT array(SELECT unit FROM renewed)",
        me.node,
        me.host,
        me.pid,
        me.version,
        ttl,
        units,
        [held[unit] for unit in units],
        orjson.dumps(detail).decode(),
    )
    return set(renewed)


async def snapshot(conn: Connection) -> tuple[list[LeaseRow], set[str]]:
    """Every lease, and the live nodes, at one instant of the database's clock."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(
            "SELECT unit, node, token, EXTRACT(EPOCH FROM expires_at - now())::float8 AS expires_in"
            " FROM ce_leases",
        )
        live = await conn.fetch("SELECT node FROM ce_nodes WHERE expires_at > now()")
    return (
        [LeaseRow(row["unit"], row["node"], row["token"], row["expires_in"]) for row in rows],
        {row["node"] for row in live},
    )


async def acquire(conn: Connection, node: str, ttl: float, units: Collection[str]) -> dict[str, int]:
    """Take every unit of ``units`` that has no lease or an expired one: unit → new token.

    An expired lease is locked ``FOR UPDATE SKIP LOCKED``: one another node is taking, or whose old
    holder is committing under its fence (``FOR KEY SHARE``), is left for a later round.
    """
    async with conn.transaction():
        rows = await conn.fetch(
            "WITH expired AS ("
            " SELECT unit FROM ce_leases WHERE unit = ANY($3::text[]) AND expires_at < now()"
            " ORDER BY unit FOR UPDATE SKIP LOCKED"
            "), taken AS ("
            " UPDATE ce_leases SET node = $1, token = nextval('ce_lease_tokens'), acquired_at = now(),"
            " renewed_at = now(), expires_at = now() + make_interval(secs => $2)"
            " FROM expired WHERE ce_leases.unit = expired.unit"
            " RETURNING ce_leases.unit, ce_leases.token"
            "), created AS ("
            " INSERT INTO ce_leases (unit, node, token, acquired_at, renewed_at, expires_at)"
            " SELECT unit, $1, nextval('ce_lease_tokens'), now(), now(), now() + make_interval(secs => $2)"
            " FROM unnest($3::text[]) AS wanted(unit) ORDER BY unit"
            " ON CONFLICT (unit) DO NOTHING"
            " RETURNING unit, token"
            ") SELECT unit, token FROM taken UNION ALL SELECT unit, token FROM created",
            node,
            ttl,
            sorted(units),
        )
        if rows:  # a node that lost a race for a unit looks for another at once
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, node)
    return {row["unit"]: row["token"] for row in rows}


async def release(conn: Connection, node: str, leases: Mapping[str, int]) -> None:
    """Give back the leases of ``leases`` (unit → token) that are still ours, and tell the others."""
    units = sorted(leases)
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM ce_leases USING unnest($2::text[], $3::bigint[]) AS mine(unit, token)"
            " WHERE ce_leases.unit = mine.unit AND ce_leases.node = $1 AND ce_leases.token = mine.token",
            node,
            units,
            [leases[unit] for unit in units],
        )
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, node)


async def leave(conn: Connection, node: str) -> None:
    """Remove ``node`` and whatever it still holds, and tell the others (a graceful stop's last step)."""
    async with conn.transaction():
        await conn.execute("DELETE FROM ce_leases WHERE node = $1", node)
        await conn.execute("DELETE FROM ce_nodes WHERE node = $1", node)
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, node)


async def announce(conn: Connection, node: str) -> None:
    """Wake the other nodes' balancing (this one joined)."""
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, node)
