"""Resolving the ``tickets:`` section: each destination's plugin, each rule's streams, filters and queues.

Everything is checked before anything runs, each problem at its place in the file: plugins and their
options, tenants, subtypes, filters (the rule's, its mutes' and its dedup's), queues naming
destinations that exist. What comes out (:class:`TicketPlan`) is what the components are built from,
each part with a fingerprint of its raw settings for reload by diff.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ce_daemon.config.load import digest, unique_names
from ce_daemon.config.model import as_aware
from ce_daemon.config.source import Loc
from ce_daemon.jobs import Resolution
from ce_daemon.keys import StreamKey
from ce_daemon.netskope.subtypes import DATA_KINDS, normalise_subtype
from ce_daemon.plugin import PluginOptions
from ce_daemon.registry import PluginInfo
from ce_daemon.tickets.settings import Destination, Queue, Rule, Tickets

__all__ = ["ResolvedDestination", "ResolvedMute", "ResolvedRule", "TicketPlan", "TicketResolver"]

Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class ResolvedMute:
    """A mute window with its compiled filter (None: every alert), its times as epoch seconds."""

    name: str
    start: float
    end: float
    predicate: Predicate | None
    reason: str = ""


@dataclass(frozen=True)
class ResolvedRule:
    """A rule with its streams and compiled filters."""

    config: Rule
    streams: tuple[StreamKey, ...]
    predicate: Predicate | None
    mutes: tuple[ResolvedMute, ...]
    dedup_predicate: Predicate | None
    fingerprint: str

    @property
    def muted_until(self) -> float | None:
        """The rule-level mute's end as epoch seconds, or None."""
        until = self.config.muted_until
        return None if until is None else as_aware(until).timestamp()

    @property
    def queues(self) -> list[Queue]:
        """Its queues."""
        return self.config.queues


@dataclass(frozen=True)
class ResolvedDestination:
    """A destination with its plugin and options."""

    config: Destination
    plugin: PluginInfo
    options: PluginOptions
    fingerprint: str

    @property
    def tracks(self) -> bool:
        """Whether its tickets have a status the core syncs."""
        return bool(getattr(self.plugin.cls, "tracks", False))


@dataclass(frozen=True)
class TicketPlan:
    """The ``tickets:`` section resolved."""

    settings: Tickets
    destinations: dict[str, ResolvedDestination]
    rules: dict[str, ResolvedRule]

    def enabled_rules(self) -> list[ResolvedRule]:
        """The rules whose consumers run."""
        return [r for r in self.rules.values() if r.config.enabled]

    def enabled_destinations(self) -> list[ResolvedDestination]:
        """The destinations whose dispatchers run."""
        return [d for d in self.destinations.values() if d.config.enabled]


class TicketResolver:
    """The checks of ``tickets:`` beyond its model."""

    def __init__(self, resolution: Resolution) -> None:
        self.resolution = resolution
        self.source = resolution.source
        self.problems = resolution.problems
        self.plugins: dict[int, tuple[PluginInfo, PluginOptions]] = {}
        self.predicates: dict[Loc, Predicate | None] = {}
        self.streams: dict[int, tuple[StreamKey, ...]] = {}

    def raw(self, key: str) -> list[tuple[int, dict[str, Any]]]:
        """The raw entries of ``tickets.<key>`` that are mappings, with their index."""
        return self.resolution.entries("tickets", key)

    def check(self) -> None:
        """Check every raw destination and rule, each problem placed."""
        for key in ("destinations", "rules"):
            self.problems.extend(unique_names(self.source, ("tickets", key)))
        tenants = self.resolution.tenants()
        for index, raw in self.raw("destinations"):
            loc: Loc = ("tickets", "destinations", index, "plugin")
            resolved = self.resolution.plugin("ticket_sink", raw.get("plugin"), loc, "ticket destination")
            if resolved is not None:
                self.plugins[index] = resolved
        destinations = [str(raw.get("name")) for _, raw in self.raw("destinations")]
        for index, raw in self.raw("rules"):
            loc = ("tickets", "rules", index)
            tenant = raw.get("tenant")
            if isinstance(tenant, str) and tenant not in tenants:
                self.resolution.unknown((*loc, "tenant"), "tenant", tenant, tenants)
            self._streams(index, raw, loc)
            self.predicates[(*loc, "filter")] = self.resolution.filter(raw.get("filter"), (*loc, "filter"))
            mutes = raw.get("mute")
            for m, mute in enumerate(mutes if isinstance(mutes, list) else []):
                if isinstance(mute, dict):
                    where: Loc = (*loc, "mute", m, "filter")
                    self.predicates[where] = self.resolution.filter(mute.get("filter"), where)
            dedup = raw.get("dedup")
            if isinstance(dedup, dict):
                place: Loc = (*loc, "dedup", "filter")
                self.predicates[place] = self.resolution.filter(dedup.get("filter"), place)
            queues = raw.get("queues")
            for q, queue in enumerate(queues if isinstance(queues, list) else []):
                to = queue.get("to") if isinstance(queue, dict) else None
                if isinstance(to, str) and to not in destinations:
                    self.resolution.unknown((*loc, "queues", q, "to"), "ticket destination", to, destinations)

    def _streams(self, index: int, raw: dict[str, Any], loc: Loc) -> None:
        tenant = raw.get("tenant") if isinstance(raw.get("tenant"), str) else "?"
        found: list[StreamKey] = []
        for kind in DATA_KINDS:
            names = raw.get(kind) or []
            for i, name in enumerate(names if isinstance(names, list) else []):
                if not isinstance(name, str):
                    continue
                try:
                    found.append(StreamKey(str(tenant), kind, normalise_subtype(kind, name)))
                except ValueError as exc:
                    self.problems.append(self.source.problem((*loc, kind, i), str(exc)))
        if not found and isinstance(raw.get("name"), str):
            self.problems.append(
                self.source.problem(
                    loc, "the rule reads nothing", hint="list subtypes under `alerts:` and/or `events:`"
                )
            )
        self.streams[index] = tuple(dict.fromkeys(found))

    def build(self, section: Tickets) -> TicketPlan:
        """The validated ``section`` resolved (when :meth:`check` found nothing)."""
        raw_destinations = dict(self.raw("destinations"))
        raw_rules = dict(self.raw("rules"))
        destinations: dict[str, ResolvedDestination] = {}
        for index, destination in enumerate(section.destinations):
            info, options = self.plugins[index]
            destinations[destination.name] = ResolvedDestination(
                destination, info, options, digest([raw_destinations.get(index), info.version])
            )
        rules: dict[str, ResolvedRule] = {}
        for index, rule in enumerate(section.rules):
            loc: Loc = ("tickets", "rules", index)
            mutes = tuple(
                ResolvedMute(
                    m.name,
                    as_aware(m.start).timestamp(),
                    as_aware(m.end).timestamp(),
                    self.predicates.get((*loc, "mute", i, "filter")),
                    m.reason,
                )
                for i, m in enumerate(rule.mute)
            )
            rules[rule.name] = ResolvedRule(
                rule,
                self.streams.get(index, ()),
                self.predicates.get((*loc, "filter")),
                mutes,
                self.predicates.get((*loc, "dedup", "filter")),
                digest([raw_rules.get(index)]),
            )
        return TicketPlan(section, destinations, rules)
