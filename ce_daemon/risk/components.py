"""The risk exchange's running parts: a poller per source, an intake of Netskope's UBA alerts, and the
evaluator (recompute, snapshot, rules and actions). Each is a unit of its own (leased to one node when
several share the state database) and commits under its unit's fence.

A poll is stored whole once its last page arrived: a source that fails or times out part-way stores
nothing, its last good scores stay (and go stale by age), and its error is recorded for status.
After a poll is stored the evaluator on this node is woken (others run on their interval).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final

import structlog

from ce_daemon.backoff import pause
from ce_daemon.errors import describe
from ce_daemon.health import State
from ce_daemon.pipeline import Runtime
from ce_daemon.plugin import (
    Plugin,
    PluginContext,
    RiskAction,
    RiskPage,
    RiskRecord,
    RiskSource,
    RiskTarget,
    TicketSink,
)
from ce_daemon.redact import scrub
from ce_daemon.risk.engine import Engine
from ce_daemon.risk.metrics import RiskMetrics
from ce_daemon.risk.netskope import reader_for, spool_records
from ce_daemon.risk.normalise import PollScores, normalise_poll
from ce_daemon.risk.notify import Notification, resolves
from ce_daemon.risk.resolve import ResolvedAction, ResolvedRiskSource, RiskPlan
from ce_daemon.risk.store import RiskStore
from ce_daemon.store import LeaseLostError
from ce_daemon.supervisor import Component
from ce_daemon.threats.components import PluginComponent

__all__ = ["Evaluator", "NetskopeUba", "RiskPoller", "wake"]

log = structlog.get_logger("ce_daemon.risk")

ACTION_TIMEOUT: Final = 120.0
MAX_RECORDS: Final = 2_000_000
"""The most records one poll may return (a source past it fails the poll: nothing is stored)."""
MAX_KNOWN: Final = 1_000_000
"""The most keys of a type handed to a source that is asked about named entities (``asks_about``)."""
PASS_SPACING: Final = 5.0
"""After a pass woken by a poll, the next one waits this many times as long as the pass took."""
_WAKE: dict[int, asyncio.Event] = {}


def wake(runtime: Runtime) -> asyncio.Event:
    """The event that wakes this process's evaluator of ``runtime``'s state (set after a poll)."""
    return _WAKE.setdefault(id(runtime.store), asyncio.Event())


class RiskPoller(PluginComponent):
    """Polls one ``risk_source`` plugin and stores its normalised scores."""

    kind = "risk_source"

    def __init__(self, name: str, source: ResolvedRiskSource, runtime: Runtime, **kw: Any) -> None:
        assert source.plugin is not None
        super().__init__(name, source.fingerprint, source.plugin, source.options, runtime, **kw)
        self.source = source
        self.risk = RiskStore(runtime.store)
        self.status.counters.update({"polls": 0, "stored": 0, "skipped": 0})

    async def cycle(self, plugin: Plugin[Any]) -> None:
        assert isinstance(plugin, RiskSource)
        records: list[RiskRecord] = []
        refused = 0
        async with asyncio.timeout(self.source.config.timeout):
            if plugin.asks_about:
                plugin.known = {
                    kind: await self.risk.keys(kind, MAX_KNOWN) for kind in sorted(plugin.asks_about)
                }
            async for page in plugin.pull():
                if not isinstance(page, RiskPage):
                    raise TypeError(f"the source yielded {type(page).__name__}, not a RiskPage")
                records.extend(page.records)
                refused += len(page.refused)
                for what, reason in list(page.refused)[:5]:
                    self.log.info(
                        "risk_source.refused", item=scrub(str(what))[:200], reason=scrub(str(reason))[:300]
                    )
                if len(records) > MAX_RECORDS:
                    raise ValueError(f"more than {MAX_RECORDS} records in one poll")
                self.status.beat()
        entities = sorted(plugin.entities) if plugin.entities else None
        poll = normalise_poll(self.source.scale, records, entities)
        if refused:
            poll.skipped["refused by the source"] += refused
        if records and not poll.records:
            raise ValueError(f"every one of {len(records)} records was skipped ({_reasons(poll)})")
        fence = self.lease.fence if self.lease is not None else None
        stored = await self.risk.store_poll(self.source.config.name, poll, fence=fence)
        skipped = sum(poll.skipped.values())
        self.status.count("polls")
        self.status.count("stored", stored)
        self.status.count("skipped", skipped)
        self.status.ok(f"{stored} scored, {skipped} skipped")
        self.log.info(
            "risk_source.polled", stored=stored, skipped=skipped, reasons=dict(poll.skipped) or None
        )
        wake(self.runtime).set()

    async def on_failure(self, reason: str) -> None:
        try:
            await self.risk.poll_failed(self.source.config.name, reason)
        except Exception as exc:  # noqa: BLE001 - the failure being recorded is what matters
            self.log.warning("risk_source.record_failed", error=describe(exc))


def _reasons(poll: PollScores) -> str:
    return ", ".join(f"{n} {why}" for why, n in poll.skipped.most_common(3))


class NetskopeUba(Component):
    """A Netskope tenant's stream as a source of scores (UBA alerts for users, application events for
    applications, client status for devices: :mod:`ce_daemon.risk.netskope`), read from the spool,
    stored, then acknowledged."""

    kind = "risk_source"

    def __init__(self, name: str, source: ResolvedRiskSource, runtime: Runtime) -> None:
        super().__init__(name, source.fingerprint)
        self.source = source
        self.runtime = runtime
        self.risk = RiskStore(runtime.store)
        self.log = log.bind(component=name)
        self.status.counters.update({"records": 0, "stored": 0, "skipped": 0})

    async def start(self) -> None:
        self.status.ok("reading the spool")

    async def run(self, stopping: asyncio.Event) -> None:
        spool = self.runtime.spool
        assert self.source.config.netskope is not None
        reader = reader_for(self.source.config.netskope)
        while not stopping.is_set() and not (self.lease is not None and self.lease.lost):
            page = await spool.next_page(self.name, timeout=1.0)
            if page is None:
                self.status.beat()
                continue
            records, missing = spool_records(page.unread, reader)
            poll = normalise_poll(self.source.scale, records, (reader.entity,))
            if missing:
                poll.skipped[f"no {reader.entity} key or {reader.field}"] += missing
            fence = self.lease.fence if self.lease is not None else None
            stored = await self.risk.store_records(self.source.config.name, poll, fence=fence)
            await spool.ack(self.name, page.seq, fence=fence)
            self.status.count("records", len(page.unread))
            self.status.count("stored", stored)
            self.status.count("skipped", sum(poll.skipped.values()))
            if self.status.state is not State.OK:
                self.status.ok()
            wake(self.runtime).set()


class ActionPlugins:
    """The named actions' plugins, opened on first use and reopened after a failure."""

    def __init__(
        self, actions: Mapping[str, ResolvedAction], runtime: Runtime, data_dir: Any, base_dir: Any
    ) -> None:
        self.actions = dict(actions)
        self.runtime = runtime
        self.data_dir, self.base_dir = data_dir, base_dir
        self.opened: dict[str, RiskAction[Any]] = {}

    def revertible(self, action: str) -> bool:
        resolved = self.actions.get(action)
        if resolved is None or resolved.plugin.cls is None:
            return False
        if resolved.notify:
            return resolves(resolved.plugin.cls)
        return bool(getattr(resolved.plugin.cls, "revertible", False))

    async def _plugin(self, action: str) -> RiskAction[Any]:
        plugin = self.opened.get(action)
        if plugin is not None:
            return plugin
        resolved = self.actions.get(action)
        if resolved is None or resolved.plugin.cls is None:
            raise LookupError(f"no action named {action!r} is configured")
        context = PluginContext(action, self.base_dir, self.data_dir, log.bind(action=action))
        created = resolved.plugin.cls(resolved.options, context)
        if resolved.notify:
            assert isinstance(created, TicketSink)
            created = Notification(created, context)
        assert isinstance(created, RiskAction)
        try:
            await created.open()
        except BaseException:
            await created.close()
            raise
        self.opened[action] = created
        return created

    async def apply(self, action: str, target: RiskTarget) -> Mapping[str, str]:
        plugin = await self._plugin(action)
        try:
            async with asyncio.timeout(ACTION_TIMEOUT):
                return await plugin.apply(target)
        except Exception:
            await self._drop(action)
            raise

    async def revert(self, action: str, target: RiskTarget) -> None:
        plugin = await self._plugin(action)
        try:
            async with asyncio.timeout(ACTION_TIMEOUT):
                await plugin.revert(target)
        except Exception:
            await self._drop(action)
            raise

    async def _drop(self, action: str) -> None:
        plugin = self.opened.pop(action, None)
        if plugin is not None:
            try:
                await plugin.close()
            except Exception as exc:  # noqa: BLE001 - closing a failed plugin must not hide its failure
                log.warning("risk.action_close_failed", action=action, error=describe(exc))

    async def close(self) -> None:
        for action in list(self.opened):
            await self._drop(action)


