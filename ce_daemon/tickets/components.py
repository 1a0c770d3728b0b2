"""The ticket orchestrator's running parts: a consumer per rule, a dispatcher per destination, a status
syncer per destination whose tickets have a status. Each is a unit of its own (one node runs it when
several share the state database) and commits under its unit's fence.

A rule's consumer reads its alert streams from the spool, decides each page (filter → mute → dedup →
tickets and intents, :mod:`ce_daemon.tickets.flow`), commits the decisions with its progress in one
transaction, then acknowledges the page. A dispatcher takes due intents in order, calls its plugin
under the destination's rate limit, and marks an intent done only once the destination answered; a
create whose answer may have been lost looks first (``find``) the next time.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from typing import Any, Final

import structlog
from aiolimiter import AsyncLimiter

from ce_daemon.backoff import Backoff, pause
from ce_daemon.errors import AuthError, ComponentConfigError, PermanentError, TransientError, describe
from ce_daemon.health import State
from ce_daemon.pipeline import Runtime
from ce_daemon.plugin import PluginContext, Ticket, TicketRef, TicketSink
from ce_daemon.redact import scrub
from ce_daemon.spool.store import Page
from ce_daemon.supervisor import Component
from ce_daemon.tickets.flow import Counts, RuleEngine, render_ticket
from ce_daemon.tickets.metrics import TicketMetrics
from ce_daemon.tickets.resolve import ResolvedDestination, ResolvedRule, TicketPlan
from ce_daemon.tickets.store import Intent, PageCommit, StoredTicket, TicketStore

__all__ = ["Dispatcher", "PageCache", "RuleConsumer", "StatusSyncer", "pages_of", "ticket_of"]

log = structlog.get_logger("ce_daemon.tickets")

REFRESH: Final = 5.0
"""Seconds between reloads of a rule's open tickets (closed or failed ones stop taking duplicates)."""
SLACK: Final = 7 * 86_400.0
"""Open tickets first alerted this long before the dedup window are still loaded (late alerts)."""
CALL_TIMEOUT: Final = 300.0
"""The longest one plugin call may take; past it the call counts as an uncertain failure."""
IDLE: Final = 0.5
"""How often an idle dispatcher looks for due intents."""
SYNC_BATCH: Final = 100


WRITE_BACK_TRIES: Final = 4
"""Tries of one incident write-back (the status change sent again after a transient refusal)."""
WRITE_BACK_WAIT: Final = 15.0
"""The longest wait between two tries of a write-back (a longer ``Retry-After`` is cut to it)."""


class PageCache:
    """Parsed spool pages shared by the rule consumers of this process.

    Every rule reading a stream reads the same pages at about the same time: a page is parsed once,
    not once per rule. Records are shared, so nothing may change them (the rules only read them).
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.hits = 0
        self._pages: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()

    def records(self, page: Page) -> list[dict[str, Any]]:
        """The records of ``page`` from its ``start`` on."""
        found = self._pages.get(page.seq)
        if found is None:
            found = self._pages[page.seq] = page.records
            while len(self._pages) > self.size:
                self._pages.popitem(last=False)
        else:
            self.hits += 1
            self._pages.move_to_end(page.seq)
        return found[page.start :] if page.start else found


_PAGES: weakref.WeakKeyDictionary[object, PageCache] = weakref.WeakKeyDictionary()


def pages_of(spool: object) -> PageCache:
    """The parsed-page cache of ``spool`` (one per spool: its page numbers are its own)."""
    found = _PAGES.get(spool)
    if found is None:
        found = _PAGES[spool] = PageCache()
    return found


_LIMITERS: weakref.WeakValueDictionary[tuple[str, float, int], AsyncLimiter] = weakref.WeakValueDictionary()


def limiter_for(destination: ResolvedDestination) -> AsyncLimiter:
    """The destination's request budget, shared by its dispatcher and its status syncer (in this loop)."""
    rate = destination.config.rate_limit
    key = (destination.config.name, rate, id(asyncio.get_running_loop()))
    found = _LIMITERS.get(key)
    if found is None:
        # a bucket of one second's worth: a burst never exceeds the rate over any second
        found = AsyncLimiter(max(1.0, rate), max(1.0, rate) / rate)
        _LIMITERS[key] = found
    return found


