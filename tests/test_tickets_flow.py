"""The ticket flow through the components, on both state backends, with an in-test destination.

Alerts → rule consumer (filter, mute, dedup; decisions and progress in one transaction, then the ack) →
outbox → dispatcher (create, update, resolve; a lost answer looked up before re-creating; refusals
fail the ticket until retried by hand) → status syncer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from prometheus_client import generate_latest
from test_tickets_support import BOARD, NOW, Board, alert, destination, rule

from ce_daemon.config.model import Tenant
from ce_daemon.errors import AuthError, PermanentError, TransientError
from ce_daemon.metrics import Metrics
from ce_daemon.pipeline import Runtime
from ce_daemon.plugin import PluginContext
from ce_daemon.spool.codec import CODEC, encode
from ce_daemon.spool.store import Page
from ce_daemon.store import Store
from ce_daemon.store.base import Transaction
from ce_daemon.testing.pipelines import backlog_simulator
from ce_daemon.testing.state import open_test_store
from ce_daemon.tickets.components import Dispatcher, RuleConsumer, StatusSyncer
from ce_daemon.tickets.flow import RuleEngine
from ce_daemon.tickets.resolve import ResolvedRule, TicketPlan
from ce_daemon.tickets.settings import Tickets
from ce_daemon.tickets.store import TICKETS_MIGRATIONS, PageCommit, TicketStore
from ce_daemon.tickets.writeback import IncidentWriter


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    BOARD.__dict__.update(Board().__dict__)
    opened: Store = await open_test_store(tmp_path / "state.db", TICKETS_MIGRATIONS)
    async with opened:
        yield opened


class FakeSpool:
    """Pages handed out once each until acknowledged; ``crash_on_ack`` raises on the next ack."""

    def __init__(self, pages: list[Page], stopping: asyncio.Event) -> None:
        self.pages = pages
        self.acked: list[int] = []
        self.crash_on_ack = False
        self.stopping = stopping

    async def next_page(self, consumer: str, timeout: float | None = None) -> Page | None:
        waiting = [p for p in self.pages if p.seq not in self.acked]
        if not waiting:
            self.stopping.set()
            return None
        return waiting[0]

    async def ack(self, consumer: str, seq: int, position: int | None = None, *, fence: Any = None) -> None:
        if self.crash_on_ack:
            self.crash_on_ack = False
            raise ConnectionResetError("killed between the commit and the ack")
        self.acked.append(seq)


def page(seq: int, alerts: list[dict[str, Any]], stream: str = "sim/alerts/dlp") -> Page:
    return Page(seq, stream, encode(alerts), CODEC, len(alerts), None, None)


def runtime(store: Store, tmp_path: Path, spool: Any = None) -> Runtime:
    return cast(Runtime, SimpleNamespace(store=store, metrics=Metrics(), data_dir=tmp_path, spool=spool))


async def consume(
    store: Store, tmp_path: Path, resolved: ResolvedRule, pages: list[Page], crash: bool = False
) -> Any:
    stopping = asyncio.Event()
    spool = FakeSpool(pages, stopping)
    spool.crash_on_ack = crash
    consumer = RuleConsumer("ticket_rule:r", resolved, runtime(store, tmp_path, spool))
    await consumer.start()
    await consumer.run(stopping)
    return consumer


def dispatcher(store: Store, tmp_path: Path) -> Dispatcher:
    dest = destination()
    plan = TicketPlan(Tickets(), {"dest": dest}, {})
    context = PluginContext("dest", tmp_path, tmp_path)
    return Dispatcher("ticket_destination:dest", dest, plan, runtime(store, tmp_path), context)


async def drain(d: Dispatcher, rounds: int = 10) -> None:
    """Send every due intent (failed tries come due again at once)."""
    tickets = TicketStore(d.runtime.store)
    plugin = await d.opened()
    for _ in range(rounds):
        due = await tickets.due("dest", NOW * 2)
        if not due:
            return
        for intent in due:
            await d.send(plugin, intent)
        d.paused_until = 0.0


async def test_alerts_become_tickets_and_duplicates_update_them_with_their_count(
    store: Store, tmp_path: Path
) -> None:
    resolved = rule(dedup={"fields": ["user"]}, filter={"severity": "high"})
    await consume(
        store, tmp_path, resolved, [page(1, [alert(n) for n in range(6)] + [alert(9, severity="low")])]
    )
    tickets = TicketStore(store)
    listed = await tickets.search(sort="rule")
    assert sorted(t.dedup_count for t in listed) == [2, 2, 2] and {t.status for t in listed} == {"pending"}
    d = dispatcher(store, tmp_path)
    await drain(d)
    assert BOARD.creates == 3 and sorted(t["count"] for t in BOARD.tickets.values()) == [2, 2, 2]
    assert not BOARD.updates  # the creates carried the count: no update needed
    listed = await tickets.search()
    assert {t.status for t in listed} == {"new"} and all(
        t.url.startswith("https://board.example/") for t in listed
    )
    # two more pages of duplicates before the dispatcher runs: one update per ticket, with the latest count
    await consume(store, tmp_path, resolved, [page(2, [alert(n) for n in (10, 13)]), page(3, [alert(16)])])
    await drain(d)
    assert len(BOARD.updates) == 1 and BOARD.updates[0][1] == 5
    await d.close()


class MarkingHook:
    """A store that runs ``between`` once: when the dispatcher's first write transaction opens (it marks
    an intent tried), or (``inside``) at the end of that transaction, just before its COMMIT: where a
    consumer's page of duplicates could slip in between a dispatcher's read of the ticket and its mark."""

    def __init__(self, store: Store, between: Callable[[], Awaitable[None]], *, inside: bool) -> None:
        self.store = store
        self.between: Callable[[], Awaitable[None]] | None = between
        self.inside = inside

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def _run(self) -> None:
        if self.between is not None:
            between, self.between = self.between, None
            await between()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        if not self.inside:
            await self._run()
        async with self.store.transaction() as tx:
            yield tx
            if self.inside:
                await self._run()


class LockWatch:
    """The consumer's store: ``waiting`` is set as its page is about to wait for what a dispatcher
    marking an intent holds (SQLite: the database itself, for a read too; PostgreSQL: the advisory
    lock a commit of duplicates takes). A consumer that never waits simply finishes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.waiting = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Transaction]:
        if self.store.backend == "sqlite":
            self.waiting.set()
        async with self.store.read() as tx:
            yield tx

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        if self.store.backend == "sqlite":
            self.waiting.set()
        async with self.store.transaction() as tx:
            yield cast(Transaction, _SerializeWatch(tx, self.waiting))