class Evaluator(Component):
    """Recomputes combined scores, writes the daily snapshot, evaluates the rules and runs their actions,
    every ``evaluate_every`` seconds and right after a poll on this node."""

    kind = "risk_evaluator"

    def __init__(self, name: str, plan: RiskPlan, runtime: Runtime, base_dir: Any) -> None:
        super().__init__(name, plan.fingerprint)
        self.plan = plan
        self.runtime = runtime
        self.risk = RiskStore(runtime.store)
        self.log = log.bind(component=name)
        self.runner = ActionPlugins(plan.actions, runtime, runtime.data_dir, base_dir)
        settings = plan.settings
        self.engine = Engine(
            self.risk, plan.weights(), how=settings.combine, rules=plan.rules,
            maintenance=settings.maintenance, runner=self.runner, bound=self.log,
        )  # fmt: skip
        self.metrics = runtime.metrics.own(RiskMetrics)
        self.status.counters.update({"passes": 0, "edges": 0, "actions": 0})

    async def start(self) -> None:
        self.status.ok()

    async def close(self) -> None:
        await self.runner.close()

    async def run(self, stopping: asyncio.Event) -> None:
        woken = wake(self.runtime)
        forgotten = 0.0
        every = self.plan.settings.evaluate_every
        while not stopping.is_set() and not (self.lease is not None and self.lease.lost):
            woken.clear()
            fence = self.lease.fence if self.lease is not None else None
            began = time.monotonic()
            try:
                result = await self.engine.run_pass(fence)
            except (asyncio.CancelledError, LeaseLostError):
                raise
            except Exception as exc:  # noqa: BLE001 - a failed pass is retried on the next interval
                reason = scrub(describe(exc))
                self.status.degraded(reason)
                self.log.warning("risk.pass_failed", error=reason)
            else:
                self.status.count("passes")
                self.status.count("edges", result.edges)
                self.status.count("actions", result.actions)
                self.status.ok(f"{result.entities} entities, {result.changed} changed")
                if result.edges or result.snapshot:
                    self.log.info(
                        "risk.evaluated", entities=result.entities, changed=result.changed,
                        edges=result.edges, actions=result.actions, snapshot=result.snapshot,
                    )  # fmt: skip
                await self.refresh_metrics()
            if time.time() - forgotten > 3600:
                forgotten = time.time()
                await self.risk.forget(time.time() - self.plan.settings.history_keep, fence=fence)
            # a busy spool wakes the evaluator after every page: passes then take at most a sixth of the time
            settle = min(every, max(0.2, PASS_SPACING * (time.monotonic() - began)))
            waiter = asyncio.ensure_future(woken.wait())
            try:
                if await pause_or(stopping, waiter, every, settle):
                    return
            finally:
                waiter.cancel()

    async def refresh_metrics(self) -> None:
        self.metrics.update(
            await self.risk.band_counts(),
            await self.risk.outcome_counts(),
            await self.risk.source_freshness(),
            {name: s.config.stale_after for name, s in self.plan.sources.items()},
        )


async def pause_or(
    stopping: asyncio.Event, woken: asyncio.Future[Any], seconds: float, settle: float = 0.2
) -> bool:
    """Wait ``seconds``, or until woken (then ``settle`` more) or stopping; True when stopping."""
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({stop, woken}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if stopping.is_set():
        return True
    if woken.done():
        return await pause(stopping, settle)  # pages of one poll arrive together: one pass for them
    return False