def ticket_of(intent: Intent, stored: StoredTicket, plan: TicketPlan | None) -> Ticket:
    """The ticket an intent tells its destination about: its queue's templates rendered now, for the
    alert it carries, with the group's count as it is now."""
    payload = intent.payload
    alert = payload.get("alert")
    alert = alert if isinstance(alert, dict) else {}
    rule = plan.rules.get(stored.rule) if plan is not None else None
    queue = payload.get("queue")
    if rule is not None and isinstance(queue, int) and 0 <= queue < len(rule.queues):
        rendered = render_ticket(rule.queues[queue], stored.rule, alert)
    else:  # the rule or its queue is gone from the file: what was stored
        title = payload.get("title") or stored.title
        rendered = {"title": title, "description": title, "severity": "medium", "fields": {}}
    return Ticket(
        key=stored.key,
        rule=stored.rule,
        title=str(rendered["title"]),
        description=str(rendered["description"]),
        severity=str(rendered["severity"]),
        fields={str(k): str(v) for k, v in dict(rendered["fields"]).items()},
        alert=alert,
        count=stored.dedup_count,
    )


class RuleConsumer(Component):
    """One rule: reads its streams from the spool and stores tickets and intents, then acknowledges."""

    kind = "ticket_rule"

    def __init__(self, name: str, rule: ResolvedRule, runtime: Runtime) -> None:
        super().__init__(name, rule.fingerprint)
        self.rule = rule
        self.runtime = runtime
        self.tickets = TicketStore(runtime.store)
        self.log = log.bind(component=name)
        self.status.counters.update(
            {"alerts": 0, "filtered": 0, "muted": 0, "opened": 0, "duplicates": 0, "pending_approval": 0}
        )

    async def start(self) -> None:
        self.status.ok("reading the spool")

    async def _load(self, engine: RuleEngine) -> None:
        dedup = self.rule.config.dedup
        window = dedup.window if dedup is not None else 0.0
        engine.load(await self.tickets.open_tickets(self.rule.config.name, time.time() - window - SLACK))

    async def run(self, stopping: asyncio.Event) -> None:
        spool = self.runtime.spool
        pages = pages_of(spool)
        name = self.rule.config.name
        engine = RuleEngine(self.rule)
        await self._load(engine)
        loaded = time.monotonic()
        progress = await self.tickets.progress(name)
        while not stopping.is_set() and not (self.lease is not None and self.lease.lost):
            page = await spool.next_page(self.name, timeout=1.0)
            if page is None:
                self.status.beat()
                continue
            fence = self.lease.fence if self.lease is not None else None
            if progress.get(page.stream, -1) < page.seq:  # else: committed before a crash, not yet acked
                if time.monotonic() - loaded > REFRESH:
                    await self._load(engine)
                    loaded = time.monotonic()
                commit = PageCommit(name)
                counts = engine.decide(pages.records(page), time.time(), commit)
                commit.progress[page.stream] = page.seq
                await self.tickets.commit(commit, fence=fence)
                progress[page.stream] = page.seq
                self._count(counts)
            await spool.ack(self.name, page.seq, fence=fence)
            if self.status.state is not State.OK:
                self.status.ok()

    def _count(self, counts: Counts) -> None:
        for name in ("alerts", "filtered", "muted", "opened", "duplicates", "pending_approval"):
            amount = getattr(counts, name)
            if amount:
                self.status.count(name, amount)
        if counts.opened or counts.duplicates:
            self.log.info(
                "tickets.decided", opened=counts.opened, duplicates=counts.duplicates, muted=counts.muted
            )


class PluginHolder(Component):
    """A component that holds one ``ticket_sink`` plugin, opened at start and after a failure."""

    def __init__(
        self, name: str, destination: ResolvedDestination, runtime: Runtime, context: PluginContext
    ) -> None:
        super().__init__(name, destination.fingerprint)
        self.destination = destination
        self.runtime = runtime
        self.context = context
        self.plugin: TicketSink[Any] | None = None
        self.tickets = TicketStore(runtime.store)
        self._limiter: AsyncLimiter | None = None
        self.log = context.log
        self.failures = 0

    @property
    def limiter(self) -> AsyncLimiter:
        """The destination's request budget (made in the running loop on first use)."""
        if self._limiter is None:
            self._limiter = limiter_for(self.destination)
        return self._limiter

    async def start(self) -> None:
        """Open the plugin and ask its health (a failure at start: the component runs degraded)."""
        await self._open()

    async def _open(self) -> TicketSink[Any]:
        info = self.destination.plugin
        assert info.cls is not None
        plugin = info.cls(self.destination.options, self.context)
        assert isinstance(plugin, TicketSink)
        try:
            await plugin.open()
            health = await plugin.health()
        except BaseException:
            await plugin.close()
            raise
        if not health.ok:
            await plugin.close()
            raise TransientError(f"{info.name!r} unhealthy: {health.detail}")
        self.plugin = plugin
        self.status.ok(health.detail)
        return plugin

    async def opened(self) -> TicketSink[Any]:
        """The plugin, opened first when it is not."""
        return self.plugin if self.plugin is not None else await self._open()

    async def close(self) -> None:
        plugin, self.plugin = self.plugin, None
        if plugin is not None:
            await plugin.close()

    def lost(self, stopping: asyncio.Event) -> bool:
        """Whether to stop now: asked to, or the unit's lease is gone."""
        return stopping.is_set() or (self.lease is not None and self.lease.lost)

    @property
    def fence(self) -> Any:
        return self.lease.fence if self.lease is not None else None


