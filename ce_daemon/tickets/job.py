"""The ticket orchestrator as a job: the ``tickets:`` section, its tables and components, ``status``,
metrics and ``tickets``.

Components (each a unit of its own, leased to one node when several share the state database): one
consumer per enabled rule (``ticket_rule:<name>``, reading its alert streams from the spool), one
dispatcher per enabled destination (``ticket_destination:<name>``) and one status syncer per enabled
destination whose plugin tracks statuses (``ticket_sync:<name>``).
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
from ce_daemon.tickets.resolve import TicketPlan, TicketResolver
from ce_daemon.tickets.settings import Tickets
from ce_daemon.tickets.store import TICKETS_MIGRATIONS, TicketStore

if TYPE_CHECKING:
    from ce_daemon.api import ApiRoute
    from ce_daemon.config.load import LoadedPipeline
    from ce_daemon.dashboard import Page
    from ce_daemon.metrics import Metrics
    from ce_daemon.pipeline import Runtime


class TicketsJob(Job[Tickets, TicketPlan]):
    """Turn Netskope alerts into tickets and notifications: rules, mute, dedup, outbox, status sync."""

    name = "tickets"
    section = Tickets
    migrations = TICKETS_MIGRATIONS

    def resolve(self, resolution: Resolution, section: Tickets | None) -> TicketPlan | None:
        """Check every destination and rule (plugins, tenants, subtypes, filters, queues)."""
        resolver = TicketResolver(resolution)
        resolver.check()
        if section is None or resolution.problems:
            return None
        return resolver.build(section)

    def streams(self, resolved: TicketPlan) -> Iterable[StreamKey]:
        """What the enabled rules read."""
        return [stream for rule in resolved.enabled_rules() for stream in rule.streams]

    def plan(self, loaded: LoadedPipeline, resolved: TicketPlan, runtime: Runtime) -> Iterable[ComponentSpec]:
        """A consumer per enabled rule; a dispatcher (and a syncer if it tracks) per enabled destination."""
        from ce_daemon.plugin import PluginContext
        from ce_daemon.tickets.components import Dispatcher, RuleConsumer, StatusSyncer, log
        from ce_daemon.tickets.writeback import IncidentWriter

        rules = list(resolved.rules)
        for rule in resolved.enabled_rules():
            key = ComponentKey("ticket_rule", rule.config.name)

            def build_rule(rule: Any = rule, key: ComponentKey = key) -> Any:
                return RuleConsumer(str(key), rule, runtime)

            yield ComponentSpec(
                key=key,
                fingerprint=rule.fingerprint,
                stage="consumer",
                build=build_rule,
                place=("tickets", "rules", rules.index(rule.config.name)),
                consumes=frozenset(str(s) for s in rule.streams),
            )
        destinations = list(resolved.destinations)
        writer = IncidentWriter(loaded.config.tenants)
        write_back = writer.write if any(r.config.write_back for r in resolved.enabled_rules()) else None
        for destination in resolved.enabled_destinations():
            place: Loc = ("tickets", "destinations", destinations.index(destination.config.name))
            key = ComponentKey("ticket_destination", destination.config.name)
            context = PluginContext(
                destination.config.name, loaded.base_dir, runtime.data_dir, log.bind(component=str(key))
            )

            # the queues' templates are rendered when an intent is sent: a change of them rebuilds it
            feeding = [
                r.fingerprint
                for r in resolved.rules.values()
                if any(q.to == destination.config.name for q in r.queues)
            ]
            fingerprint = f"{destination.fingerprint}:{','.join(feeding)}"

            def build_dispatcher(
                destination: Any = destination,
                key: ComponentKey = key,
                context: Any = context,
                fingerprint: str = fingerprint,
            ) -> Any:
                return Dispatcher(str(key), destination, resolved, runtime, context, fingerprint)

            yield ComponentSpec(
                key=key, fingerprint=fingerprint, stage="other", build=build_dispatcher, place=place
            )
            if not destination.tracks:
                continue
            sync_key = ComponentKey("ticket_sync", destination.config.name)
            sync_context = PluginContext(
                destination.config.name, loaded.base_dir, runtime.data_dir, log.bind(component=str(sync_key))
            )

            def build_syncer(
                destination: Any = destination, key: ComponentKey = sync_key, context: Any = sync_context
            ) -> Any:
                return StatusSyncer(
                    str(key),
                    destination,
                    resolved,
                    runtime,
                    context,
                    write_back=write_back,
                )

            rule_prints = [r.fingerprint for r in resolved.enabled_rules() if r.config.write_back]
            yield ComponentSpec(
                key=sync_key,
                fingerprint=f"{destination.fingerprint}:{','.join(rule_prints)}",
                stage="other",
                build=build_syncer,
                place=place,
            )

    def inactive(self, source: Source) -> set[Loc]:
        """Disabled destinations and rules: their secrets need not resolve."""
        found: set[Loc] = set()
        for part in ("destinations", "rules"):
            entries = source.value_at(("tickets", part))
            for index, entry in enumerate(entries if isinstance(entries, list) else []):
                if isinstance(entry, dict) and entry.get("enabled") is False:
                    found.add(("tickets", part, index))
        return found

    def options_model(
        self, source: Source, registry: Registry, loc: Loc
    ) -> tuple[type[BaseModel] | None, Loc] | None:
        """Inside ``tickets.destinations[i].plugin`` (its ``type`` apart), the plugin's options."""
        if (
            loc[:2] != ("tickets", "destinations")
            or len(loc) < 5
            or loc[3] != "plugin"
            or loc[4:] == ("type",)
        ):
            return None
        kind = source.value_at((*loc[:4], "type"))
        info = registry.get("ticket_sink", kind) if isinstance(kind, str) else None
        if info is None or info.cls is None:
            return None, ()
        return info.cls.Options, loc[4:]

    def dashboard_pages(self) -> Iterable[Page]:
        from ce_daemon.tickets.pages import ticket_pages

        return ticket_pages()

    def api_routes(self) -> Iterable[ApiRoute]:
        from ce_daemon.tickets.api import ticket_routes

        return ticket_routes()

    def plugins(self, resolved: TicketPlan) -> Iterable[PluginInfo]:
        """The destination plugins the section uses."""
        return [d.plugin for d in resolved.destinations.values()]

    def secret_holders(self, resolved: TicketPlan) -> Iterable[object]:
        """Each destination's options."""
        return [d.options for d in resolved.destinations.values()]

    def summary(self, resolved: TicketPlan) -> str | None:
        """``N ticket rule(s), M ticket destination(s)``."""
        if not (resolved.rules or resolved.destinations):
            return None
        return f"{len(resolved.rules)} ticket rule(s), {len(resolved.destinations)} ticket destination(s)"

    async def status(self, loaded: LoadedPipeline, resolved: TicketPlan, runtime: Runtime) -> dict[str, Any]:
        """Tickets by status, the outbox's depth and failures (``tickets list`` shows them)."""
        from ce_daemon.tickets.metrics import TicketMetrics

        store = TicketStore(runtime.store)
        counts, outbox = await store.counts(), await store.outbox()
        runtime.metrics.own(TicketMetrics).update(counts, outbox)
        summary: dict[str, Any] = {"tickets": sum(n for _, _, n in counts)}
        for status in sorted({s for _, s, _ in counts}):
            summary[f"tickets_{status}"] = sum(n for _, s, n in counts if s == status)
        summary["outbox_pending"] = sum(n for _, s, n in outbox if s == "pending")
        summary["outbox_held"] = sum(n for _, s, n in outbox if s == "held")
        summary["outbox_failed"] = sum(n for _, s, n in outbox if s == "failed")
        return summary

    def register_metrics(self, metrics: Metrics) -> None:
        """``ce_daemon_tickets{destination, status}``, the outbox's depth and failures."""
        from ce_daemon.tickets.metrics import TicketMetrics

        metrics.own(TicketMetrics)

    def add_commands(self, commands: SubParsers[argparse.ArgumentParser]) -> None:
        """``ce-daemon tickets list|show|retry|approve|decline``."""
        tickets = commands.add_parser(
            "tickets",
            help="list, show, retry, approve or decline tickets",
            description="The ticket orchestrator's tickets, read from the state database.",
        )
        actions = tickets.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("list", help="tickets, newest first, filtered and sorted")
        listing.add_argument("--rule", help="only this rule's tickets")
        listing.add_argument("--destination", help="only this destination's tickets")
        listing.add_argument("--status", help="only tickets in this status (new, closed, failed …)")
        listing.add_argument("--since", help="only tickets updated within this long (30m, 2h, 7d)")
        listing.add_argument(
            "--sort", choices=["created", "updated", "status", "rule", "destination"], default="created"
        )
        listing.add_argument("--limit", type=int, default=100, help="at most this many")
        show = actions.add_parser("show", help="one ticket and its intents")
        retry = actions.add_parser("retry", help="send a failed ticket again")
        approve = actions.add_parser("approve", help="approve a ticket waiting for approval: it is sent")
        decline = actions.add_parser("decline", help="decline a ticket waiting for approval")
        for action in (show, retry, approve, decline):
            action.add_argument("ticket", help="the ticket's id or key")
        for action in (listing, show, retry, approve, decline):
            action.add_argument("-c", "--config", type=Path, required=True, help="the pipeline YAML file")
            action.add_argument("--json", action="store_true", help="print JSON")
        tickets.set_defaults(func=_cmd_tickets)


def _cmd_tickets(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from ce_daemon import applog
    from ce_daemon.config.locate import locate_state
    from ce_daemon.tickets.commands import tickets_command

    applog.configure(fmt="console")
    located = locate_state(args.config)
    if located is None:
        return os.EX_CONFIG
    return asyncio.run(tickets_command(args, located[1]))
