"""Resolving ``logs.routes``: each route's streams, sink plugin and options, filter, mutes and mapping.

Everything is checked before anything runs, each problem at its place in the file; what comes out
(:class:`ResolvedRoute`) is what a route component is built from.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ce_daemon.config.load import digest, unique_names
from ce_daemon.config.source import Loc
from ce_daemon.jobs import Resolution
from ce_daemon.keys import StreamKey
from ce_daemon.logs.mapping import Mapping as LogMapping
from ce_daemon.logs.mapping import MappingError, parse_json_fields
from ce_daemon.logs.settings import Logs, Route
from ce_daemon.netskope.subtypes import DATA_KINDS, normalise_subtype
from ce_daemon.plugin import PluginOptions
from ce_daemon.registry import PluginInfo

Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class Mute:
    """A resolved mute window."""

    name: str
    start: float
    end: float
    predicate: Predicate | None
    filter: Any = None
    """The filter spec ``predicate`` was compiled from (a format worker compiles it again)."""


@dataclass(frozen=True)
class ResolvedRoute:
    """A log route with everything resolved: its streams, filter, mapping and sink."""

    config: Route
    streams: tuple[StreamKey, ...]
    predicate: Predicate | None
    mutes: tuple[Mute, ...]
    mapping: LogMapping
    sink: PluginInfo
    sink_options: PluginOptions
    fingerprint: str


class RouteResolver:
    """The checks of ``logs.routes`` that need more than the model: plugins, filters, subtypes, mappings,
    references to tenants."""

    def __init__(self, resolution: Resolution) -> None:
        self.resolution = resolution
        self.source = resolution.source
        self.registry = resolution.registry
        self.problems = resolution.problems
        self.warnings = resolution.warnings
        self.sinks: dict[int, tuple[PluginInfo, PluginOptions]] = {}
        self.predicates: dict[Loc, Predicate | None] = {}
        self.streams: dict[int, tuple[StreamKey, ...]] = {}
        self.mappings: dict[int, LogMapping] = {}

    def raw_routes(self) -> list[tuple[int, dict[str, Any]]]:
        data = self.source.data
        logs = data.get("logs") if isinstance(data, dict) else None
        routes = logs.get("routes") if isinstance(logs, dict) else None
        if not isinstance(routes, list):
            return []
        return [(i, r) for i, r in enumerate(routes) if isinstance(r, dict)]

    def check_routes(self) -> None:
        """Check every raw route, each problem placed (the model's own are reported apart)."""
        data = self.source.data
        tenants = (
            [t.get("name") for t in (data.get("tenants") or []) if isinstance(t, dict)]
            if isinstance(data.get("tenants"), list)
            else []
        )
        routes = self.raw_routes()
        self.problems.extend(unique_names(self.source, ("logs", "routes")))
        for index, raw in routes:
            loc: Loc = ("logs", "routes", index)
            tenant = raw.get("tenant")
            if isinstance(tenant, str) and tenants and tenant not in tenants:
                close = difflib.get_close_matches(tenant, [str(t) for t in tenants], n=1)
                self.problems.append(
                    self.source.problem(
                        (*loc, "tenant"),
                        f"no tenant named {tenant!r}",
                        hint=(f"did you mean {close[0]!r}? " if close else "")
                        + f"tenants: {', '.join(map(str, tenants))}",
                    )
                )
            self._streams(index, raw, loc)
            self._sink(index, raw.get("sink"), (*loc, "sink"))
            self.predicates[(*loc, "filter")] = self._filter(raw.get("filter"), (*loc, "filter"))
            mutes = raw.get("mute")
            for m, mute in enumerate(mutes if isinstance(mutes, list) else []):
                if isinstance(mute, dict):
                    self.predicates[(*loc, "mute", m)] = self._filter(
                        mute.get("filter"), (*loc, "mute", m, "filter")
                    )
            self._mapping(index, raw, loc)
            self._fields(raw, loc)

    def _streams(self, index: int, raw: dict[str, Any], loc: Loc) -> None:
        tenant = raw.get("tenant") if isinstance(raw.get("tenant"), str) else "?"
        found: list[StreamKey] = []
        for kind in DATA_KINDS:
            names = raw.get(kind) or []
            if not isinstance(names, list):
                continue
            for i, name in enumerate(names):
                if not isinstance(name, str):
                    continue
                try:
                    found.append(StreamKey(str(tenant), kind, normalise_subtype(kind, name)))
                except ValueError as exc:
                    self.problems.append(self.source.problem((*loc, kind, i), str(exc)))
        if not found and isinstance(raw.get("name"), str):
            self.problems.append(
                self.source.problem(
                    loc,
                    "the route reads nothing",
                    hint="list subtypes under `alerts:` and/or `events:` (e.g. alerts: [dlp])",
                )
            )
        self.streams[index] = tuple(dict.fromkeys(found))

    def _sink(self, index: int, raw: object, loc: Loc) -> None:
        resolved = self.resolution.plugin("log_sink", raw, loc, "log sink")
        if resolved is not None:
            self.sinks[index] = resolved

    def _filter(self, spec: object, loc: Loc) -> Predicate | None:
        return self.resolution.filter(spec, loc)

    def _fields(self, raw: dict[str, Any], loc: Loc) -> None:
        fields = raw.get("fields")
        if fields is None:
            return
        if raw.get("format", "cef") != "json":
            self.problems.append(
                self.source.problem((*loc, "fields"), "`fields` applies to `format: json` only")
            )
            return
        try:
            parse_json_fields(fields, source=self.source.file)
        except MappingError as exc:
            for problem in exc.problems:
                self.problems.append(self.source.problem((*loc, "fields"), str(problem)))

    def _mapping(self, index: int, raw: dict[str, Any], loc: Loc) -> None:
        name = raw.get("mapping", "netskope")
        if not isinstance(name, str):
            return
        try:
            if "/" in name or name.endswith(".json"):
                path = Path(name)
                mapping = LogMapping.load(
                    path if path.is_absolute() else Path(self.source.file).parent / path
                )
            else:
                mapping = LogMapping.builtin(name)
        except MappingError as exc:
            for problem in exc.problems:
                # said as the mapping file's own place (file:line:col: json.path: message), hint apart
                where = dataclasses.replace(problem, hint=None).render()
                self.problems.append(self.source.problem((*loc, "mapping"), where, hint=problem.hint))
            return
        except (OSError, ValueError) as exc:
            self.problems.append(
                self.source.problem((*loc, "mapping"), f"cannot load mapping {name!r}: {exc}")
            )
            return
        if raw.get("format", "cef") != "json":
            for stream in self.streams.get(index, ()):
                if not mapping.covers(stream.kind, stream.subtype):
                    self.problems.append(
                        self.source.problem(
                            (*loc, "mapping"),
                            f"mapping {name!r} has no taxonomy for {stream.kind} {stream.subtype!r}",
                            hint="add it to the mapping file, or use the built-in `netskope` mapping",
                        )
                    )
        self.mappings[index] = mapping

    def build_routes(self, section: Logs) -> dict[str, ResolvedRoute]:
        """Every route of the validated ``section``, resolved (when :meth:`check_routes` found nothing)."""
        routes: dict[str, ResolvedRoute] = {}
        raw_routes = dict(self.raw_routes())
        for index, route in enumerate(section.routes):
            loc: Loc = ("logs", "routes", index)
            sink, options = self.sinks[index]
            mutes = tuple(
                Mute(
                    m.name,
                    m.start.timestamp(),
                    m.end.timestamp(),
                    self.predicates.get((*loc, "mute", i)),
                    m.filter,
                )
                for i, m in enumerate(route.mute)
            )
            mapping = self.mappings[index]
            routes[route.name] = ResolvedRoute(
                config=route,
                streams=self.streams[index],
                predicate=self.predicates.get((*loc, "filter")),
                mutes=mutes,
                mapping=mapping,
                sink=sink,
                sink_options=options,
                fingerprint=digest([raw_routes.get(index), mapping.fingerprint, sink.version]),
            )
        return routes