class Dispatcher(PluginHolder):
    """Sends one destination's due intents, oldest first, at its rate; records each answer."""

    kind = "ticket_destination"

    def __init__(
        self,
        name: str,
        destination: ResolvedDestination,
        plan: TicketPlan,
        runtime: Runtime,
        context: PluginContext,
        fingerprint: str | None = None,
    ) -> None:
        super().__init__(name, destination, runtime, context)
        self.plan = plan
        if fingerprint is not None:
            self.fingerprint = fingerprint
        self.backoff = Backoff(first=1.0, cap=300.0)
        self.paused_until = 0.0
        self.metrics = runtime.metrics.own(TicketMetrics)
        self.counted = 0.0
        self.status.counters.update(
            {"created": 0, "updated": 0, "resolved": 0, "adopted": 0, "retries": 0, "failed": 0}
        )

    async def run(self, stopping: asyncio.Event) -> None:
        name = self.destination.config.name
        while not self.lost(stopping):
            await self._refresh_metrics()
            try:
                plugin = await self.opened()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a plugin that cannot open waits, the others go on
                self.failures += 1
                self.status.degraded(scrub(describe(exc)))
                if await pause(stopping, self.backoff.delay(self.failures)):
                    return
                continue
            wait = self.paused_until - time.time()
            if wait > 0 and await pause(stopping, wait):
                return
            due = await self.tickets.due(name, time.time())
            if not due:
                if await pause(stopping, IDLE):
                    return
                continue
            for intent in due:
                if self.lost(stopping) or time.time() < self.paused_until:
                    break
                if not await self.send(plugin, intent):
                    break

    async def _refresh_metrics(self) -> None:
        if time.monotonic() - self.counted < 5.0:
            return
        self.counted = time.monotonic()
        try:
            self.metrics.update(await self.tickets.counts(), await self.tickets.outbox())
        except Exception as exc:  # noqa: BLE001 - metrics never stop the dispatch
            self.log.debug("tickets.metrics_failed", error=describe(exc))

    async def send(self, plugin: TicketSink[Any], intent: Intent) -> bool:  # noqa: PLR0911 - one exit per outcome
        """Tell the destination about one intent; False when the dispatcher should stop this round."""
        stored = await self.tickets.ticket(intent.ticket)
        fence = self.fence
        if stored is None:  # the ticket is gone: nothing to say
            await self.tickets.done(intent, external_id="", url="", state={}, status=None, fence=fence)
            return True
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                ref, status = await self._call(plugin, intent, stored)
        except asyncio.CancelledError:
            raise
        except TransientError as exc:
            return await self._later(intent, exc, exc.retry_after)
        except TimeoutError:
            return await self._later(intent, TransientError("no answer in time"), None)
        except PermanentError as exc:
            reason = scrub(describe(exc))
            await self.tickets.failed(intent, reason, fence=fence)
            self.status.count("failed")
            self.log.warning("ticket.failed", ticket=intent.ticket, intent=intent.intent, error=reason)
            return True
        except (AuthError, ComponentConfigError) as exc:
            await self._later(intent, exc, None)
            await self.close()  # opened again next round: the credentials may have been fixed
            return False
        except Exception as exc:  # noqa: BLE001 - a plugin's bug delays its tickets, never the daemon
            return await self._later(intent, exc, None)
        await self.tickets.done(
            intent, external_id=ref.id, url=ref.url, state=ref.state, status=status, fence=fence
        )
        self.failures = 0
        if self.status.state is not State.OK:
            self.status.ok()
        self.log.info("ticket.sent", ticket=intent.ticket, intent=intent.intent, external_id=ref.id)
        return True

    async def _call(
        self, plugin: TicketSink[Any], intent: Intent, stored: StoredTicket
    ) -> tuple[TicketRef, str | None]:
        """The plugin call of ``intent``: the ticket's ref afterwards, and its new status (None: as is)."""
        if intent.intent != "create" and not stored.external_id:
            # its create never went through: nothing to update or resolve
            return TicketRef(stored.external_id, stored.url, stored.state), None
        if not intent.tried:
            # Marked before the first call, whose answer may be lost. The ticket is read again with the
            # mark: a page's duplicates counted after it get an update of their own, those before are in it.
            stored = await self.tickets.tried(intent, fence=self.fence) or stored
        ticket = ticket_of(intent, stored, self.plan)
        if intent.intent == "create":
            opened = "new" if plugin.tracks else "notified"
            if intent.tried:  # an earlier try may have reached the destination: look before re-creating
                await self.limiter.acquire()
                found = await plugin.find(ticket.key)
                if found is not None:
                    self.status.count("adopted")
                    self.log.info("ticket.adopted", ticket=ticket.key, external_id=found.id)
                    return found, opened
            await self.limiter.acquire()
            ref = await plugin.create(ticket)
            self.status.count("created")
            return ref, opened
        current = TicketRef(stored.external_id, stored.url, stored.state)
        await self.limiter.acquire()
        if intent.intent == "resolve":
            await plugin.resolve(current)
            self.status.count("resolved")
            return current, "closed"
        ref = await plugin.update(current, ticket)
        self.status.count("updated")
        return ref, None

    async def _later(self, intent: Intent, exc: BaseException, retry_after: float | None) -> bool:
        reason = scrub(describe(exc))
        now = time.time()
        delay = self.backoff.delay(intent.attempts + 1, retry_after)
        # the destination said when to come back, or seems down: nothing of it goes before
        self.paused_until = max(self.paused_until, now + (retry_after if retry_after is not None else delay))
        await self.tickets.later(intent, reason, now + delay, fence=self.fence)
        self.status.count("retries")
        self.failures += 1
        self.status.degraded(reason)
        self.log.warning(
            "ticket.retry", ticket=intent.ticket, intent=intent.intent, error=reason,
            attempt=intent.attempts + 1, retry_in=round(delay, 3),
        )  # fmt: skip
        return False


