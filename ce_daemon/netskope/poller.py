"""Iterator pollers: one per (tenant, alerts|events, subtype) stream, committing pages before advancing.

The crash windows of the iterator are closed like this: the intent to advance is written
durably *before* ``operation=next`` is sent; the page and the cleared intent are committed
in one transaction. On restart with an intent recorded, or after any answer that leaves it
uncertain whether the server's cursor moved (see `_fetch`), the poller asks ``resend``; a resend
answering with the page already committed (same first and last ``_id``, same count) is
recognised and not spooled twice.

A page's records usually reach the spool as the JSON text the tenant sent (`ce_daemon.netskope.rawpages`:
nothing parsed but ``_id`` and ``timestamp``). A record the spool cannot store as it came is stored with
the offending values as their JSON text (`ce_daemon.netskope.pages`), counted and logged: one bad record
never stalls its stream.
A poller that gets no page for longer than its settings explain (:func:`stall_limit`) reports
itself degraded, saying what it is waiting for.

When several nodes share the work, a poller runs under its tenant's lease (``Component.lease``): it
sends a request only while the lease is held (a late renewal pauses it; a lost lease ends it at
once, cleanly), bounds each answer's wait by what the lease surely has left, and passes the lease's
fence to every commit, so a node that lost the tenant can no longer move its iterators' checkpoints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from typing import TYPE_CHECKING, Any

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from ce_daemon.backoff import Backoff, pause
from ce_daemon.config.model import Tenant
from ce_daemon.errors import TransientError
from ce_daemon.health import State
from ce_daemon.keys import StreamKey
from ce_daemon.netskope.checkpoint import Checkpoints, IteratorMark, page_marker
from ce_daemon.netskope.client import Page, TenantClient, UncertainAnswerError
from ce_daemon.netskope.pages import Repair, repair_records
from ce_daemon.netskope.rawpages import NATIVE_SPLITTER, SPLITTER, SPLITTER_STATE, RecordTexts
from ce_daemon.netskope.subtypes import all_streams
from ce_daemon.spool import UnencodableRecordsError
from ce_daemon.store import Fence
from ce_daemon.supervisor import Component

if TYPE_CHECKING:
    from ce_daemon.pipeline import Runtime

log = structlog.get_logger("ce_daemon.poller")

INSTALL_ID_KEY = "netskope.install_id"
LEASE_POLL = 0.1
"""Seconds between two looks at a lease that is neither held nor lost (its renewal is late)."""


class Stopping(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside the retry loop when the component was asked to stop."""


def stall_limit(tenant: Tenant) -> float:
    """How long a working poller of ``tenant`` can go without a page, in seconds.

    Between two pages it pauses once (the page's ``wait_time``, a retry's backoff or a 429's
    ``Retry-After``: each capped by a setting), queues once for the tenant's send window (behind,
    at worst, every stream and its look-back) and waits for one answer (``timeout``).
    """
    queue = 2 * len(all_streams()) / tenant.rate_limit
    return max(tenant.max_wait_time, tenant.max_retry_delay) + queue + tenant.timeout


