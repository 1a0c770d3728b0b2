"""The Cloud Log Shipper as a job: the ``logs:`` section, its routes, dead letters, metrics, and its commands
``dlq``, ``test`` and ``tap``."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ce_daemon.config.source import Loc, Source
from ce_daemon.jobs import Job, Resolution, SubParsers
from ce_daemon.keys import ComponentKey, StreamKey
from ce_daemon.logs.deadletter import DEADLETTER_MIGRATIONS, DeadLetters
from ce_daemon.logs.mutes import MUTE_MIGRATIONS
from ce_daemon.logs.resolve import ResolvedRoute, RouteResolver
from ce_daemon.logs.settings import Logs, auto_size
from ce_daemon.pipeline import ComponentSpec
from ce_daemon.registry import PluginInfo, Registry

if TYPE_CHECKING:
    from ce_daemon.api import ApiRoute
    from ce_daemon.config.load import LoadedPipeline
    from ce_daemon.metrics import Metrics
    from ce_daemon.pipeline import Runtime


@dataclass(frozen=True)
class LogRoutes:
    """The ``logs:`` section resolved: every route by name (disabled ones too)."""

    routes: dict[str, ResolvedRoute]
    workers: int = 0
    """Format worker processes (``logs.workers``, ``auto`` resolved for this machine)."""

    def enabled(self) -> list[ResolvedRoute]:
        """The routes that run."""
        return [route for route in self.routes.values() if route.config.enabled]


class LogsJob(Job[Logs, LogRoutes]):
    """Ship Netskope alerts and events to log sinks, one route per (selection, format, sink)."""

    name = "logs"
    section = Logs
    migrations = (*DEADLETTER_MIGRATIONS, *MUTE_MIGRATIONS)

    def resolve(self, resolution: Resolution, section: Logs | None) -> LogRoutes | None:
        """Check every route (plugins, filters, subtypes, mappings, tenants), then resolve them."""
        resolver = RouteResolver(resolution)
        resolver.check_routes()
        if section is None or resolution.problems:  # the file is refused: what is wrong may be elsewhere
            return None
        workers = auto_size() if section.workers == "auto" else section.workers
        return LogRoutes(resolver.build_routes(section), workers)

    def streams(self, resolved: LogRoutes) -> Iterable[StreamKey]:
        """What the enabled routes read."""
        return [stream for route in resolved.enabled() for stream in route.streams]

    def plan(self, loaded: LoadedPipeline, resolved: LogRoutes, runtime: Runtime) -> Iterable[ComponentSpec]:
        """One consumer per enabled route, rebuilt when its raw settings, mapping or sink version change."""
        from ce_daemon.logs.route import RouteComponent

        names = list(resolved.routes)
        for route in resolved.enabled():
            key = ComponentKey("route", route.config.name)
            # A change of logs.workers rebuilds every route, and the new ones resize the pool.
            fingerprint = f"{route.fingerprint}/workers={resolved.workers}"

            def build(
                route: ResolvedRoute = route, key: ComponentKey = key, fingerprint: str = fingerprint
            ) -> RouteComponent:
                return RouteComponent(str(key), fingerprint, route, loaded, runtime, workers=resolved.workers)

            yield ComponentSpec(
                key=key,
                fingerprint=fingerprint,
                stage="consumer",
                build=build,
                place=("logs", "routes", names.index(route.config.name)),
                consumes=frozenset(str(s) for s in route.streams),
                require_healthy=route.config.require_healthy,
            )

    def inactive(self, source: Source) -> set[Loc]:
        """Disabled routes: their secrets need not resolve."""
        routes = source.value_at(("logs", "routes"))
        return {
            ("logs", "routes", index)
            for index, route in enumerate(routes if isinstance(routes, list) else [])
            if isinstance(route, dict) and route.get("enabled") is False
        }

    def options_model(
        self, source: Source, registry: Registry, loc: Loc
    ) -> tuple[type[BaseModel] | None, Loc] | None:
        """Inside ``logs.routes[i].sink`` (its ``type`` apart), the sink plugin's options model."""
        if loc[:2] != ("logs", "routes") or len(loc) < 5 or loc[3] != "sink" or loc[4:] == ("type",):
            return None
        kind = source.value_at((*loc[:4], "type"))
        info = registry.get("log_sink", kind) if isinstance(kind, str) else None
        if info is None or info.cls is None:
            return None, ()
        return info.cls.Options, loc[4:]

    def api_routes(self) -> Iterable[ApiRoute]:
        from ce_daemon.logs.api import log_routes

        return log_routes()

    def plugins(self, resolved: LogRoutes) -> Iterable[PluginInfo]:
        """The sink plugins the routes use."""
        return [route.sink for route in resolved.routes.values()]

    def secret_holders(self, resolved: LogRoutes) -> Iterable[object]:
        """Each route's sink options."""
        return [route.sink_options for route in resolved.routes.values()]

    def summary(self, resolved: LogRoutes) -> str:
        """``N log route(s)``."""
        return f"{len(resolved.routes)} log route(s)"

    async def status(self, loaded: LoadedPipeline, resolved: LogRoutes, runtime: Runtime) -> dict[str, Any]:
        """How many routes run, and how many dead letters wait (``ce-daemon dlq list`` shows them)."""
        return {"routes": len(resolved.enabled()), "dead_letters": await DeadLetters(runtime.store).count()}

    def register_metrics(self, metrics: Metrics) -> None:
        """The route families: counters, lag, backlog and the batch latency histogram."""
        from ce_daemon.logs.metrics import RouteMetrics

        metrics.own(RouteMetrics)

    def add_commands(self, commands: SubParsers[argparse.ArgumentParser]) -> None:
        """``ce-daemon dlq list|replay|purge``, ``test`` (a route's dry run) and ``tap`` (a running route's
        output)."""
        from ce_daemon.logs.dryrun import add_test_command
        from ce_daemon.logs.tap import add_tap_command

        add_test_command(commands)
        add_tap_command(commands)
        dlq = commands.add_parser(
            "dlq",
            help="list, replay or purge dead-lettered records",
            description="Records a target refused for good, kept with the reason.",
        )
        dlq.add_argument("action", choices=["list", "replay", "purge"])
        dlq.add_argument("-c", "--config", type=Path, required=True, help="the pipeline YAML file")
        dlq.add_argument("--route", help="only this route")
        dlq.add_argument("--limit", type=int, default=50, help="list at most this many")
        dlq.set_defaults(func=_cmd_dlq)


def routes_of(loaded: LoadedPipeline) -> dict[str, ResolvedRoute]:
    """Every route of ``loaded``, by name."""
    return loaded.resolved(LogsJob).routes


def secrets_resolved(loaded: LoadedPipeline, route: str) -> bool:
    """True when every secret of the named route was resolved (none is a stand-in)."""
    names = list(routes_of(loaded))
    return route not in names or not loaded.stand_in_under(("logs", "routes", names.index(route)))


def _cmd_dlq(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from ce_daemon import applog
    from ce_daemon.config.locate import locate_state
    from ce_daemon.logs.deadletter import dlq_command
    from ce_daemon.registry import Registry

    applog.configure(fmt="console")
    state = None
    if args.action != "replay":  # list and purge read the state database only: no secret needed
        located = locate_state(args.config)
        if located is None:
            return os.EX_CONFIG
        state = located[1]
    return asyncio.run(dlq_command(args, Registry.discover(), state))
