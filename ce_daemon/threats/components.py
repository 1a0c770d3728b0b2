"""The threat exchange's running parts: a poller per source, an intake of Netskope alerts, a sharer per
destination, and the ageing loop. Each is a unit of its own (one node runs it when several share the
state database) and commits its progress under its unit's fence.

A source poll stores what it reads page by page (an incremental source's checkpoint with each page);
a full-list source's poll is applied once its last page arrived, so a poll that fails part-way
deactivates nothing. A sharer computes what its destination should hold, pushes the difference (or
the whole list), and records it only once the destination acknowledged: a push whose answer was
lost is computed and sent again, and the plugin looks before adding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

import structlog

from ce_daemon.backoff import Backoff, pause
from ce_daemon.errors import AuthError, ComponentConfigError, TransientError, describe
from ce_daemon.health import State
from ce_daemon.pipeline import Runtime
from ce_daemon.plugin import (
    Health,
    IocRecord,
    Plugin,
    PluginContext,
    Pull,
    Push,
    ThreatSink,
    ThreatSource,
)
from ce_daemon.redact import scrub
from ce_daemon.registry import PluginInfo
from ce_daemon.supervisor import Component
from ce_daemon.threats.intake import Intake, Remembered
from ce_daemon.threats.metrics import ThreatMetrics
from ce_daemon.threats.model import Sighting
from ce_daemon.threats.policy import Policy
from ce_daemon.threats.resolve import ResolvedDestination, ResolvedSource, ThreatPlan
from ce_daemon.threats.share import ShareStore, plan_push, select
from ce_daemon.threats.store import IngestResult, IocStore

__all__ = ["Expirer", "NetskopeIntake", "Sharer", "SourcePoller"]

log = structlog.get_logger("ce_daemon.threats")

RETRY_CAP: Final = 300.0
"""The longest wait before another try after a failed poll or push (the interval, if shorter)."""


class PluginComponent(Component):
    """A component that runs one plugin every ``interval``: opened at start, reopened after a failure."""

    def __init__(
        self,
        name: str,
        fingerprint: str,
        info: PluginInfo,
        options: Any,
        runtime: Runtime,
        context: PluginContext,
        interval: float,
    ) -> None:
        super().__init__(name, fingerprint)
        self.info, self.options, self.runtime, self.context = info, options, runtime, context
        self.interval = interval
        self.plugin: Plugin[Any] | None = None
        self.failures = 0
        self.log = context.log

    async def start(self) -> None:
        """Open the plugin and ask its health: a failure is a start failure of the component."""
        health = await self._open()
        if not health.ok:
            raise TransientError(f"{self.info.name!r} unhealthy: {health.detail}")
        self.status.ok(health.detail)

    async def _open(self) -> Health:
        assert self.info.cls is not None
        plugin = self.info.cls(self.options, self.context)
        try:
            await plugin.open()
            health = await plugin.health()
        except BaseException:
            await plugin.close()
            raise
        self.plugin = plugin
        return health

    async def close(self) -> None:
        plugin, self.plugin = self.plugin, None
        if plugin is not None:
            await plugin.close()

    async def run(self, stopping: asyncio.Event) -> None:
        """One cycle every ``interval`` until asked to stop; a failed cycle is retried with backoff."""
        backoff = Backoff(first=min(5.0, self.interval), cap=min(RETRY_CAP, self.interval))
        while not stopping.is_set() and not (self.lease is not None and self.lease.lost):
            wait = self.interval if await self.once() else backoff.delay(self.failures)
            if await pause(stopping, wait):
                return

    async def once(self) -> bool:
        """One poll or push (the plugin opened first when it is not); False when it failed (recorded)."""
        try:
            if self.plugin is None:
                await self._open()
            assert self.plugin is not None
            await self.cycle(self.plugin)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's failure or bug fails the cycle, never the daemon
            await self._failed(exc)
            return False
        self.failures = 0
        return True

    async def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        reason = scrub(describe(exc) if not isinstance(exc, TimeoutError) else "timed out")
        self.status.count("failures")
        self.status.degraded(reason)
        self.log.warning("cycle.failed", kind=self.kind, error=reason, attempt=self.failures)
        await self.on_failure(reason)
        if isinstance(exc, AuthError | ComponentConfigError):
            await self.close()  # opened again with the next try: credentials may have been fixed

    async def on_failure(self, reason: str) -> None:
        """Record a failed cycle (a source's last error, a destination's failed push)."""

    async def cycle(self, plugin: Plugin[Any]) -> None:
        """One poll or push."""
        raise NotImplementedError


class SourcePoller(PluginComponent):
    """Polls one ``threat_source`` plugin and stores what it reads."""

    kind = "threat_source"

    def __init__(
        self, name: str, source: ResolvedSource, plan: ThreatPlan, runtime: Runtime, **kw: Any
    ) -> None:
        assert source.plugin is not None
        super().__init__(name, source.fingerprint, source.plugin, source.options, runtime, **kw)
        self.source = source
        self.settings = plan.settings
        self.exclude = frozenset(d.config.tag for d in plan.destinations.values())
        self.iocs = IocStore(runtime.store)
        self.memo = Remembered()  # a full list's values of its last whole poll, not normalised again
        self.status.counters.update({"polls": 0, "stored": 0, "rejected": 0})

    async def cycle(self, plugin: Plugin[Any]) -> None:
        assert isinstance(plugin, ThreatSource)
        name = self.source.config.name
        now = time.time()
        full = bool(plugin.full_list)
        request = Pull(None if full else await self.iocs.checkpoint(name), self.exclude, now)
        self.memo.abandon()  # what a poll that failed before (or while) storing began to remember
        intake = Intake(self.settings.guards, memo=self.memo if full else None)
        fence = self.lease.fence if self.lease is not None else None
        lifetime = self.settings.lifetime_of(name)
        total = IngestResult()
        gathered: list[Sighting] = []
        refused = 0
        try:
            async with asyncio.timeout(self.source.config.timeout):
                async for page in plugin.pull(request):
                    refused += _log_refused(self.log, page.refused)
                    before = intake.rejected
                    sightings = list(records_to_sightings(intake, page.records, now, self.exclude))
                    if full:
                        gathered.extend(sightings)
                        continue
                    result = await self.iocs.ingest(
                        name, sightings, full_list=False, lifetime=lifetime, now=now, fence=fence,
                        rejected=len(page.refused) + intake.rejected - before,
                        checkpoint=page.checkpoint, finished=False,
                    )  # fmt: skip
                    total.written += result.written
                    self.status.beat()
        except BaseException:
            self.memo.abandon()
            self.status.count("rejected", refused + intake.rejected)
            raise
        result = await self.iocs.ingest(
            name, gathered, full_list=full, lifetime=lifetime, now=now, fence=fence,
            rejected=(refused + intake.rejected) if full else 0,
        )  # fmt: skip
        total.written += result.written
        if full:
            self.memo.finish()
        self.status.count("polls")
        self.status.count("stored", total.written)
        self.status.count("rejected", refused + intake.rejected)
        self.status.ok(
            f"{total.written} written, {result.deactivated} delisted, {intake.rejected + refused} refused"
        )
        self.log.info(
            "threat_source.polled",
            written=total.written,
            unchanged=result.unchanged,
            deactivated=result.deactivated,
            refused=intake.rejected + refused,
            reasons=dict(intake.refused) or None,
        )

    async def on_failure(self, reason: str) -> None:
        try:
            await self.iocs.poll_failed(self.source.config.name, reason)
        except Exception as exc:  # noqa: BLE001 - the failure being recorded is what matters
            self.log.warning("threat_source.record_failed", error=describe(exc))


def records_to_sightings(
    intake: Intake, records: Sequence[IocRecord], now: float, exclude: frozenset[str]
) -> Iterator[Sighting]:
    """The sightings of a page's records: normalised, guarded, refusals counted (ours skipped)."""
    for record in records:
        if exclude and exclude.intersection(record.tags):
            continue  # pushed by us: never read back as a source's word
        sighting = intake.record(record, now)
        if sighting is not None:
            yield sighting


