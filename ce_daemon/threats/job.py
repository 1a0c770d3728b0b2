"""The threat exchange as a job: the ``threats:`` section, its tables and components, ``status``,
metrics and ``iocs``.

Components (each a unit of its own, leased to one node when several share the state database): one
poller per enabled source (``threat_source:<name>``: a ``threat_source`` plugin, or Netskope's
Malware and malsite alerts read from the spool), one sharer per enabled destination that some rule
feeds (``threat_destination:<name>``), and the ageing loop (``threats:ageing``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ce_daemon.config.source import Loc, Source
from ce_daemon.jobs import Job, Resolution, SubParsers
from ce_daemon.keys import ComponentKey, StreamKey
from ce_daemon.pipeline import ComponentSpec
from ce_daemon.registry import PluginInfo, Registry
from ce_daemon.threats.resolve import ThreatPlan, ThreatResolver
from ce_daemon.threats.settings import Threats
from ce_daemon.threats.store import THREATS_MIGRATIONS, IocStore

if TYPE_CHECKING:
    from ce_daemon.api import ApiRoute
    from ce_daemon.config.load import LoadedPipeline
    from ce_daemon.dashboard import Page
    from ce_daemon.metrics import Metrics
    from ce_daemon.pipeline import Runtime

_PLUGIN_KINDS = {"sources": "threat_source", "destinations": "threat_sink"}


class ThreatsJob(Job[Threats, ThreatPlan]):
    """Ingest, curate and share IOCs between connected systems."""

    name = "threats"
    section = Threats
    migrations = THREATS_MIGRATIONS

    def resolve(self, resolution: Resolution, section: Threats | None) -> ThreatPlan | None:
        """Check every source, destination and rule (plugins, tenants, references, filters)."""
        resolver = ThreatResolver(resolution)
        resolver.check()
        if section is None or resolution.problems:
            return None
        return resolver.build(section)

    def streams(self, resolved: ThreatPlan) -> Iterable[StreamKey]:
        """The alert streams Netskope sources read."""
        return [stream for source in resolved.enabled_sources() for stream in source.streams]

    def plan(self, loaded: LoadedPipeline, resolved: ThreatPlan, runtime: Runtime) -> Iterable[ComponentSpec]:
        """A poller per enabled source, a sharer per enabled destination with rules, the ageing loop."""
        from ce_daemon.plugin import PluginContext
        from ce_daemon.threats.components import Expirer, NetskopeIntake, Sharer, SourcePoller, log

        sources = list(resolved.sources)
        for source in resolved.enabled_sources():
            key = ComponentKey("threat_source", source.config.name)
            place: Loc = ("threats", "sources", sources.index(source.config.name))
            context = PluginContext(
                source.config.name, loaded.base_dir, runtime.data_dir, log.bind(component=str(key))
            )

            def build_source(source: Any = source, key: ComponentKey = key, context: Any = context) -> Any:
                if source.plugin is None:
                    return NetskopeIntake(str(key), source, resolved, runtime)
                return SourcePoller(
                    str(key), source, resolved, runtime, context=context, interval=source.config.interval
                )

            yield ComponentSpec(
                key=key,
                fingerprint=source.fingerprint,
                stage="consumer" if source.streams else "other",
                build=build_source,
                place=place,
                consumes=frozenset(str(s) for s in source.streams) if source.streams else None,
            )
        destinations = list(resolved.destinations)
        for destination in resolved.enabled_destinations():
            if not destination.rules:
                continue
            key = ComponentKey("threat_destination", destination.config.name)
            context = PluginContext(
                destination.config.name, loaded.base_dir, runtime.data_dir, log.bind(component=str(key))
            )

            def build_sharer(
                destination: Any = destination, key: ComponentKey = key, context: Any = context
            ) -> Any:
                return Sharer(
                    str(key),
                    destination,
                    resolved,
                    runtime,
                    context=context,
                    interval=destination.config.interval,
                )

            yield ComponentSpec(
                key=key,
                fingerprint=destination.fingerprint,
                stage="other",
                build=build_sharer,
                place=("threats", "destinations", destinations.index(destination.config.name)),
            )
        if resolved.sources or resolved.destinations:
            key = ComponentKey("threats", "ageing")
            every = resolved.settings.expire_every
            fingerprint = f"{resolved.fingerprint}:{every}"
            yield ComponentSpec(
                key=key,
                fingerprint=fingerprint,
                stage="other",
                build=lambda: Expirer(str(key), fingerprint, every, runtime),
                place=("threats",),
            )

    def inactive(self, source: Source) -> set[Loc]:
        """Disabled sources and destinations: their secrets need not resolve."""
        found: set[Loc] = set()
        for part in _PLUGIN_KINDS:
            entries = source.value_at(("threats", part))
            for index, entry in enumerate(entries if isinstance(entries, list) else []):
                if isinstance(entry, dict) and entry.get("enabled") is False:
                    found.add(("threats", part, index))
        return found

    def options_model(
        self, source: Source, registry: Registry, loc: Loc
    ) -> tuple[type[BaseModel] | None, Loc] | None:
        """Inside ``threats.sources[i].plugin`` / ``threats.destinations[i].plugin``, the plugin's options."""
        if loc[:1] != ("threats",) or len(loc) < 5 or loc[1] not in _PLUGIN_KINDS or loc[3] != "plugin":
            return None
        if loc[4:] == ("type",):
            return None
        kind = source.value_at((*loc[:4], "type"))
        info = registry.get(_PLUGIN_KINDS[str(loc[1])], kind) if isinstance(kind, str) else None
        if info is None or info.cls is None:
            return None, ()
        return info.cls.Options, loc[4:]

    def dashboard_pages(self) -> Iterable[Page]:
        from ce_daemon.threats.pages import threat_pages

        return threat_pages()

    def api_routes(self) -> Iterable[ApiRoute]:
        from ce_daemon.threats.api import threat_routes

        return threat_routes()

    def plugins(self, resolved: ThreatPlan) -> Iterable[PluginInfo]:
        """The source and destination plugins the section uses."""
        found = [s.plugin for s in resolved.sources.values() if s.plugin is not None]
        return found + [d.plugin for d in resolved.destinations.values()]

    def secret_holders(self, resolved: ThreatPlan) -> Iterable[object]:
        """Each plugin's options."""
        found: list[object] = [s.options for s in resolved.sources.values() if s.options is not None]
        return found + [d.options for d in resolved.destinations.values()]

    def summary(self, resolved: ThreatPlan) -> str | None:
        """``N threat source(s), M destination(s), K sharing rule(s)``."""
        if not (resolved.sources or resolved.destinations):
            return None
        rules = sum(len(d.rules) for d in resolved.destinations.values())
        return (
            f"{len(resolved.sources)} threat source(s), {len(resolved.destinations)} threat destination(s),"
            f" {rules} sharing rule(s)"
        )

    async def status(self, loaded: LoadedPipeline, resolved: ThreatPlan, runtime: Runtime) -> dict[str, Any]:
        """Stored IOC rows (active, inactive, per type) and each destination's list (``iocs stats``)."""
        from ce_daemon.threats.metrics import ThreatMetrics
        from ce_daemon.threats.share import ShareStore

        counts = await IocStore(runtime.store).counts()
        pushes = await ShareStore(runtime.store).pushes()
        runtime.metrics.own(ThreatMetrics).update(counts, pushes)
        summary: dict[str, Any] = {
            "iocs_active": sum(n for _, _, active, n in counts if active),
            "iocs_inactive": sum(n for _, _, active, n in counts if not active),
        }
        for kind in sorted({kind for kind, _, _, _ in counts}):
            summary[f"iocs_{kind}"] = sum(n for k, _, active, n in counts if k == kind and active)
        for push in pushes:
            summary[f"shared_{push.destination}"] = push.listed
            if push.dropped:
                summary[f"dropped_{push.destination}"] = push.dropped
        return summary

    def register_metrics(self, metrics: Metrics) -> None:
        """``ce_daemon_threat_iocs{type, source, status}`` and the destinations' list sizes."""
        from ce_daemon.threats.metrics import ThreatMetrics

        metrics.own(ThreatMetrics)

    def add_commands(self, commands: SubParsers[argparse.ArgumentParser]) -> None:
        """``ce-daemon iocs search|show|stats|import``."""
        iocs = commands.add_parser(
            "iocs",
            help="look up, count or import threat indicators",
            description="The threat exchange's IOC store, read from the state database.",
        )
        actions = iocs.add_subparsers(dest="action", required=True)
        search = actions.add_parser("search", help="IOCs by value, type, source or status")
        search.add_argument("text", nargs="?", help="a part of the value")
        search.add_argument("--type", dest="kind", help="only this type (url, domain, ipv4, sha256 …)")
        search.add_argument("--source", help="only rows of this source")
        search.add_argument("--status", choices=["active", "inactive"], help="only active or inactive rows")
        search.add_argument("--limit", type=int, default=50, help="at most this many values")
        show = actions.add_parser("show", help="one IOC: every source's word on it, merged")
        show.add_argument("value", help="the value, in any form a feed writes it (it is normalised)")
        actions.add_parser("stats", help="IOC counts by type, source and status, and each source's polls")
        load = actions.add_parser("import", help="ingest a plain-text list once, as a full-list source")
        load.add_argument("file", type=Path, help="one value a line; blank lines and # comments skipped")
        load.add_argument("--source", required=True, help="the source name its IOCs are stored under")
        for action in (search, show, actions.choices["stats"], load):
            action.add_argument("-c", "--config", type=Path, required=True, help="the pipeline YAML file")
            action.add_argument("--json", action="store_true", help="print JSON")
        iocs.set_defaults(func=_cmd_iocs)


def _cmd_iocs(args: argparse.Namespace) -> int:
    import asyncio
    import os
    import sys

    from ce_daemon import applog
    from ce_daemon.threats.commands import iocs_command

    applog.configure(fmt="console")
    if args.action == "import":
        from ce_daemon.config.load import load_pipeline
        from ce_daemon.errors import ConfigError
        from ce_daemon.registry import Registry

        try:  # the whole file: the import applies its guards and lifetimes
            loaded = load_pipeline(args.config, Registry.discover())
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return os.EX_CONFIG
        return asyncio.run(iocs_command(args, loaded.config.state, ThreatsJob().settings(loaded.config)))
    from ce_daemon.config.locate import locate_state

    located = locate_state(args.config)
    if located is None:
        return os.EX_CONFIG
    return asyncio.run(iocs_command(args, located[1], None))