class StatusSyncer(PluginHolder):
    """Fetches the status of a tracking destination's open tickets every ``sync_every``, records changes."""

    kind = "ticket_sync"

    def __init__(
        self,
        name: str,
        destination: ResolvedDestination,
        plan: TicketPlan,
        runtime: Runtime,
        context: PluginContext,
        write_back: Any = None,
    ) -> None:
        super().__init__(name, destination, runtime, context)
        self.plan = plan
        self.write_back = write_back
        self.status.counters.update({"synced": 0, "changed": 0, "written_back": 0})

    async def run(self, stopping: asyncio.Event) -> None:
        backoff = Backoff(first=5.0, cap=self.destination.config.sync_every)
        while not self.lost(stopping):
            try:
                await self.sync_once()
                self.failures = 0
                wait = self.destination.config.sync_every
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed sync is tried again later
                self.failures += 1
                reason = scrub(describe(exc))
                self.status.degraded(reason)
                self.log.warning("tickets.sync_failed", error=reason)
                if isinstance(exc, AuthError | ComponentConfigError):
                    await self.close()
                wait = backoff.delay(self.failures, getattr(exc, "retry_after", None))
            if await pause(stopping, wait):
                return

    async def sync_once(self) -> int:
        """One pass over the open tickets; how many changed."""
        plugin = await self.opened()
        after, changed = 0, 0
        while batch := await self.tickets.tracked(self.destination.config.name, after, SYNC_BATCH):
            after = batch[-1].id
            await self.limiter.acquire()
            by_id = {t.external_id: t for t in batch}
            answers = await plugin.statuses([TicketRef(t.external_id, t.url, t.state) for t in batch])
            changes = [
                (by_id[a.id], a.status, a.raw)
                for a in answers
                if a.id in by_id and a.status != by_id[a.id].status
            ]
            await self.tickets.statuses_changed(changes, fence=self.fence)
            self.status.count("synced", len(batch))
            self.status.count("changed", len(changes))
            changed += len(changes)
            for ticket, status, _ in changes:
                self.log.info("ticket.status", ticket=ticket.key, old=ticket.status, new=status)
                await self._write_back(ticket, status)
        self.status.ok()
        return changed

    async def _write_back(self, ticket: StoredTicket, status: str) -> None:
        rule = self.plan.rules.get(ticket.rule)
        if self.write_back is None or rule is None or not rule.config.write_back or not ticket.object_id:
            return
        backoff = Backoff(first=1.0, cap=WRITE_BACK_WAIT)
        for attempt in range(1, WRITE_BACK_TRIES + 1):
            try:
                await self.write_back(rule.config.tenant, ticket, status)
                break
            except TransientError as exc:  # a busy tenant (429, 5xx, a lost answer): the same change again
                if attempt == WRITE_BACK_TRIES:
                    self.log.warning(
                        "ticket.write_back_failed", ticket=ticket.key, error=scrub(describe(exc))
                    )
                    return
                wait = min(WRITE_BACK_WAIT, backoff.delay(attempt, exc.retry_after))
                self.log.info("ticket.write_back_retry", ticket=ticket.key, retry_in=round(wait, 2))
                await asyncio.sleep(wait)
            except Exception as exc:  # noqa: BLE001 - the ticket's status is recorded whatever Netskope says
                self.log.warning("ticket.write_back_failed", ticket=ticket.key, error=scrub(describe(exc)))
                return
        await self.tickets.written_back(ticket.key)
        self.status.count("written_back")
