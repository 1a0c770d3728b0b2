"""One rule's decisions for a page of alerts: filter, mute, dedup, and what to store (no I/O here).

:class:`RuleEngine` keeps the rule's open grouped tickets in memory (loaded from the store when its
consumer starts, refreshed every few seconds so that tickets closed or failed elsewhere stop taking
duplicates) and turns alerts into a :class:`~ce_daemon.tickets.store.PageCommit`.

A ticket's ``key`` is a digest of the rule, the queue, the dedup group and the alert that opened it:
stable across restarts and replays, it is the destination's idempotency key.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ce_daemon.tickets.resolve import ResolvedRule
from ce_daemon.tickets.settings import Queue
from ce_daemon.tickets.store import PageCommit
from ce_daemon.tickets.template import compile_template

__all__ = [
    "SEVERITIES",
    "Counts",
    "RuleEngine",
    "alert_id",
    "alert_time",
    "group_of",
    "severity_of",
    "ticket_key",
]

SEVERITIES: Final = ("informational", "low", "medium", "high", "critical")
_SEVERITY_WORDS: Final = {
    **{s: s for s in SEVERITIES}, "info": "informational", "very-high": "critical", "very high": "critical",
    "urgent": "critical", "moderate": "medium",
}  # fmt: skip
_MISSING_GROUP: Final = "<missing>"


def alert_id(alert: Mapping[str, Any]) -> str:
    """The alert's ``_id``, or a digest of its content when it has none."""
    found = alert.get("_id") or alert.get("id")
    if isinstance(found, str | int) and not isinstance(found, bool) and str(found):
        return str(found)
    return hashlib.blake2b(
        orjson.dumps(alert, option=orjson.OPT_SORT_KEYS, default=str), digest_size=12
    ).hexdigest()


def alert_time(alert: Mapping[str, Any], now: float) -> float:
    """When the alert happened (its ``timestamp``, epoch seconds), else ``now``."""
    value = alert.get("timestamp")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return now


def _path(alert: Mapping[str, Any], path: str) -> str:
    node: Any = alert
    for step in path.split("."):
        if isinstance(node, Mapping) and step in node:
            node = node[step]
        else:
            return _MISSING_GROUP
    if node is None:
        return _MISSING_GROUP
    return (
        node
        if isinstance(node, str)
        else orjson.dumps(node, option=orjson.OPT_SORT_KEYS, default=str).decode()
    )


def group_of(rule: ResolvedRule, alert: Mapping[str, Any]) -> str | None:
    """The alert's dedup group under ``rule`` (None: it is deduplicated with nothing)."""
    dedup = rule.config.dedup
    if dedup is None:
        return None
    if dedup.fields:
        return "\x1f".join(_path(alert, f) for f in dedup.fields)
    predicate = rule.dedup_predicate
    return "filter" if predicate is not None and predicate(alert) else None


def ticket_key(rule: str, queue: int, destination: str, group: str | None, first: str) -> str:
    """The idempotency key of the ticket opened by alert ``first`` (``[a-z0-9-]``, 35 characters)."""
    material = "\x00".join((rule, str(queue), destination, group or "", first)).encode()
    return "ce-" + hashlib.blake2b(material, digest_size=16).hexdigest()


def severity_of(text: str) -> str:
    """A rendered severity as the contract's word (``medium`` when it names none)."""
    return _SEVERITY_WORDS.get(text.strip().lower(), "medium")


def _payload(rule: str, queue: int, title: str | None, alert: Mapping[str, Any]) -> str:
    """An outbox payload: the alert and where it goes; its templates are rendered when it is sent."""
    return orjson.dumps({"rule": rule, "queue": queue, "title": title, "alert": alert}, default=str).decode()


def render_ticket(queue: Queue, rule: str, alert: Mapping[str, Any]) -> dict[str, Any]:
    """What a destination is told of ``alert`` through ``queue``."""
    return {
        "rule": rule,
        "title": compile_template(queue.title).render(alert),
        "description": compile_template(queue.description).render(alert),
        "severity": severity_of(compile_template(queue.severity).render(alert)),
        "fields": {name: compile_template(t).render(alert) for name, t in queue.fields.items()},
        "alert": dict(alert),
    }