def _log_refused(bound: Any, refused: Sequence[tuple[str, str]]) -> int:
    for what, reason in refused[:5]:
        bound.info("threat_source.refused", item=scrub(what)[:200], reason=scrub(reason)[:300])
    return len(refused)


class Sharer(PluginComponent):
    """Pushes what the sharing rules select to one ``threat_sink`` plugin."""

    kind = "threat_destination"

    def __init__(
        self, name: str, destination: ResolvedDestination, plan: ThreatPlan, runtime: Runtime, **kw: Any
    ) -> None:
        super().__init__(
            name, destination.fingerprint, destination.plugin, destination.options, runtime, **kw
        )
        self.destination = destination
        self.policy = Policy(plan.settings)
        self.iocs = IocStore(runtime.store)
        self.shares = ShareStore(runtime.store)
        self.dropped = 0
        self.status.counters.update(
            {"cycles": 0, "pushes": 0, "listed": 0, "added": 0, "removed": 0, "dropped": 0}
        )

    async def cycle(self, plugin: Plugin[Any]) -> None:
        assert isinstance(plugin, ThreatSink)
        self.status.count("cycles")  # each look at what to share, pushed or not (``pushes`` counts those)
        name = self.destination.config.name
        held = await self.shares.held(name)
        selection = await select(
            self.destination.rules, self.iocs, self.policy, takes=frozenset(plugin.types),
            max_entries=plugin.max_entries, max_bytes=plugin.max_bytes, size=plugin.entry_size, held=held,
            echo_of=self.destination.config.echo_of,
        )  # fmt: skip
        plan = plan_push(selection, held)
        self.dropped = sum(selection.dropped.values())
        if self.dropped:
            self.log.warning("threat_destination.capped", dropped=selection.dropped, kept=len(plan.full))
        fence = self.lease.fence if self.lease is not None else None
        if plugin.incremental:
            if not plan.add and not plan.remove:
                self._done(len(plan.full), 0, 0)
                return
            push = Push(
                [ioc for _, ioc in plan.add], plan.remove, full=False, tag=self.destination.config.tag
            )
        else:
            if plan.list_digest == await self.shares.last_digest(name) and not plan.add:
                self._done(len(plan.full), 0, 0)
                return
            push = Push(plan.full, [], full=True, tag=self.destination.config.tag)
        result = await plugin.push(push)
        by_value = {ioc.value: (ioc.type, ioc.value) for ioc in push.add}
        rejected = {by_value[v]: reason for v, reason in result.rejected if v in by_value}
        for value, reason in list(result.rejected)[:5]:
            self.log.info("threat_destination.refused", value=scrub(value)[:200], reason=scrub(reason)[:300])
        await self.shares.record(name, plan, rejected, dropped=self.dropped, fence=fence)
        self.status.count("pushes")
        self._done(len(plan.full) - len(rejected), len(plan.add) - len(rejected), len(plan.remove))
        self.log.info(
            "threat_destination.pushed", listed=len(plan.full), added=len(plan.add), removed=len(plan.remove),
            refused=len(rejected), dropped=self.dropped, full=push.full,
        )  # fmt: skip

    def _done(self, listed: int, added: int, removed: int) -> None:
        counters = self.status.counters
        counters["listed"] = listed
        counters["dropped"] = self.dropped
        self.status.count("added", added)
        self.status.count("removed", removed)
        detail = f"{listed} listed" + (f", {self.dropped} dropped by caps" if self.dropped else "")
        self.status.ok(detail)

    async def on_failure(self, reason: str) -> None:
        try:
            await self.shares.failed(
                self.destination.config.name, reason, dropped=self.dropped,
                fence=self.lease.fence if self.lease is not None else None,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the failure being recorded is what matters
            self.log.warning("threat_destination.record_failed", error=describe(exc))


class NetskopeIntake(Component):
    """Netskope's own verdicts as a source: Malware alerts' file hashes and malsite alerts' URLs, read from
    the spool like a log route reads it, stored, then acknowledged."""

    kind = "threat_source"

    def __init__(self, name: str, source: ResolvedSource, plan: ThreatPlan, runtime: Runtime) -> None:
        super().__init__(name, source.fingerprint)
        self.source = source
        self.settings = plan.settings
        self.runtime = runtime
        self.iocs = IocStore(runtime.store)
        self.log = log.bind(component=name)
        self.status.counters.update({"alerts": 0, "stored": 0, "rejected": 0})

    async def start(self) -> None:
        self.status.ok("reading the spool")

    async def run(self, stopping: asyncio.Event) -> None:
        spool = self.runtime.spool
        lifetime = self.settings.lifetime_of(self.source.config.name)
        while not stopping.is_set() and not (self.lease is not None and self.lease.lost):
            page = await spool.next_page(self.name, timeout=1.0)
            if page is None:
                self.status.beat()
                continue
            intake = Intake(self.settings.guards)
            now = time.time()
            records = [r for alert in page.unread for r in alert_records(alert)]
            sightings = list(records_to_sightings(intake, records, now, frozenset()))
            fence = self.lease.fence if self.lease is not None else None
            result = await self.iocs.ingest(
                self.source.config.name, sightings, full_list=False, lifetime=lifetime, now=now,
                rejected=intake.rejected, fence=fence,
            )  # fmt: skip
            await spool.ack(self.name, page.seq, fence=fence)
            self.status.count("alerts", len(page.unread))
            self.status.count("stored", result.written)
            self.status.count("rejected", intake.rejected)
            if self.status.state is not State.OK:
                self.status.ok()


def alert_records(alert: dict[str, Any]) -> Iterator[IocRecord]:
    """The indicators a Netskope alert carries: a Malware alert's file hashes, a malsite alert's URL."""
    kind = alert.get("alert_type") or alert.get("type")
    seen = alert.get("timestamp")
    when = float(seen) if isinstance(seen, int | float) and not isinstance(seen, bool) else None
    severity = _SEVERITIES.get(str(alert.get("severity", "")).lower(), "unknown")
    if str(kind).lower() == "malware" or "malware_name" in alert:
        tags = tuple(str(t) for t in ("netskope", "malware", alert.get("malware_type")) if t)
        comment = str(alert.get("malware_name") or "")[:500]
        for field, ioc_type in _HASH_FIELDS:
            value = alert.get(field)
            if isinstance(value, str) and value:
                yield IocRecord(
                    value, ioc_type, when, severity=severity, reputation=8, tags=tags, comment=comment
                )
    elif str(kind).lower() == "malsite" or "malsite_category" in alert:
        url = alert.get("url")
        if isinstance(url, str) and url:
            tags = tuple(str(t) for t in ("netskope", "malsite", alert.get("malsite_category")) if t)
            yield IocRecord(url, "url", when, severity=severity, reputation=8, tags=tags)


_HASH_FIELDS: Final = (("local_sha256", "sha256"), ("sha256", "sha256"), ("local_md5", "md5"), ("md5", "md5"))
"""Where a Malware alert carries the file's hashes (the local ones first: they name the file scanned)."""
_SEVERITIES: Final = {
    "low": "low", "medium": "medium", "high": "high", "critical": "critical", "informational": "low",
    "info": "low", "very-high": "critical", "very high": "critical",
}  # fmt: skip


class Expirer(Component):
    """Deactivates indicators past their lifetime every ``every`` seconds (sharers then retract them),
    and refreshes the threat metrics every :data:`METRICS_EVERY` seconds between (a scrape cannot
    wait for a count of the store)."""

    kind = "threat_ageing"

    def __init__(self, name: str, fingerprint: str, every: float, runtime: Runtime) -> None:
        super().__init__(name, fingerprint)
        self.every = every
        self.iocs = IocStore(runtime.store)
        self.metrics = runtime.metrics.own(ThreatMetrics)
        self.log = log.bind(component=name)
        self.status.counters.update({"expired": 0})

    async def start(self) -> None:
        self.status.ok()

    async def run(self, stopping: asyncio.Event) -> None:
        due = 0.0
        while not stopping.is_set() and not (self.lease is not None and self.lease.lost):
            now = time.monotonic()
            if now >= due:
                due = now + self.every
                expired = await self.iocs.expire(fence=self.lease.fence if self.lease is not None else None)
                if expired:
                    self.status.count("expired", expired)
                    self.log.info("threats.expired", count=expired)
            self.metrics.update(await self.iocs.counts(), await ShareStore(self.iocs.store).pushes())
            self.status.ok()
            if await pause(stopping, min(METRICS_EVERY, max(0.0, due - time.monotonic()))):
                return


METRICS_EVERY: Final = 10.0
"""Seconds between two refreshes of the threat metrics (counts of the store, each destination's list)."""
