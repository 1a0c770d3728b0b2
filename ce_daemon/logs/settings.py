"""The ``logs:`` section's shape (the Cloud Log Shipper job), composed into the pipeline's model."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from ce_daemon.config.model import as_aware
from ce_daemon.config.values import Duration, Name, Size, Strict


def auto_size(cpus: int | None = None) -> int:
    """Format workers for ``logs.workers: auto``: one per CPU, at most 4 (past that, the daemon's own
    process is the limit); none on a single CPU, where a worker only adds the cost of the hand-over.

    One per CPU rather than one less: the daemon's process waits on sockets much of the time, and on two
    CPUs two workers carried three routes 27 % faster than one (bench_fanout).
    """
    count = (os.cpu_count() if cpus is None else cpus) or 1
    return 0 if count < 2 else min(count, 4)


class Batch(Strict):
    """When a route hands a batch to its sink: whichever limit is reached first."""

    max_records: Annotated[int, Field(gt=0, le=1_000_000)] = 5000
    max_bytes: Annotated[Size, Field(le=1024**3)] = 1_000_000
    max_wait: Annotated[Duration, Field(le=3600)] = 1.0
    """Zero sends whatever has arrived at once."""


class MuteWindow(Strict):
    """Records are not shipped while a mute window is active (they are acknowledged and counted)."""

    name: str = "mute"
    start: datetime
    end: datetime
    filter: Any = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if as_aware(self.end) <= as_aware(self.start):
            raise ValueError("a mute window's end must come after its start")
        return self


class Route(Strict):
    """A log route: what to read, how to filter and format it, and the one sink it goes to."""

    name: Name
    tenant: str
    alerts: list[str] = []
    events: list[str] = []
    filter: Any = None
    mute: list[MuteWindow] = []
    format: Literal["cef", "leef", "json"] = "cef"
    mapping: str = "netskope"
    fields: list[str | dict[str, Any]] | None = None
    """With ``format: json``: the fields to send (names, or ``{name, mapping_field, default_value}`` to
    rename); unset sends the mapping's JSON taxonomy, which for the built-in mapping is the raw record."""
    batch: Batch = Batch()
    retry_max_delay: Annotated[Duration, Field(gt=0, le=86400)] = 300.0
    """More than zero (zero retries in a busy loop), at most a day."""
    sink: dict[str, Any]
    enabled: bool = True
    require_healthy: bool = False
    """Refuse a reload that adds or changes this route when its sink fails the start check (by default
    the route starts degraded and retries, as at daemon start)."""


class Logs(Strict):
    """The Cloud Log Shipper job."""

    routes: list[Route] = []
    workers: Literal["auto"] | Annotated[int, Field(ge=0, le=32)] = "auto"
    """Processes that decode, filter and format the routes' records (:mod:`ce_daemon.logs.workers`):
    ``auto`` is one per CPU, at most 4 (none on one CPU); 0 does it all in the daemon's process."""