class _SerializeWatch:
    def __init__(self, tx: Transaction, waiting: asyncio.Event) -> None:
        self._tx = tx
        self._waiting = waiting

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    async def serialize(self, name: str) -> None:
        self._waiting.set()
        await self._tx.serialize(name)


@pytest.mark.parametrize("inside", [False, True], ids=["before-the-mark", "inside-the-mark"])
async def test_duplicates_counted_while_a_create_goes_out_reach_the_destination(
    store: Store, tmp_path: Path, inside: bool
) -> None:
    """A page of duplicates committed while the dispatcher marks a create tried: the count either goes
    with the create or in an update after it, never lost between the two (on both backends)."""
    resolved = rule(dedup={"fields": ["user"]})
    await consume(store, tmp_path, resolved, [page(1, [alert(0)])])
    watched = LockWatch(store)
    racing: list[asyncio.Task[Any]] = []

    async def duplicates() -> None:
        pages = [page(2, [alert(3), alert(6)])]
        racing.append(asyncio.create_task(consume(cast(Store, watched), tmp_path, resolved, pages)))
        if not inside:  # nothing of the dispatcher's is under way: the page is committed whole
            await racing[0]
            return
        # as far as it gets: to the lock the mark holds, or all the way if it takes none
        waiting = asyncio.create_task(watched.waiting.wait())
        await asyncio.wait([racing[0], waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()

    d = dispatcher(cast(Store, MarkingHook(store, duplicates, inside=inside)), tmp_path)
    await drain(d)
    assert racing
    await racing[0]
    await drain(d)
    [ticket] = await TicketStore(store).search()
    assert ticket.dedup_count == 3
    [sent] = BOARD.tickets.values()
    assert sent["count"] == 3, (sent, BOARD.updates)
    await d.close()


async def test_a_page_committed_but_not_acknowledged_is_not_counted_twice(
    store: Store, tmp_path: Path
) -> None:
    resolved = rule(dedup={"fields": ["user"]})
    pages = [page(1, [alert(0), alert(3)])]
    with pytest.raises(ConnectionResetError):
        await consume(store, tmp_path, resolved, pages, crash=True)
    await consume(store, tmp_path, resolved, pages)  # the same page again, after a restart
    [ticket] = await TicketStore(store).search()
    assert ticket.dedup_count == 2
    assert len(await TicketStore(store).intents(ticket.key)) == 1


async def test_a_lost_create_answer_is_looked_up_not_created_again(store: Store, tmp_path: Path) -> None:
    await consume(store, tmp_path, rule(), [page(1, [alert(1)])])
    BOARD.lose_answer = 1
    d = dispatcher(store, tmp_path)
    await drain(d)
    assert BOARD.creates == 1 and BOARD.finds == 1
    [ticket] = await TicketStore(store).search()
    assert ticket.external_id == "T1" and ticket.status == "new" and d.status.counters["adopted"] == 1
    await d.close()


async def test_transient_failures_retry_with_retry_after_and_refusals_fail_until_retried(
    store: Store, tmp_path: Path
) -> None:
    await consume(store, tmp_path, rule(), [page(1, [alert(1), alert(2)])])
    tickets = TicketStore(store)
    d = dispatcher(store, tmp_path)
    plugin = await d.opened()
    BOARD.fail = [TransientError("429 slow down", retry_after=30.0)]
    [first, _] = await tickets.due("dest", NOW * 2)
    assert await d.send(plugin, first) is False
    assert d.paused_until >= __import__("time").time() + 29  # nothing goes to it before Retry-After
    [row] = await tickets.intents(first.ticket)
    assert row["attempts"] == 1 and row["next_try"] >= d.paused_until - 1 and row["state"] == "pending"
    BOARD.fail = [PermanentError("422 invalid field"), None]
    await drain(d)
    failed = await tickets.search(status="failed")
    assert len(failed) == 1 and "422" in failed[0].last_error and BOARD.creates == 1
    assert await tickets.retry(failed[0].key)
    await drain(d)
    assert BOARD.creates == 2 and not await tickets.search(status="failed")
    await d.close()


async def test_approval_holds_the_ticket_until_approved_or_declined(store: Store, tmp_path: Path) -> None:
    resolved = rule(queues=[{"to": "dest", "require_approval": True}])
    await consume(store, tmp_path, resolved, [page(1, [alert(1), alert(2)])])
    tickets = TicketStore(store)
    d = dispatcher(store, tmp_path)
    await drain(d)
    assert BOARD.creates == 0
    one, two = await tickets.search(sort="rule")
    assert await tickets.decide(one.key, approve=True) and await tickets.decide(two.key, approve=False)
    assert not await tickets.decide(two.key, approve=True)  # decided already
    await drain(d)
    assert BOARD.creates == 1
    statuses = {t.key: (t.status, t.approval) for t in await tickets.search()}
    assert statuses == {one.key: ("new", "approved"), two.key: ("declined", "declined")}
    await d.close()


async def test_status_sync_records_changes_and_a_closed_ticket_takes_no_more_duplicates(
    store: Store, tmp_path: Path
) -> None:
    resolved = rule(dedup={"fields": ["user"]})
    await consume(store, tmp_path, resolved, [page(1, [alert(0)])])
    d = dispatcher(store, tmp_path)
    await drain(d)
    plan = TicketPlan(Tickets(), {"dest": destination()}, {"r": resolved})
    syncer = StatusSyncer("ticket_sync:dest", destination(), plan, runtime(store, tmp_path),
                          PluginContext("dest", tmp_path, tmp_path))  # fmt: skip
    assert await syncer.sync_once() == 0
    BOARD.statuses["T1"] = "closed"
    assert await syncer.sync_once() == 1
    [ticket] = await TicketStore(store).search()
    assert ticket.status == "closed" and ticket.raw_status == "raw"
    await consume(store, tmp_path, resolved, [page(2, [alert(3)])])  # u0 again: a new ticket
    assert len(await TicketStore(store).search()) == 2
    await syncer.close()
    await d.close()


async def test_the_engine_reloads_open_tickets_from_the_store(store: Store, tmp_path: Path) -> None:
    resolved = rule(dedup={"fields": ["user"], "window": "1h"})
    engine = RuleEngine(resolved)
    commit = PageCommit("r")
    engine.decide([alert(0)], NOW, commit)
    await TicketStore(store).commit(commit)
    fresh = RuleEngine(resolved)
    fresh.load(await TicketStore(store).open_tickets("r", NOW - 7200))
    again = PageCommit("r")
    fresh.decide([alert(3)], NOW, again)
    assert not again.tickets and list(again.duplicates) == [commit.tickets[0]["key"]]


async def test_status_changes_are_written_back_to_the_netskope_incident(store: Store, tmp_path: Path) -> None:
    token = "write-back-token-0123456789"
    resolved = rule(write_back=True)
    await consume(store, tmp_path, resolved, [page(1, [alert(1, object_id="inc-77")])])
    d = dispatcher(store, tmp_path)
    await drain(d)
    async with backlog_simulator(token, 1, (("alerts", "dlp"),)) as sim:
        assert sim.url is not None
        writer = IncidentWriter([Tenant.model_validate({"name": "sim", "url": sim.url, "token": token})])
        plan = TicketPlan(Tickets(), {"dest": destination()}, {"r": resolved})
        syncer = StatusSyncer("ticket_sync:dest", destination(), plan, runtime(store, tmp_path),
                              PluginContext("dest", tmp_path, tmp_path), write_back=writer.write)  # fmt: skip
        BOARD.statuses["T1"] = "in_progress"
        assert await syncer.sync_once() == 1
        BOARD.statuses["T1"] = "closed"
        assert await syncer.sync_once() == 1
        async with aiohttp.ClientSession() as session, session.get(f"{sim.url}/_sim/incidents") as answer:
            report = await answer.json()
        assert report["incidents"] == {"inc-77": {"status": "closed"}}
        assert [(u["old_value"], u["new_value"]) for u in report["updates"]] == [
            ("new", "in_progress"),
            ("in_progress", "closed"),
        ]
        assert syncer.status.counters["written_back"] == 2
        wrong = IncidentWriter([Tenant.model_validate({"name": "sim", "url": sim.url, "token": "nope" * 8})])
        [ticket] = await TicketStore(store).search()
        with pytest.raises(AuthError):
            await wrong.write("sim", ticket, "new")
        await syncer.close()
    await d.close()


async def test_metrics_count_tickets_the_outbox_and_failures(store: Store, tmp_path: Path) -> None:
    await consume(store, tmp_path, rule(), [page(1, [alert(1), alert(2), alert(3)])])
    d = dispatcher(store, tmp_path)
    BOARD.fail = [PermanentError("422 refused")]
    await drain(d)
    tickets = TicketStore(store)
    metrics = d.runtime.metrics
    d.counted = 0.0
    await d._refresh_metrics()
    text = generate_latest(metrics.registry).decode()
    assert 'ce_daemon_tickets{destination="dest",status="notified"}' not in text  # the in-test one tracks
    assert 'ce_daemon_tickets{destination="dest",status="new"} 2.0' in text
    assert 'ce_daemon_tickets{destination="dest",status="failed"} 1.0' in text
    assert 'ce_daemon_ticket_outbox{destination="dest",state="failed"} 1.0' in text
    assert 'ce_daemon_ticket_failures{destination="dest"} 1.0' in text
    assert await tickets.counts() == [("dest", "failed", 1), ("dest", "new", 2)]
    await d.close()
