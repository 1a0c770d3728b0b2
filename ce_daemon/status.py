"""What ``ce-daemon status`` shows: the daemon's snapshot, asked live or saved for when it is not running.

The snapshot says which generation runs in which phase, every component's health and counters, the
last reload's outcome, the spool, each job's own section (:meth:`ce_daemon.jobs.Job.status`) and,
when several nodes share a PostgreSQL state, the cluster: every node and what it holds. Its
``components`` are this node's only (those of the units it holds).
It is scrubbed of secrets on its one way out; the daemon saves it in the state database at every
heartbeat and transition so that ``status`` can show the last one when no daemon answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from ce_daemon import __version__, redact
from ce_daemon.errors import describe

if TYPE_CHECKING:
    from ce_daemon.cluster.manager import LeaseManager
    from ce_daemon.daemon import Daemon

log = structlog.get_logger("ce_daemon.status")

STATUS_SNAPSHOT_KEY = "daemon.status"
"""Where the last snapshot is saved in the state database's metadata."""
CLUSTER_STATUS_TIMEOUT = 2.0
"""Seconds the cluster's part of a status may take: ``status`` answers even when the database does not."""


async def status_snapshot(daemon: Daemon) -> dict[str, Any]:
    """The daemon's status now: generation, phase, components and their health, jobs (no secrets)."""
    ok, total, bad = daemon.health.summary()
    snapshot: dict[str, Any] = {
        "at": round(time.time(), 3),
        "version": __version__,
        "pid": os.getpid(),
        "file": str(daemon.path),
        "phase": str(daemon.phase),
        "generation": daemon.generation,
        "started": round(daemon.started, 3),
        "uptime_s": int(time.time() - daemon.started),
        "components_ok": ok,
        "components_total": total,
        "failing": bad,
        "last_reload": daemon.last_reload or None,
        "http": daemon.web.url,
        "components": [s.snapshot() for s in daemon.health.all()],
    }
    if daemon.cluster is not None:
        snapshot["cluster"] = await cluster_section(daemon.cluster)
    runtime, loaded = daemon.runtime, daemon.loaded
    if runtime is not None:
        with contextlib.suppress(Exception):  # a status without the spool beats no status
            snapshot["spool"] = await runtime.spool.stats()
        if loaded is not None:
            jobs: dict[str, Any] = {}
            for job, resolved in loaded.resolved_jobs():
                try:
                    section = await job.status(loaded, resolved, runtime)
                except Exception as exc:  # noqa: BLE001 - one job's failing section never hides the rest
                    section = {"error": f"{type(exc).__name__}: {exc}"}
                if section is not None:
                    jobs[job.name] = section
            snapshot["jobs"] = jobs
    cleaned: dict[str, Any] = redact.scrub_data(snapshot, redact.STATUS_LIMIT)  # the one way out
    return cleaned


async def cluster_section(manager: LeaseManager) -> dict[str, Any]:
    """Every node of the cluster, what each holds since when, the units no live node holds, and why this
    node drives nothing (``health``, None while it reaches the database)."""
    health = manager.health()
    try:
        async with asyncio.timeout(CLUSTER_STATUS_TIMEOUT):
            seen = await manager.status()
    except Exception as exc:  # noqa: BLE001 - the rest of the status still answers
        why = f"cannot read the cluster: {describe(exc)}"
        return {"node": manager.node, "nodes": [], "unheld": [], "health": health or why}
    nodes = [
        {
            "name": node.node,
            "host": node.host,
            "pid": node.pid,
            "alive": node.alive,
            "heartbeat_age_s": round(node.heartbeat_age, 3),
            "units": [
                {
                    "unit": held.unit,
                    "token": held.token,
                    "since": held.since.isoformat(),
                    "expires_in_s": round(held.expires_in, 3),
                }
                for held in node.units
            ],
        }
        for node in seen.nodes
    ]
    return {"node": manager.node, "nodes": nodes, "unheld": list(seen.unheld), "health": health}


async def save_snapshot(daemon: Daemon) -> None:
    """Keep the status in the state database, for ``status`` to show when no daemon answers."""
    if daemon.runtime is None:
        return
    try:
        snapshot = await status_snapshot(daemon)
        await daemon.runtime.store.set_meta(STATUS_SNAPSHOT_KEY, orjson.dumps(snapshot).decode())
    except Exception as exc:  # noqa: BLE001 - a snapshot not saved is retried at the next heartbeat
        log.debug("status.snapshot_not_saved", error=f"{type(exc).__name__}: {exc}")
