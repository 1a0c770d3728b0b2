"""Resolving the ``risk:`` section: each source's and action's plugin, each rule's filter and references.

Every problem is reported at its place before anything runs. What comes out (:class:`RiskPlan`) is
what the components are built from, each part with a fingerprint of its raw settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ce_daemon.config.load import digest, unique_names
from ce_daemon.config.source import Loc
from ce_daemon.filter import Predicate
from ce_daemon.jobs import Resolution
from ce_daemon.keys import StreamKey
from ce_daemon.plugin import PluginOptions, RiskScale
from ce_daemon.registry import PluginInfo
from ce_daemon.risk.engine import RuleSpec, SourceWeight
from ce_daemon.risk.netskope import reader_for
from ce_daemon.risk.settings import Risk, RiskRule, RiskSourceConfig

__all__ = ["ResolvedAction", "ResolvedRiskSource", "RiskPlan", "RiskResolver"]


@dataclass(frozen=True)
class ResolvedRiskSource:
    """A source with its plugin, options and effective scale (None plugin: a Netskope tenant's stream)."""

    config: RiskSourceConfig
    plugin: PluginInfo | None
    options: PluginOptions | None
    scale: RiskScale
    streams: tuple[StreamKey, ...]
    fingerprint: str

    def weight(self) -> SourceWeight:
        return SourceWeight(self.config.name, self.config.weight, self.config.stale_after)


@dataclass(frozen=True)
class ResolvedAction:
    """A named action: its plugin and options."""

    name: str
    plugin: PluginInfo
    """A ``risk_action`` plugin, or for a notification the ``ticket_sink`` it goes through."""
    options: PluginOptions
    fingerprint: str
    notify: bool = False


@dataclass(frozen=True)
class RiskPlan:
    """The ``risk:`` section resolved."""

    settings: Risk
    sources: dict[str, ResolvedRiskSource]
    actions: dict[str, ResolvedAction]
    rules: tuple[RuleSpec, ...]
    fingerprint: str
    """Of everything the evaluator reads (weights, rules, actions, maintenance, combine)."""

    def enabled_sources(self) -> list[ResolvedRiskSource]:
        return [s for s in self.sources.values() if s.config.enabled]

    def weights(self) -> dict[str, SourceWeight]:
        """Every source's weight and staleness, by name (disabled sources too: their stored scores count
        until stale)."""
        return {name: source.weight() for name, source in self.sources.items()}


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class RiskResolver:
    """The checks of ``risk:`` beyond its model."""

    def __init__(self, resolution: Resolution) -> None:
        self.resolution = resolution
        self.source = resolution.source
        self.problems = resolution.problems
        self.plugins: dict[Loc, tuple[PluginInfo, PluginOptions]] = {}
        self.predicates: dict[Loc, Predicate | None] = {}

    def raw(self, key: str) -> list[tuple[int, dict[str, Any]]]:
        """The raw entries of ``risk.<key>`` that are mappings, with their index."""
        return self.resolution.entries("risk", key)

    def check(self) -> None:
        for key in ("sources", "rules", "actions"):
            self.problems.extend(unique_names(self.source, ("risk", key)))
        tenants = self.resolution.tenants()
        for index, raw in self.raw("sources"):
            loc: Loc = ("risk", "sources", index)
            if "plugin" in raw:
                self._plugin("risk_source", raw["plugin"], (*loc, "plugin"), "risk source")
            netskope = raw.get("netskope")
            tenant = netskope.get("tenant") if isinstance(netskope, dict) else None
            if isinstance(tenant, str) and tenant not in tenants:
                self.resolution.unknown((*loc, "netskope", "tenant"), "tenant", tenant, tenants)
        named = {}
        for index, raw in self.raw("actions"):
            named[str(raw.get("name"))] = self._action(raw, ("risk", "actions", index))
        for index, raw in self.raw("rules"):
            loc = ("risk", "rules", index)
            self.predicates[loc] = self.resolution.filter(raw.get("filter"), (*loc, "filter"))
            entity = raw.get("entity", "user")
            actions = raw.get("actions")
            for i, action in enumerate(actions if isinstance(actions, list) else []):
                where: Loc = (*loc, "actions", i)
                plugin_loc: Loc
                if isinstance(action, str):
                    if action not in named:
                        self.resolution.unknown(where, "action", action, list(named))
                        continue
                    plugin_loc = named[action]
                elif isinstance(action, dict):
                    plugin_loc = self._action(action, where)
                else:
                    continue
                self._acts_on(where, plugin_loc, entity)

    def _action(self, raw: dict[str, Any], loc: Loc) -> Loc:
        """Resolve the action at ``loc`` (a plugin, or a notification's destination); where its plugin is."""
        if "notify" in raw and "plugin" not in raw:
            where: Loc = (*loc, "notify")
            self._plugin("ticket_sink", raw["notify"], where, "notification destination")
            return where
        where = (*loc, "plugin")
        self._plugin("risk_action", raw.get("plugin"), where, "risk action")
        return where

    def _acts_on(self, where: Loc, plugin_loc: Loc, entity: object) -> None:
        resolved = self.plugins.get(plugin_loc)
        if plugin_loc[-1] == "notify":
            return  # a notification is about any entity
        if resolved is None or resolved[0].cls is None or not isinstance(entity, str):
            return
        entities: object = getattr(resolved[0].cls, "entities", frozenset())
        if isinstance(entities, frozenset) and entities and entity not in entities:
            self.problems.append(
                self.source.problem(
                    where,
                    f"the {resolved[0].name!r} action does not act on {entity} entities",
                    hint=f"it acts on: {', '.join(sorted(str(e) for e in entities))}",
                )
            )

    def _plugin(self, kind: str, raw: object, loc: Loc, what: str) -> None:
        resolved = self.resolution.plugin(kind, raw, loc, what)
        if resolved is not None:
            self.plugins[loc] = resolved

    def build(self, section: Risk) -> RiskPlan:
        raw_sources = dict(self.raw("sources"))
        raw_actions = dict(self.raw("actions"))
        raw_rules = dict(self.raw("rules"))
        sources: dict[str, ResolvedRiskSource] = {}
        for index, source in enumerate(section.sources):
            plugin = self.plugins.get(("risk", "sources", index, "plugin"))
            streams: tuple[StreamKey, ...] = ()
            if source.netskope is not None:
                reader = reader_for(source.netskope)
                streams = (reader.stream(source.netskope.tenant),)
                scale = reader.scale
            else:
                declared = getattr(plugin[0].cls, "scale", None) if plugin else None
                scale = declared if isinstance(declared, RiskScale) else RiskScale()
            if source.scale is not None:
                scale = source.scale.scale()
            sources[source.name] = ResolvedRiskSource(
                source, plugin[0] if plugin else None, plugin[1] if plugin else None, scale, streams,
                digest([raw_sources.get(index), plugin[0].version if plugin else ""]),
            )  # fmt: skip
        actions: dict[str, ResolvedAction] = {}
        for index, action in enumerate(section.actions):
            kind = "notify" if action.notify is not None else "plugin"
            info, options = self.plugins[("risk", "actions", index, kind)]
            actions[action.name] = ResolvedAction(
                action.name, info, options, digest([raw_actions.get(index), info.version]), kind == "notify"
            )
        rules: list[RuleSpec] = []
        for index, rule in enumerate(section.rules):
            names: list[str] = []
            for i, entry in enumerate(rule.actions):
                if isinstance(entry, str):
                    names.append(entry)
                    continue
                action = entry
                name = f"{rule.name}/{action.name}"
                kind = "notify" if action.notify is not None else "plugin"
                info, options = self.plugins[("risk", "rules", index, "actions", i, kind)]
                raw_rule = raw_rules.get(index, {})
                actions[name] = ResolvedAction(
                    name, info, options, digest([raw_rule.get("actions", [])[i], info.version]),
                    kind == "notify",
                )  # fmt: skip
                names.append(name)
            rules.append(_rule(rule, self.predicates.get(("risk", "rules", index)), tuple(names)))
        section_raw = self.source.value_at(("risk",))
        fingerprint = digest([
            dict(section_raw) if isinstance(section_raw, dict) else {},
            [a.fingerprint for a in actions.values()],
        ])  # fmt: skip
        return RiskPlan(section, sources, actions, tuple(rules), fingerprint)


def _rule(rule: RiskRule, predicate: Predicate | None, actions: tuple[str, ...]) -> RuleSpec:
    return RuleSpec(
        rule.name, rule.entity, predicate, actions, rule.flap_suppression, _epoch(rule.muted_until),
        rule.require_approval, rule.enabled,
    )  # fmt: skip
