"""The cluster as ``ce-daemon status`` shows it: every node, whether it is alive, what it holds since when."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson


@dataclass(frozen=True, slots=True)
class HeldUnit:
    """One lease: the unit, its token, since when its holder has it and how long it has left."""

    unit: str
    token: int
    since: datetime
    expires_in: float


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node as the database knows it; ``heartbeat_age`` is by the database's clock."""

    node: str
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_age: float
    alive: bool
    detail: dict[str, Any]
    units: tuple[HeldUnit, ...]


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """Every node, and the wanted units no live node holds (empty when the wanted set is not known)."""

    nodes: tuple[NodeStatus, ...]
    unheld: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (times in ISO 8601)."""
        data: dict[str, Any] = orjson.loads(orjson.dumps(asdict(self)))
        return data


async def read_status(conn: asyncpg.Connection, wanted: Collection[str] | None = None) -> ClusterStatus:
    """The cluster as one snapshot of ``conn``'s database shows it."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        nodes = await conn.fetch(
            "SELECT node, host, pid, version, started_at, detail::text AS detail,"
            " EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 AS heartbeat_age, expires_at > now() AS alive"
            " FROM ce_nodes ORDER BY node",
        )
        held = await conn.fetch(
            "SELECT unit, node, token, acquired_at,"
            " EXTRACT(EPOCH FROM expires_at - now())::float8 AS expires_in"
            " FROM ce_leases ORDER BY node, unit",
        )
    by_node: dict[str, list[HeldUnit]] = {}
    for row in held:
        unit = HeldUnit(row["unit"], row["token"], row["acquired_at"], row["expires_in"])
        by_node.setdefault(row["node"], []).append(unit)
    listed = [
        NodeStatus(
            node=row["node"],
            host=row["host"],
            pid=row["pid"],
            version=row["version"],
            started_at=row["started_at"],
            heartbeat_age=row["heartbeat_age"],
            alive=row["alive"],
            detail=orjson.loads(row["detail"]),
            units=tuple(by_node.get(row["node"], ())),
        )
        for row in nodes
    ]
    covered = {unit.unit for node in listed if node.alive for unit in node.units if unit.expires_in > 0}
    return ClusterStatus(tuple(listed), tuple(sorted(set(wanted or ()) - covered)))


async def cluster_status(dsn: str, wanted: Collection[str] | None = None) -> ClusterStatus:
    """`read_status` on a connection of its own (``ce-daemon status`` on a clustered installation)."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    try:
        return await read_status(conn, wanted)
    finally:
        await conn.close()
