"""The threat exchange as a job: the ``threats:`` section, its tables, ``status``, metrics and ``iocs``.

This is the foundation (issue 9): the IOC model, normalisation, guards, the store and trust policy,
with a person's view of the store (``ce-daemon iocs search|show|stats``) and a local one-shot ingest
of a plain-text list (``ce-daemon iocs import``). Sources, destinations and sharing rules plug in
with the plugin contract of the next step, as components :meth:`ThreatsJob.plan` will yield.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ce_daemon.jobs import Job, Resolution, SubParsers
from ce_daemon.threats.settings import Threats
from ce_daemon.threats.store import THREATS_MIGRATIONS, IocStore

if TYPE_CHECKING:
    from ce_daemon.config.load import LoadedPipeline
    from ce_daemon.metrics import Metrics
    from ce_daemon.pipeline import ComponentSpec, Runtime


class ThreatsJob(Job[Threats, Threats]):
    """Ingest, curate and (next) share IOCs between connected systems."""

    name = "threats"
    section = Threats
    migrations = THREATS_MIGRATIONS

    def resolve(self, resolution: Resolution, section: Threats | None) -> Threats | None:
        """The section's model checks everything there is to check today (the allowlist normalises)."""
        return section

    def plan(self, loaded: LoadedPipeline, resolved: Threats, runtime: Runtime) -> Iterable[ComponentSpec]:
        """No components yet: sources and sharing rules come with the plugin contract."""
        return ()

    async def status(self, loaded: LoadedPipeline, resolved: Threats, runtime: Runtime) -> dict[str, Any]:
        """Stored IOC rows: active and inactive, and per type (``ce-daemon iocs stats`` has the detail)."""
        from ce_daemon.threats.metrics import ThreatMetrics

        counts = await IocStore(runtime.store).counts()
        runtime.metrics.own(ThreatMetrics).update(counts)
        summary: dict[str, Any] = {
            "iocs_active": sum(n for _, _, active, n in counts if active),
            "iocs_inactive": sum(n for _, _, active, n in counts if not active),
        }
        for kind in sorted({kind for kind, _, _, _ in counts}):
            summary[f"iocs_{kind}"] = sum(n for k, _, active, n in counts if k == kind and active)
        return summary

    def register_metrics(self, metrics: Metrics) -> None:
        """``ce_daemon_threat_iocs{type, source, status}``."""
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
