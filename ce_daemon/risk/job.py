"""The risk exchange as a job: the ``risk:`` section, its tables and components, ``status``, metrics and
``ce-daemon risk``.

Components (each a unit of its own, leased to one node when several share the state database): one
poller per enabled source (``risk_source:<name>``: a ``risk_source`` plugin, or Netskope's UBA alerts
read from the spool) and the evaluator (``risk:evaluator``: recompute, snapshot, rules, actions).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ce_daemon.config.source import Loc, Source
from ce_daemon.jobs import Job, Resolution, SubParsers
from ce_daemon.keys import ComponentKey, StreamKey
from ce_daemon.pipeline import ComponentSpec
from ce_daemon.registry import PluginInfo, Registry
from ce_daemon.risk.resolve import RiskPlan, RiskResolver
from ce_daemon.risk.settings import Risk
from ce_daemon.risk.store import RISK_MIGRATIONS, RiskStore

if TYPE_CHECKING:
    from ce_daemon.api import ApiRoute
    from ce_daemon.config.load import LoadedPipeline
    from ce_daemon.dashboard import Page
    from ce_daemon.metrics import Metrics
    from ce_daemon.pipeline import Runtime

_PLUGIN_KINDS = {"sources": "risk_source", "actions": "risk_action"}


class RiskJob(Job[Risk, RiskPlan]):
    """Score users, devices and applications across sources, and act when their risk changes."""

    name = "risk"
    section = Risk
    migrations = RISK_MIGRATIONS

    def resolve(self, resolution: Resolution, section: Risk | None) -> RiskPlan | None:
        resolver = RiskResolver(resolution)
        resolver.check()
        if section is None or resolution.problems:
            return None
        return resolver.build(section)

    def streams(self, resolved: RiskPlan) -> Iterable[StreamKey]:
        return [stream for source in resolved.enabled_sources() for stream in source.streams]

    def plan(self, loaded: LoadedPipeline, resolved: RiskPlan, runtime: Runtime) -> Iterable[ComponentSpec]:
        from ce_daemon.plugin import PluginContext
        from ce_daemon.risk.components import Evaluator, NetskopeUba, RiskPoller, log

        names = list(resolved.sources)
        for source in resolved.enabled_sources():
            key = ComponentKey("risk_source", source.config.name)
            context = PluginContext(
                source.config.name, loaded.base_dir, runtime.data_dir, log.bind(component=str(key))
            )

            def build(source: Any = source, key: ComponentKey = key, context: Any = context) -> Any:
                if source.plugin is None:
                    return NetskopeUba(str(key), source, runtime)
                return RiskPoller(str(key), source, runtime, context=context, interval=source.config.interval)

            yield ComponentSpec(
                key=key,
                fingerprint=source.fingerprint,
                stage="consumer" if source.streams else "other",
                build=build,
                place=("risk", "sources", names.index(source.config.name)),
                consumes=frozenset(str(s) for s in source.streams) if source.streams else None,
            )
        if resolved.sources or resolved.rules:
            key = ComponentKey("risk", "evaluator")
            yield ComponentSpec(
                key=key,
                fingerprint=resolved.fingerprint,
                stage="other",
                build=lambda: Evaluator(str(key), resolved, runtime, loaded.base_dir),
                place=("risk",),
            )

    def inactive(self, source: Source) -> set[Loc]:
        found: set[Loc] = set()
        entries = source.value_at(("risk", "sources"))
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict) and entry.get("enabled") is False:
                found.add(("risk", "sources", index))
        return found

    def options_model(
        self, source: Source, registry: Registry, loc: Loc
    ) -> tuple[type[BaseModel] | None, Loc] | None:
        """Inside ``risk.sources[i].plugin``, ``risk.actions[i].plugin`` or ``.notify``, or a rule's own
        action's."""
        if loc[:1] != ("risk",) or len(loc) < 4:
            return None
        if loc[1] in _PLUGIN_KINDS and loc[3] == "plugin" and len(loc) >= 5:
            kind, base = _PLUGIN_KINDS[str(loc[1])], loc[:4]
        elif loc[1] == "actions" and loc[3] == "notify" and len(loc) >= 5:
            kind, base = "ticket_sink", loc[:4]
        elif loc[1] == "rules" and len(loc) >= 7 and loc[3] == "actions" and loc[5] in ("plugin", "notify"):
            kind, base = ("risk_action" if loc[5] == "plugin" else "ticket_sink"), loc[:6]
        else:
            return None
        rest = loc[len(base) :]
        if rest == ("type",):
            return None
        type_name = source.value_at((*base, "type"))
        info = registry.get(kind, type_name) if isinstance(type_name, str) else None
        if info is None or info.cls is None:
            return None, ()
        return info.cls.Options, rest

    def dashboard_pages(self) -> Iterable[Page]:
        from ce_daemon.risk.pages import risk_pages

        return risk_pages()

    def api_routes(self) -> Iterable[ApiRoute]:
        from ce_daemon.risk.api import risk_routes

        return risk_routes()

    def plugins(self, resolved: RiskPlan) -> Iterable[PluginInfo]:
        found = [s.plugin for s in resolved.sources.values() if s.plugin is not None]
        return found + [a.plugin for a in resolved.actions.values()]

    def secret_holders(self, resolved: RiskPlan) -> Iterable[object]:
        found: list[object] = [s.options for s in resolved.sources.values() if s.options is not None]
        return found + [a.options for a in resolved.actions.values()]

    def summary(self, resolved: RiskPlan) -> str | None:
        if not (resolved.sources or resolved.rules):
            return None
        return (
            f"{len(resolved.sources)} risk source(s), {len(resolved.rules)} risk rule(s),"
            f" {len(resolved.actions)} risk action(s)"
        )

    async def status(self, loaded: LoadedPipeline, resolved: RiskPlan, runtime: Runtime) -> dict[str, Any]:
        """Entities per type and band, each source's last error and staleness, actions waiting."""
        from ce_daemon.risk.metrics import RiskMetrics

        risk = RiskStore(runtime.store)
        bands = await risk.band_counts()
        outcomes = await risk.outcome_counts()
        freshness = await risk.source_freshness()
        stale_after = {n: s.config.stale_after for n, s in resolved.sources.items()}
        runtime.metrics.own(RiskMetrics).update(bands, outcomes, freshness, stale_after)
        summary: dict[str, Any] = {}
        for kind, band, n, _ in bands:
            summary[f"{kind}s_{band}"] = n
        now = time.time()
        for row in await risk.sources():
            if row.error:
                summary[f"source_{row.source}_error"] = row.error[:200]
        for name, limit in stale_after.items():
            newest = freshness.get(name)
            if newest is not None and now - newest > limit:
                summary[f"source_{name}_stale_days"] = round((now - newest) / 86_400, 1)
        waiting = {o: n for _, o, n in outcomes if o in ("pending_approval", "deferred", "failed")}
        for outcome, n in sorted(waiting.items()):
            summary[f"actions_{outcome}"] = summary.get(f"actions_{outcome}", 0) + n
        return summary

    def register_metrics(self, metrics: Metrics) -> None:
        from ce_daemon.risk.metrics import RiskMetrics

        metrics.own(RiskMetrics)

    def add_commands(self, commands: SubParsers[argparse.ArgumentParser]) -> None:
        """``ce-daemon risk entities|show|trend|actions|approve|what-if``."""
        risk = commands.add_parser(
            "risk",
            help="risk scores of users, devices and applications, their trend, actions",
            description="The risk exchange, read from the state database.",
        )
        actions = risk.add_subparsers(dest="action", required=True)
        types = ["user", "device", "application"]
        entities = actions.add_parser("entities", help="entities with their combined and per-source scores")
        entities.add_argument("--type", choices=types)
        entities.add_argument("--band", choices=["critical", "high", "medium", "low", "none"])
        entities.add_argument("--source", help="only entities this source scores")
        entities.add_argument("--limit", type=int, default=100)
        show = actions.add_parser("show", help="one entity: per-source scores, combined score, history")
        show.add_argument("key", help="the e-mail, host id or application name")
        show.add_argument("--type", choices=types, default="user")
        show.add_argument("--limit", type=int, default=50, help="history entries shown")
        trend = actions.add_parser(
            "trend", aliases=["history"], help="daily averages per type, with delta and trend"
        )
        trend.add_argument("--days", type=int, help="the window in days (default 30)")
        log = actions.add_parser("actions", help="the action log")
        log.add_argument("--rule")
        log.add_argument("--key")
        log.add_argument("--outcome", action="append", help="only this outcome (repeatable)")
        log.add_argument("--limit", type=int, default=100)
        approve = actions.add_parser("approve", help="approve (or decline) actions awaiting approval")
        approve.add_argument("ids", type=int, nargs="*", help="action-log ids (see `risk actions`)")
        approve.add_argument("--all", action="store_true", help="every pending action")
        approve.add_argument("--decline", action="store_true")
        whatif = actions.add_parser(
            "what-if", aliases=["whatif"], help="how each band's share would move with other weights"
        )
        whatif.add_argument("--weight", action="append", metavar="SOURCE=W", help="a source's new weight")
        whatif.add_argument("--type", choices=types)
        for action in {id(a): a for a in actions.choices.values()}.values():
            action.add_argument("-c", "--config", type=Path, required=True, help="the pipeline YAML file")
            action.add_argument("--json", action="store_true", help="print JSON")
        risk.set_defaults(func=_cmd_risk)


def _cmd_risk(args: argparse.Namespace) -> int:
    import asyncio
    import os
    import sys

    from ce_daemon import applog
    from ce_daemon.risk.commands import risk_command

    applog.configure(fmt="console")
    args.action = _ALIASES.get(args.action, args.action)
    if args.action == "what-if":
        from ce_daemon.config.load import load_pipeline
        from ce_daemon.errors import ConfigError
        from ce_daemon.registry import Registry

        try:
            loaded = load_pipeline(args.config, Registry.discover())
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return os.EX_CONFIG
        return asyncio.run(risk_command(args, loaded.config.state, RiskJob().settings(loaded.config)))
    from ce_daemon.config.locate import locate_state

    located = locate_state(args.config)
    if located is None:
        return os.EX_CONFIG
    return asyncio.run(risk_command(args, located[1], None))


_ALIASES = {"history": "trend", "whatif": "what-if"}
"""The issue's names for two commands."""
