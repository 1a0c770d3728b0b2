"""What one node should release and acquire in a balancing round: a pure function of what it sees.

Every node runs the same rule on the same database snapshot, and the rule moves a unit only when a
node holds more than its share, so a balanced cluster is left alone (no churn), and a cluster that
changed (a node joined, died or left; units added or removed) settles within a few rounds:

- a node's share is ``ceil(units / live nodes)``: together the shares cover every unit;
- a node releases units it holds that are no longer wanted, then those above its share;
- it tries to acquire free units (no lease, or an expired one) up to its share.

Ties are broken by rendezvous hashing (a score per node and unit): each node prefers its own
highest-scoring free units, so nodes that acquire at the same moment mostly ask for different units
instead of all racing for the first; it releases its lowest-scoring ones. The database decides every
race (`ce_daemon.cluster.leases.acquire`): a loser simply tries again next round.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One row of ``ce_leases`` as a round sees it; ``expires_in`` is by the database's clock."""

    unit: str
    node: str
    token: int
    expires_in: float


@dataclass(frozen=True, slots=True)
class Plan:
    """What a round does, in this order: forget orphans, release, acquire."""

    orphans: tuple[LeaseRow, ...]  # leases of this node it does not hold (an earlier life of it)
    release: tuple[str, ...]
    acquire: tuple[str, ...]
    wake_in: float | None  # seconds until the first foreign lease of a wanted unit expires


def share(units: int, live_nodes: int) -> int:
    """How many units a node aims to hold."""
    return math.ceil(units / max(1, live_nodes))


def preference(node: str, unit: str) -> int:
    """The rendezvous score of ``unit`` for ``node`` (stable across processes and versions)."""
    digest = hashlib.blake2b(f"{node}\0{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def plan(
    node: str,
    wanted: Collection[str],
    held: Collection[str],
    rows: Iterable[LeaseRow],
    live_nodes: Collection[str],
) -> Plan:
    """The round of ``node``, which holds ``held``, in a cluster whose ``live_nodes`` want ``wanted``."""
    rows = list(rows)
    orphans = tuple(row for row in rows if row.node == node and row.unit not in held)
    taken = {row.unit for row in rows if row.expires_in > 0 and row.node != node}
    removed = [unit for unit in held if unit not in wanted]
    keep = sorted((unit for unit in held if unit in wanted), key=lambda unit: preference(node, unit))
    target = share(len(wanted), len(set(live_nodes) | {node}))
    extra = keep[: max(0, len(keep) - target)]
    free = sorted(
        (unit for unit in wanted if unit not in taken and unit not in held),
        key=lambda unit: preference(node, unit),
        reverse=True,
    )
    acquire = free[: max(0, target - len(keep))]
    expiries = [row.expires_in for row in rows if row.unit in taken and row.unit in wanted]
    return Plan(
        orphans=orphans,
        release=tuple(sorted(removed) + extra),
        acquire=tuple(sorted(acquire)),
        wake_in=min(expiries) if expiries else None,
    )
