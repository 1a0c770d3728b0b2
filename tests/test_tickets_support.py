"""Shared by the ticket tests: rules resolved from plain dicts, alerts, an in-test ticket destination."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ce_daemon.config.model import as_aware
from ce_daemon.errors import AuthError, PermanentError, TransientError
from ce_daemon.filter import compile_filter
from ce_daemon.keys import StreamKey
from ce_daemon.plugin import PluginOptions, Ticket, TicketRef, TicketSink, TicketStatus
from ce_daemon.registry import PluginInfo
from ce_daemon.tickets.resolve import ResolvedDestination, ResolvedMute, ResolvedRule
from ce_daemon.tickets.settings import Destination, Rule

NOW = float(int(time.time()))
"""Alerts happen now (the consumers load the open tickets of the last days)."""


def rule(**raw: Any) -> ResolvedRule:
    """A rule as the resolver makes it: ``r`` on tenant ``sim``'s DLP alerts, queued to ``dest``."""
    spec: dict[str, Any] = {
        "name": "r",
        "tenant": "sim",
        "alerts": ["dlp"],
        "queues": [{"to": "dest"}],
        **raw,
    }
    config = Rule.model_validate(spec)
    mutes = tuple(
        ResolvedMute(
            m.name,
            as_aware(m.start).timestamp(),
            as_aware(m.end).timestamp(),
            None if m.filter is None else compile_filter(m.filter),
            m.reason,
        )
        for m in config.mute
    )
    dedup = config.dedup
    return ResolvedRule(
        config,
        (StreamKey("sim", "alerts", "dlp"),),
        None if config.filter is None else compile_filter(config.filter),
        mutes,
        None if dedup is None or dedup.filter is None else compile_filter(dedup.filter),
        f"fp-{config.name}",
    )


def alert(n: int, **fields: Any) -> dict[str, Any]:
    """DLP alert number ``n``."""
    return {
        "_id": f"a{n}", "alert_type": "DLP", "alert_name": f"leak {n}", "user": f"u{n % 3}@example.com",
        "policy": "pci", "severity": "high", "timestamp": NOW + n, "app": "Box", "action": "block", **fields,
    }  # fmt: skip


class MemoryOptions(PluginOptions):
    """Options of the in-test destination."""

    tracks: bool = True


@dataclass
class Board:
    """What the in-test destination holds, and its scripted failures (one per call, in order)."""

    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    updates: list[tuple[str, int]] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    creates: int = 0
    finds: int = 0
    fail: list[BaseException | None] = field(default_factory=list)
    lose_answer: int = 0
    """Apply this many creates, then raise as if the answer were lost."""
    statuses: dict[str, str] = field(default_factory=dict)


BOARD = Board()


class MemorySink(TicketSink[MemoryOptions]):
    """A ticket system in memory (``BOARD``), searchable by key."""

    api_version = 1
    tracks = True

    def _script(self) -> None:
        if BOARD.fail:
            failure = BOARD.fail.pop(0)
            if failure is not None:
                raise failure

    async def create(self, ticket: Ticket) -> TicketRef:
        self._script()
        BOARD.creates += 1
        ticket_id = f"T{len(BOARD.tickets) + 1}"
        BOARD.tickets[ticket_id] = {"key": ticket.key, "title": ticket.title, "count": ticket.count,
                                     "fields": dict(ticket.fields), "severity": ticket.severity}  # fmt: skip
        BOARD.by_key[ticket.key] = ticket_id
        BOARD.statuses[ticket_id] = "new"
        if BOARD.lose_answer:
            BOARD.lose_answer -= 1
            raise TransientError("connection reset (the answer was lost)")
        return TicketRef(ticket_id, f"https://board.example/{ticket_id}", {"n": ticket_id})

    async def find(self, key: str) -> TicketRef | None:
        BOARD.finds += 1
        found = BOARD.by_key.get(key)
        return None if found is None else TicketRef(found, f"https://board.example/{found}", {"n": found})

    async def update(self, ref: TicketRef, ticket: Ticket) -> TicketRef:
        self._script()
        BOARD.updates.append((ref.id, ticket.count))
        BOARD.tickets[ref.id]["count"] = ticket.count
        return ref

    async def statuses(self, refs: Sequence[TicketRef]) -> Sequence[TicketStatus]:
        return [TicketStatus(r.id, BOARD.statuses.get(r.id, "deleted"), "raw") for r in refs]

    async def resolve(self, ref: TicketRef) -> None:
        BOARD.resolved.append(ref.id)


def destination(name: str = "dest", rate: float = 1000.0) -> ResolvedDestination:
    """The in-test destination, resolved."""
    info = PluginInfo("ticket_sink", "memory", "tests:MemorySink", "tests", "0", MemorySink, None, 1)
    config = Destination.model_validate({"name": name, "plugin": {"type": "memory"}, "rate_limit": rate})
    return ResolvedDestination(config, info, MemoryOptions(), f"fp-{name}")


__all__ = [
    "BOARD", "NOW", "AuthError", "Board", "MemorySink", "PermanentError", "TransientError", "alert",
    "destination", "rule",
]  # fmt: skip
