"""Resolving the ``threats:`` section: each source's and destination's plugin, each rule's references.

Everything is checked before anything runs, each problem at its place in the file: plugins and
their options, Netskope sources' tenants, rules naming destinations and sources that exist, types
a destination takes, filters. What comes out (:class:`ThreatPlan`) is what the components are
built from, each part with a fingerprint of its raw settings for reload by diff.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ce_daemon.config.load import digest, unique_names
from ce_daemon.config.source import Loc
from ce_daemon.filter import Predicate
from ce_daemon.jobs import Resolution
from ce_daemon.keys import StreamKey
from ce_daemon.plugin import PluginOptions
from ce_daemon.registry import PluginInfo
from ce_daemon.threats.settings import Destination, SharingRule, Source, Threats

__all__ = ["ResolvedDestination", "ResolvedRule", "ResolvedSource", "ThreatPlan", "ThreatResolver"]


@dataclass(frozen=True)
class ResolvedSource:
    """A source with its plugin and options (None for a Netskope tenant's alerts)."""

    config: Source
    plugin: PluginInfo | None
    options: PluginOptions | None
    streams: tuple[StreamKey, ...]
    fingerprint: str


@dataclass(frozen=True)
class ResolvedRule:
    """A sharing rule with its compiled filter."""

    config: SharingRule
    predicate: Predicate | None
    fingerprint: str


@dataclass(frozen=True)
class ResolvedDestination:
    """A destination with its plugin, options and the enabled rules that feed it, in file order."""

    config: Destination
    plugin: PluginInfo
    options: PluginOptions
    rules: tuple[ResolvedRule, ...]
    fingerprint: str


@dataclass(frozen=True)
class ThreatPlan:
    """The ``threats:`` section resolved."""

    settings: Threats
    sources: dict[str, ResolvedSource]
    destinations: dict[str, ResolvedDestination]
    fingerprint: str
    """Of the whole section's policy (trust, allowlist, guards, lifetimes): every sharer reads it."""

    def enabled_sources(self) -> list[ResolvedSource]:
        """The sources that are polled."""
        return [s for s in self.sources.values() if s.config.enabled]

    def enabled_destinations(self) -> list[ResolvedDestination]:
        """The destinations that are pushed to."""
        return [d for d in self.destinations.values() if d.config.enabled]


class ThreatResolver:
    """The checks of ``threats:`` beyond its model."""

    def __init__(self, resolution: Resolution) -> None:
        self.resolution = resolution
        self.source = resolution.source
        self.problems = resolution.problems
        self.plugins: dict[Loc, tuple[PluginInfo, PluginOptions]] = {}
        self.predicates: dict[Loc, Predicate | None] = {}

    def raw(self, key: str) -> list[tuple[int, dict[str, Any]]]:
        """The raw entries of ``threats.<key>`` that are mappings, with their index."""
        return self.resolution.entries("threats", key)

    def check(self) -> None:
        """Check every raw source, destination and rule, each problem placed."""
        for key in ("sources", "destinations", "sharing"):
            self.problems.extend(unique_names(self.source, ("threats", key)))
        tenants = self.resolution.tenants()
        for index, raw in self.raw("sources"):
            loc: Loc = ("threats", "sources", index)
            if "plugin" in raw:
                self._plugin("threat_source", raw["plugin"], (*loc, "plugin"), "threat source")
            netskope = raw.get("netskope")
            tenant = netskope.get("tenant") if isinstance(netskope, dict) else None
            if isinstance(tenant, str) and tenant not in tenants:
                self.resolution.unknown(
                    (*loc, "netskope", "tenant"), "tenant", tenant, [str(t) for t in tenants]
                )
        sources = [str(raw.get("name")) for _, raw in self.raw("sources")]
        destinations = {str(raw.get("name")): (index, raw) for index, raw in self.raw("destinations")}
        for index, raw in destinations.values():
            echo = raw.get("echo_of")
            if isinstance(echo, str) and echo not in sources:
                self.resolution.unknown(
                    ("threats", "destinations", index, "echo_of"), "source", echo, sources
                )
            self._plugin(
                "threat_sink",
                raw.get("plugin"),
                ("threats", "destinations", index, "plugin"),
                "threat destination",
            )
        self._idle(destinations)
        self._rules(sources, destinations)

    def _idle(self, destinations: dict[str, tuple[int, dict[str, Any]]]) -> None:
        """Warn of an enabled destination no enabled rule feeds (valid, but probably not meant)."""
        fed = {raw.get("to") for _, raw in self.raw("sharing") if raw.get("enabled") is not False}
        for name, (index, raw) in destinations.items():
            if name not in fed and raw.get("enabled") is not False:
                self.resolution.warnings.append(
                    self.source.problem(
                        ("threats", "destinations", index),
                        f"no sharing rule feeds destination {name!r}: nothing is pushed to it",
                        hint="add a rule under threats.sharing with `to: " + name + "`",
                    )
                )

    def _rules(self, sources: list[str], destinations: dict[str, tuple[int, dict[str, Any]]]) -> None:
        for index, raw in self.raw("sharing"):
            loc: Loc = ("threats", "sharing", index)
            self.predicates[loc] = self.resolution.filter(raw.get("filter"), (*loc, "filter"))
            to = raw.get("to")
            if isinstance(to, str) and to not in destinations:
                self.resolution.unknown((*loc, "to"), "destination", to, list(destinations))
            elif isinstance(to, str) and destinations[to][1].get("enabled") is False:
                self.resolution.warnings.append(
                    self.source.problem(
                        (*loc, "to"), f"destination {to!r} is disabled: this rule shares nothing"
                    )
                )
            named = raw.get("sources")
            for i, name in enumerate(named if isinstance(named, list) else []):
                if isinstance(name, str) and name not in sources:
                    self.resolution.warnings.append(
                        self.source.problem(
                            (*loc, "sources", i),
                            f"no source named {name!r} is polled: only indicators already stored under"
                            " that name (`iocs import`) count",
                        )
                    )
            self._types(raw, loc, destinations.get(to) if isinstance(to, str) else None)

    def _plugin(self, kind: str, raw: object, loc: Loc, what: str) -> None:
        resolved = self.resolution.plugin(kind, raw, loc, what)
        if resolved is not None:
            self.plugins[loc] = resolved

    def _types(self, raw: dict[str, Any], loc: Loc, destination: tuple[int, dict[str, Any]] | None) -> None:
        """A rule asking for types its destination never takes is refused (it would share nothing)."""
        if destination is None:
            return
        plugin = self.plugins.get(("threats", "destinations", destination[0], "plugin"))
        types = raw.get("types")
        if plugin is None or plugin[0].cls is None or not isinstance(types, list):
            return
        takes = _takes(plugin[0])
        for i, kind in enumerate(types):
            if isinstance(kind, str) and takes and kind not in takes:
                self.problems.append(
                    self.source.problem(
                        (*loc, "types", i),
                        f"destination {destination[1].get('name')!r} does not take {kind!r} indicators",
                        hint=f"it takes: {', '.join(sorted(takes))}",
                    )
                )

    def build(self, section: Threats) -> ThreatPlan:
        """The validated ``section`` resolved (when :meth:`check` found nothing)."""
        raw_sources = dict(self.raw("sources"))
        raw_destinations = dict(self.raw("destinations"))
        raw_rules = dict(self.raw("sharing"))
        raw_section = self.source.value_at(("threats",))
        section_raw = raw_section if isinstance(raw_section, dict) else {}
        policy = digest([{k: v for k, v in section_raw.items() if k not in _PARTS}])
        sources: dict[str, ResolvedSource] = {}
        for index, source in enumerate(section.sources):
            plugin = self.plugins.get(("threats", "sources", index, "plugin"))
            streams: tuple[StreamKey, ...] = ()
            if source.netskope is not None:
                streams = tuple(
                    StreamKey(source.netskope.tenant, "alerts", a) for a in source.netskope.alerts
                )
            sources[source.name] = ResolvedSource(
                source,
                plugin[0] if plugin else None,
                plugin[1] if plugin else None,
                streams,
                digest([raw_sources.get(index), plugin[0].version if plugin else "", policy]),
            )
        rules: dict[str, list[ResolvedRule]] = {}
        for index, rule in enumerate(section.sharing):
            if not rule.enabled:
                continue
            rules.setdefault(rule.to, []).append(
                ResolvedRule(
                    rule, self.predicates.get(("threats", "sharing", index)), digest([raw_rules.get(index)])
                )
            )
        destinations: dict[str, ResolvedDestination] = {}
        for index, destination in enumerate(section.destinations):
            info, options = self.plugins[("threats", "destinations", index, "plugin")]
            feeding = tuple(rules.get(destination.name, ()))
            destinations[destination.name] = ResolvedDestination(
                destination,
                info,
                options,
                feeding,
                digest([raw_destinations.get(index), info.version, policy, [r.fingerprint for r in feeding]]),
            )
        return ThreatPlan(section, sources, destinations, policy)


_PARTS = ("sources", "destinations", "sharing")
"""The section's keys that are not policy (each part's own fingerprint covers them)."""


def _takes(info: PluginInfo) -> frozenset[str]:
    """The types a destination plugin takes, as its class declares them (instances may narrow them)."""
    types: object = getattr(info.cls, "types", frozenset())
    return frozenset(str(t) for t in types) if isinstance(types, frozenset) else frozenset()