class Poller(Component):
    """Pulls one stream forever, from now (or the tenant's ``start``) on."""

    kind = "poller"
    iterator_suffix = ""

    def __init__(
        self,
        name: str,
        fingerprint: str,
        stream: StreamKey,
        tenant: Tenant,
        tenant_fingerprint: str,
        runtime: Runtime,
        *,
        now: float | None = None,
    ) -> None:
        super().__init__(name, fingerprint)
        self.now = time.time() if now is None else now
        self.stream = stream
        self.tenant = tenant
        self.client: TenantClient = runtime.client_for(tenant, tenant_fingerprint)
        self.spool = runtime.spool
        self.store = runtime.store
        self.checkpoints = Checkpoints(runtime.store)
        self.iterator_key = stream.key + self.iterator_suffix
        self.log = log.bind(component=name)
        self._stopping: asyncio.Event | None = None
        self._stall_limit = stall_limit(tenant)
        self._last_page_at = time.monotonic()
        self._doing = "starting"
        self._stall_reported = False
        self._wait_problem: str | None = None

    # -- naming ------------------------------------------------------------------------------

    async def _index_name(self) -> str:
        """The stable iterator index: persisted, unique to this installation (two daemons never share one)."""
        state = await self.checkpoints.state(self.iterator_key)
        if state is not None and state.index:
            return str(state.index)
        install = await self.store.get_meta(INSTALL_ID_KEY)
        if install is None:
            install = secrets.token_hex(4)
            await self.store.set_meta(INSTALL_ID_KEY, install)
        stream = self.stream
        name = f"ced{install}_{stream.tenant}_{stream.kind}_{stream.subtype}{self.iterator_suffix}"
        index = name.replace("#", "_").replace("/", "_")
        await self.checkpoints.set_index(self.iterator_key, index, fence=self.fence)
        return index

    @property
    def fence(self) -> Fence | None:
        """What every commit of the iterator passes: the lease's fence when several nodes share the work."""
        return self.lease.fence if self.lease is not None else None

    async def _lease_held(self, stopping: asyncio.Event) -> bool:
        """Whether the poller may send its next request: at once without a lease; under one, once it is
        held (a late renewal pauses the poller). False when the lease is lost, or when asked to stop."""
        lease = self.lease
        if lease is None or lease.held():
            return True
        doing = self._doing
        self._doing = f"paused: the lease of {lease.unit} was not renewed in time"
        self.status.degraded(self._doing)
        while not lease.held():
            if lease.lost:
                self.log.info("poller.lease_lost", unit=lease.unit, token=lease.token)
                self.status.stopped(f"lease of {lease.unit} lost: another node drives {self.stream}")
                return False
            if await pause(stopping, LEASE_POLL):
                return False
            self.status.beat()
        self._doing = doing
        return True

    def first_operation(self) -> str:
        """What a brand-new iterator starts with: the configured start, else now."""
        start = self.tenant.start
        return str(int(start if start is not None else self.now))

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping
        if SPLITTER != NATIVE_SPLITTER:  # the same records, about 4 µs more CPU each: worth knowing
            self.log.info("poller.python_splitter", splitter=SPLITTER, c_splitter=SPLITTER_STATE)
        index = await self._index_name()
        state = await self.checkpoints.state(self.iterator_key)
        if state is None or not state.first_pull_done:
            operation = self.first_operation()
        elif state.pending == "next":
            operation = "resend"  # a `next` was sent but its page never committed: the cursor may have moved
            self.log.info("poller.resuming_with_resend", index=index)
        else:
            operation = "next"
        self.status.ok(f"index {index}")
        self._last_page_at = time.monotonic()
        watch = asyncio.create_task(self._watch_progress(stopping))
        try:
            await self._pull(stopping, index, operation)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _pull(self, stopping: asyncio.Event, index: str, operation: str) -> None:
        while not stopping.is_set():
            if not await self._wait_for_space(stopping) or not await self._lease_held(stopping):
                return
            if operation != "resend":
                await self.checkpoints.record_intent(self.iterator_key, "next", fence=self.fence)
            try:
                page, operation = await self._fetch(index, operation)
            except Stopping:
                return
            if await self._commit(page, operation):
                return
            self._note_wait_problem(page.wait_problem)
            operation, wait_time = "next", page.wait_time
            # A parsed page of 10,000 records takes ~60 MB: let it go now rather than hold it through
            # the wait for the next token, or every poller of a tenant keeps one alive.
            del page
            self._doing = f"waiting {wait_time:g}s, as the last page's wait_time asked"
            if wait_time > 0 and await pause(stopping, wait_time):
                return

    async def _commit(self, page: Page, operation: str, progress: dict[str, Any] | None = None) -> bool:
        """Spool the page (unless it is a resend of one already committed); True when this poller is done."""
        self._last_page_at = time.monotonic()
        self._stall_reported = False
        records = self._clean(page.records)
        state = await self.checkpoints.state(self.iterator_key)
        hwm = page.timestamp_hwm
        if records:
            first, last = _resend_id(records, 0), _resend_id(records, -1)
            if operation == "resend" and state is not None and state.is_committed(first, last, len(records)):
                self.log.info("poller.resend_already_committed", records=len(records))
                await self.checkpoints.mark_empty_page(
                    self.iterator_key, hwm, progress=progress, fence=self.fence
                )
                return False
            self._note_repairs(page.repairs)
            mark = IteratorMark(timestamp_hwm=hwm, progress=progress)
            began = time.monotonic()
            try:
                await self._append(records, mark)
            except UnencodableRecordsError:
                # Rare (a hostile or broken tenant), so the check costs nothing on the usual path. Only
                # parsed records are encoded: texts are stored as they came.
                assert isinstance(records, list)
                self._note_repairs(await asyncio.to_thread(repair_records, records))
                await self._append(records, mark)
            self.status.count("pages")
            self.status.count("records", len(records))
            if isinstance(records, list):  # the fast path could not take it: worth seeing when it is many
                self.status.count("pages_parsed")
            # ``seconds`` dates the commit's start: a commit whose fence check passed just before the
            # process was paused is logged after it resumes, and is no commit under a lost lease.
            self.log.debug(
                "poller.page_committed",
                records=len(records),
                hwm=hwm,
                operation=operation,
                seconds=round(time.monotonic() - began, 6),
            )
        else:
            await self.checkpoints.mark_empty_page(
                self.iterator_key, hwm, progress=progress, fence=self.fence
            )
            self.status.count("empty_pages")
        if hwm is not None:
            self.status.counters["timestamp_hwm"] = hwm
        self.status.ok(f"last page {len(records)} records")
        return False

    async def _append(self, records: list[dict[str, Any]] | RecordTexts, mark: IteratorMark) -> None:
        """Spool the page with its checkpoint: texts as they came (the fast path), else encoded."""
        commit = self.checkpoints.page_commit(self.iterator_key, records, mark)
        if isinstance(records, RecordTexts):
            first_id, last_id, _ = page_marker(records)
            await self.spool.append_texts(
                self.stream.key,
                records,
                first_id=first_id,
                last_id=last_id,
                commit=commit,
                fence=self.fence,
            )
        else:
            await self.spool.append(self.stream.key, records, commit=commit, fence=self.fence)

    def _note_repairs(self, repairs: list[Repair] | tuple[Repair, ...]) -> None:
        """Count and name the records stored with some values as JSON text."""
        if not repairs:
            return
        self.status.count("records_repaired", len(repairs))
        self.log.warning(
            "poller.records_repaired",
            records=len(repairs),
            ids=[repair.record_id for repair in repairs[:20]],
            reasons=sorted({reason for repair in repairs for reason in repair.reasons}),
            kept="each value the spool cannot store is kept as a string holding its JSON text",
        )

    def _note_wait_problem(self, problem: str | None) -> None:
        """Count a corrected ``wait_time``; log it when it differs from the last one (not on every page)."""
        if problem is not None:
            self.status.count("wait_time_corrected")
            if problem != self._wait_problem:
                self.log.warning("poller.wait_time_corrected", problem=problem)
        self._wait_problem = problem

    def _clean(self, records: list[Any] | RecordTexts) -> list[dict[str, Any]] | RecordTexts:
        """Keep every record that is an object; count and name what is not (bad input never stops us)."""
        if isinstance(records, RecordTexts):  # the fast path took only objects
            self._note_missing_fields(records.missing_fields())
            return records
        good = [r for r in records if isinstance(r, dict)]
        if len(good) != len(records):
            dropped = len(records) - len(good)
            self.status.count("malformed_records", dropped)
            self.log.warning(
                "poller.malformed_records",
                dropped=dropped,
                page_records=len(records),
                reason="records that are not JSON objects cannot be shipped",
            )
        self._note_missing_fields(sum(1 for r in good if "_id" not in r or "timestamp" not in r))
        return good

    def _note_missing_fields(self, missing: int) -> None:
        if missing:
            self.status.count("records_missing_fields", missing)
            self.log.warning("poller.records_missing_fields", records=missing, fields="_id/timestamp")

    async def _wait_for_space(self, stopping: asyncio.Event) -> bool:
        """Back-pressure: pause while the spool is full. False when asked to stop meanwhile."""
        if not self.spool.full:
            return True
        self.status.degraded("paused: spool full, waiting for consumers")
        self.log.warning("poller.paused_spool_full", used_bytes=self.spool.used_bytes)
        space = asyncio.create_task(self.spool.wait_for_space())
        stop = asyncio.create_task(stopping.wait())
        while not space.done() and not stopping.is_set():
            await asyncio.wait({space, stop}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            self.status.beat()
        stop.cancel()
        space.cancel()
        if stopping.is_set():
            return False
        self._last_page_at = time.monotonic()  # the pause was the consumers' doing, not a stall
        self.status.ok("resumed: spool has space")
        self.log.info("poller.resumed")
        return True

    async def _fetch(self, index: str, operation: str) -> tuple[Page, str]:
        """One page, retrying transient failures; switches from ``next`` to ``resend`` on an uncertain answer.

        The rule: ``resend`` after any failure that leaves it uncertain whether the request moved the
        server's cursor (`UncertainAnswerError`: no answer in time, the connection lost after the
        request left, a 5xx, a 200 that is no whole page), since only ``resend`` brings back a page the
        cursor moved past. Not after an answer proving it did not move (a 429 or another 4xx refused
        the request, ``ok != 1`` delivered no page, no connection was made): a resend there would bring
        back the page already committed, recognised and skipped, so it would be safe, but it would waste
        one of the tenant's few requests a second every time the window is crowded. An epoch (the first
        request of an iterator) is asked again as it is: it repositions the cursor whatever happened,
        whereas a resend on an index the server never saw answers an empty page (the simulator does),
        and taking that as the first page would start the stream at "now", skipping the configured start.
        The durable intent stays recorded until the page commits, so a crash meanwhile resends too.
        """
        assert self._stopping is not None
        current = operation
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            wait=self._delay,
            sleep=self._sleep,
            reraise=True,
            before_sleep=self._before_sleep,
        )
        async for attempt in retrying:
            with attempt:
                if self._stopping.is_set() or not await self._lease_held(self._stopping):
                    raise Stopping
                self._doing = f"asking the tenant ({current})"
                try:
                    page = await self.client.fetch(
                        self.stream.kind, self.stream.subtype, index, current, lease=self.lease
                    )
                except UncertainAnswerError as exc:
                    self.status.count(exc.counter)
                    if current == "next":
                        current = "resend"
                    raise
                return page, current
        raise AssertionError("unreachable: the retry loop either returns or raises")

    def _delay(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = exc.retry_after if isinstance(exc, TransientError) else None
        return Backoff(cap=self.tenant.max_retry_delay).delay(state.attempt_number, asked)

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        await pause(self._stopping, seconds)
        self.status.beat()

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.status.count("retries")
        self._doing = f"retrying: {exc}"  # the watch and this report say it in the same words
        if state.attempt_number >= 3 or self._stalled_for() is not None:
            self._trouble(self._doing)
        self.log.warning(
            "poller.retrying",
            attempt=state.attempt_number,
            error=str(exc),
            delay=round(state.upcoming_sleep, 2),
        )

    # -- progress --------------------------------------------------------------------------------

    async def _watch_progress(self, stopping: asyncio.Event) -> None:
        """Report the poller degraded when no page came for longer than :func:`stall_limit` allows."""
        while not await pause(stopping, self._stall_limit / 4):
            # not while the spool is full (the consumers' doing) or once a look-back has finished
            done = self.status.state is State.STOPPED
            if self._stalled_for() is not None and not self.spool.full and not done:
                self._trouble(self._doing)

    def _stalled_for(self) -> float | None:
        """Seconds since the last page, when that is longer than the stall limit."""
        age = time.monotonic() - self._last_page_at
        return age if age > self._stall_limit else None

    def _trouble(self, reason: str) -> None:
        """Degraded for ``reason``, saying first that no page came for too long when that is so."""
        age = self._stalled_for()
        if age is not None:
            reason = f"no page for {_seconds(age)} (at most {_seconds(self._stall_limit)} expected): {reason}"
            if not self._stall_reported:
                self._stall_reported = True
                limit = round(self._stall_limit)
                self.log.warning("poller.stalled", seconds=round(age), limit=limit, doing=self._doing)
        self.status.degraded(reason)


class HistoryPoller(Poller):
    """The look-back: its own iterator, from the start epoch until ``timestamp_hwm`` passes the end."""

    kind = "history"
    iterator_suffix = "#history"

    def first_operation(self) -> str:
        lookback = self.tenant.lookback
        assert lookback is not None
        return str(int(lookback.start or time.time()))

    async def run(self, stopping: asyncio.Event) -> None:
        state = await self.checkpoints.state(self.iterator_key)
        if state is not None and (state.progress or {}).get("done"):
            self.status.stopped("look-back complete")
            await stopping.wait()
            return
        await super().run(stopping)

    async def _commit(self, page: Page, operation: str, progress: dict[str, Any] | None = None) -> bool:
        lookback = self.tenant.lookback
        assert lookback is not None
        state = await self.checkpoints.state(self.iterator_key)
        saved = state.progress if state is not None else {}
        start = int(saved.get("start") or lookback.start or time.time())
        # "now" is the load's, where the maintenance iterator starts too: nothing falls in between
        end = int(saved.get("end") or lookback.end or self.now)
        records = _until(page.records, end)
        hwm = page.timestamp_hwm or start
        percent = 100.0 if end <= start else max(0.0, min(100.0, 100.0 * (hwm - start) / (end - start)))
        pages = int(saved.get("pages", 0)) + (1 if records else 0)
        count = int(saved.get("records", 0)) + len(records)
        done = hwm > end or (not page.records and percent >= 99.9)
        progress = {
            "pages": pages,
            "records": count,
            "percent": round(percent, 1),
            "start": start,
            "end": end,
            "done": done,
        }
        await super()._commit(dataclasses.replace(page, records=records), operation, progress)
        self.status.counters.update(percent=progress["percent"])
        self.log.info("history.progress", pages=pages, records=count, percent=progress["percent"])
        if done:
            self.log.info("history.complete", pages=pages, records=count)
            self.status.stopped("look-back complete")
            assert self._stopping is not None
            await self._stopping.wait()
        return done


def _until(records: list[Any] | RecordTexts, end: int) -> list[Any] | RecordTexts:
    """The records of a look-back page not dated after ``end`` (non-objects are left for `_clean`)."""
    if isinstance(records, RecordTexts):
        return records.keep(lambda position: not _after(records.field(position, "timestamp"), end))
    return [r for r in records if not (isinstance(r, dict) and _after(r.get("timestamp"), end))]


def _after(timestamp: Any, end: int) -> bool:
    return isinstance(timestamp, int | float) and timestamp > end


def _resend_id(records: list[dict[str, Any]] | RecordTexts, position: int) -> str:
    """The ``_id`` of a record as a resend is compared with the last page committed (``""`` for none)."""
    if isinstance(records, RecordTexts):
        return str(records.field(position, "_id", ""))
    return str(records[position].get("_id", ""))


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"
