"""The cluster's tables, on PostgreSQL only (a SQLite state is one node's, guarded by a file lock).

- ``ce_nodes``: one row per node that joined, renewed with its leases. A node is live while
  ``expires_at`` (its last heartbeat + its own lease ttl, by the database's clock) is in the future.
- ``ce_leases``: one row per unit held; releasing deletes it. ``token`` comes from one sequence, so
  it grows on every change of holder, even across a release and a fresh acquire, and never on a
  renewal: a fence (`ce_daemon.store.base.Fence`) or a request carrying an older token is stale.

Every time is the database's (``now()``), never a node's wall clock.
"""

from __future__ import annotations

from ce_daemon.store import Migration

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "cluster",
        1,
        (
            "CREATE SEQUENCE ce_lease_tokens AS BIGINT",
            """CREATE TABLE ce_nodes (
                node TEXT PRIMARY KEY,
                host TEXT NOT NULL,
                pid INTEGER NOT NULL,
                version TEXT NOT NULL,
                started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                expires_at TIMESTAMPTZ NOT NULL,
                detail JSONB NOT NULL DEFAULT '{}'
            )""",
            """CREATE TABLE ce_leases (
                unit TEXT PRIMARY KEY,
                node TEXT NOT NULL,
                token BIGINT NOT NULL,
                acquired_at TIMESTAMPTZ NOT NULL,
                renewed_at TIMESTAMPTZ NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL
            )""",
            "CREATE INDEX ce_leases_by_node ON ce_leases (node)",
        ),
    ),
)
"""Versioned like every component's migrations; the state store's runner applies them."""
