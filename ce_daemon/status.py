"""What ``ce-daemon status`` shows: the daemon's snapshot, asked live or saved for when it is not running.

The snapshot says which generation runs in which phase, every component's health and counters, the
last reload's outcome, the spool, and each job's own section (:meth:`ce_daemon.jobs.Job.status`).
It is scrubbed of secrets on its one way out; the daemon saves it in the state database at every
heartbeat and transition so that ``status`` can show the last one when no daemon answers.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from ce_daemon import __version__, redact

if TYPE_CHECKING:
    from ce_daemon.daemon import Daemon

log = structlog.get_logger("ce_daemon.status")

STATUS_SNAPSHOT_KEY = "daemon.status"
"""Where the last snapshot is saved in the state database's metadata."""


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


async def save_snapshot(daemon: Daemon) -> None:
    """Keep the status in the state database, for ``status`` to show when no daemon answers."""
    if daemon.runtime is None:
        return
    try:
        snapshot = await status_snapshot(daemon)
        await daemon.runtime.store.set_meta(STATUS_SNAPSHOT_KEY, orjson.dumps(snapshot).decode())
    except Exception as exc:  # noqa: BLE001 - a snapshot not saved is retried at the next heartbeat
        log.debug("status.snapshot_not_saved", error=f"{type(exc).__name__}: {exc}")