@dataclass(slots=True)
class Open:
    """An open grouped ticket the rule knows of."""

    key: str
    first_alert: float


@dataclass
class Counts:
    """What the engine did with the alerts it saw."""

    alerts: int = 0
    filtered: int = 0
    muted: int = 0
    opened: int = 0
    duplicates: int = 0
    pending_approval: int = 0

    def add(self, other: Counts) -> None:
        for name in ("alerts", "filtered", "muted", "opened", "duplicates", "pending_approval"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class RuleEngine:
    """One rule's filter, mutes and dedup over its open tickets."""

    rule: ResolvedRule
    open: dict[tuple[int, str], Open] = field(default_factory=dict)

    def load(self, rows: Iterable[tuple[str, int, str, float]]) -> None:
        """Know these open tickets (``TicketStore.open_tickets``), replacing what was known."""
        self.open = {(queue, group): Open(key, first) for key, queue, group, first in rows}

    def muted(self, alert: Mapping[str, Any], now: float) -> bool:
        """Whether a mute of the rule drops ``alert`` at ``now`` (expired and future windows do not)."""
        until = self.rule.muted_until
        if until is not None and now < until:
            return True
        return any(
            m.start <= now < m.end and (m.predicate is None or m.predicate(alert)) for m in self.rule.mutes
        )

    def decide(self, alerts: Iterable[Mapping[str, Any]], now: float, commit: PageCommit) -> Counts:
        """Add to ``commit`` what ``alerts`` make: new tickets and their intents, duplicates' counts."""
        counts = Counts()
        rule = self.rule
        config = rule.config
        predicate = rule.predicate
        window = config.dedup.window if config.dedup is not None else 0.0
        queues = list(enumerate(config.queues))
        check_mutes = bool(rule.mutes) or rule.muted_until is not None
        folded: dict[str, tuple[int, float, Mapping[str, Any], int, Queue]] = {}
        selected = list(alerts)
        counts.alerts = len(selected)
        if predicate is not None:  # the hot loop: most alerts are not a rule's
            selected = [alert for alert in selected if predicate(alert)]
            counts.filtered = counts.alerts - len(selected)
        for alert in selected:
            if check_mutes and self.muted(alert, now):
                counts.muted += 1
                continue
            group = group_of(rule, alert)
            when = alert_time(alert, now)
            for index, queue in queues:
                known = self.open.get((index, group)) if group is not None else None
                if known is not None and abs(when - known.first_alert) < window:
                    counts.duplicates += 1
                    before = folded.get(known.key)
                    n, last = (before[0], before[1]) if before is not None else (0, 0.0)
                    folded[known.key] = (n + 1, max(last, when), alert, index, queue)
                    continue
                key = ticket_key(config.name, index, queue.to, group, alert_id(alert))
                title = compile_template(queue.title).render(alert)
                approval = "pending" if queue.require_approval else "not_required"
                counts.opened += 1
                counts.pending_approval += queue.require_approval
                object_id = alert.get("object_id")
                commit.tickets.append({
                    "key": key, "rule": config.name, "destination": queue.to, "queue": index, "grp": group,
                    "title": title[:500],
                    "status": "pending_approval" if queue.require_approval else "pending",
                    "approval": approval, "dedup_count": 1, "first_alert": when, "last_alert": when,
                    "object_id": str(object_id) if isinstance(object_id, str | int) else "",
                })  # fmt: skip
                commit.creates.append({
                    "ticket": key, "destination": queue.to,
                    "payload": _payload(config.name, index, title, alert),
                    "state": "held" if queue.require_approval else "pending",
                })  # fmt: skip
                if group is not None:
                    self.open[(index, group)] = Open(key, when)
        for key, (n, last, alert, index, queue) in folded.items():
            earlier = commit.duplicates.get(key)
            commit.duplicates[key] = (
                n + (earlier[0] if earlier else 0), max(last, earlier[1] if earlier else 0.0),
                functools.partial(_payload, config.name, index, None, alert), queue.to,
            )  # fmt: skip
        return counts
