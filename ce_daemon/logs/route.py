"""A log route: read the spool, filter, mute, format, batch, send, acknowledge.

The route's spool offset moves only after its sink acknowledged the whole batch; records the
target refused for good go to the dead-letter table with the reason. A route that is slow or
broken holds only its own offset, never another route's. When several nodes share the work, a
route is a unit of its own: it acknowledges under its lease's fence and stops reading once the lease
is lost (a node that lost it can no longer move the offset).

Counters in ``ce-daemon status``: ``received`` (records read from the spool), ``sent`` (accepted
by the sink), ``failed`` (records of send attempts that failed and are being retried, counted per
attempt), ``dead_lettered``, ``bytes`` (formatted bytes handed to the sink, one separator each),
``lag_s`` (now minus the newest record timestamp shipped; before the first batch is through, minus
the oldest record waiting; computed when status is read, so it grows while the sink is down), plus
``filtered``, ``muted``, ``retries`` and ``batches``.

Health: the route is degraded while its sink fails (retrying), while its start check has not passed
(its health is checked again while no batch is pending), and while at least half of the records of its
last ``HEALTH_WINDOW`` batches were dead-lettered (refused for good, or impossible to format): a route
whose every record is refused is not "ok". It is ok again once most of what it handles is delivered.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import add
from typing import TYPE_CHECKING, Any

import structlog

from ce_daemon.backoff import Backoff, pause
from ce_daemon.config.load import LoadedPipeline
from ce_daemon.errors import (
    AuthError,
    CeDaemonError,
    ComponentConfigError,
    PermanentError,
    TransientError,
    describe,
)
from ce_daemon.health import State
from ce_daemon.keys import StreamKey
from ce_daemon.logs import native
from ce_daemon.logs.deadletter import DeadLetters
from ce_daemon.logs.formatter import RecordFormatter
from ce_daemon.logs.metrics import RouteMetrics
from ce_daemon.logs.mutes import REFRESH, MuteStore
from ce_daemon.logs.resolve import Mute, Predicate, ResolvedRoute
from ce_daemon.logs.workers import (
    FormatWorkers,
    PageDecisions,
    PageWork,
    Recipe,
    WorkerLostError,
    output_key,
    recipe_bytes,
)
from ce_daemon.plugin import Health, LogSink, OutBatch, PluginContext
from ce_daemon.spool import Page
from ce_daemon.supervisor import Component
from ce_daemon.taps import Sample, TapHub

if TYPE_CHECKING:
    from ce_daemon.pipeline import Runtime

log = structlog.get_logger("ce_daemon.route")

ACK_INTERVAL = 1.0
"""Longest wait before a mid-page acknowledgement reaches the spool (whole pages are acknowledged at once)."""
HEALTH_WINDOW = 10
"""Batches whose outcome decides whether the sink refuses what the route sends (see the module docstring)."""
FIRST_PROBE_DELAY = 1.0
"""Seconds to the first re-check of a sink that failed its start check (doubling to ``retry_max_delay``)."""
_MUTE_PICKERS = 16
"""Sets of active mutes a route keeps the pickers of (the set changes as mutes start and end)."""


@dataclass
class _Batch:
    records: OutBatch = field(default_factory=OutBatch)
    runs: list[tuple[int, Page, list[int]]] = field(default_factory=list)
    """Where the records came from, a run of one page at a time: (the run's first index in the batch, the
    page, each record's position in it). A record is parsed again only if it is refused."""
    size: int = 0
    opened: float = 0.0
    acks: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    """Per stream, the newest (page seq, next position or None for the whole page) the batch covers."""

    def source(self, index: int) -> tuple[Page, int]:
        """The page and position of record ``index``."""
        run = bisect.bisect_right(self.runs, index, key=lambda item: item[0]) - 1
        start, page, positions = self.runs[run]
        return page, positions[index - start]


class RouteComponent(Component):
    """One ``logs.routes[]`` entry at work."""

    kind = "route"

    def __init__(
        self,
        name: str,
        fingerprint: str,
        route: ResolvedRoute,
        loaded: LoadedPipeline,
        runtime: Runtime,
        *,
        workers: int = 0,
    ) -> None:
        super().__init__(name, fingerprint)
        self.route = route
        self.config = route.config
        self.spool = runtime.spool
        self.dead = DeadLetters(runtime.store)
        self.mutes = MuteStore(runtime.store)
        self._runtime_mutes: list[Mute] = []
        self._mutes_read = -REFRESH
        self.formatter = route_formatter(route, loaded)
        self._pick = native.filter_picker(route.config.filter)  # the filter's fields, from the frames' text
        self._mute_picks: dict[tuple[str, ...], Any] = {}  # the same with the active mutes' fields
        # Format workers (logs.workers): taken when the route runs, given back when it ends.
        self.worker_count = workers
        self.workers: FormatWorkers | None = None
        self.recipe_key = route.fingerprint
        recipe = Recipe(
            key=route.fingerprint,
            format=route.config.format,
            mapping=route.mapping,
            tenant_name=self.formatter.tenant_name,
            json_fields=route.config.fields,
            filter=route.config.filter,
        )
        self.recipe = recipe_bytes(recipe)
        self.output = output_key(recipe)  # routes with the same output share a page's decisions
        self.taps = runtime.taps
        assert route.sink.cls is not None and issubclass(route.sink.cls, LogSink)
        self._sink_class: type[LogSink] = route.sink.cls
        self._context = PluginContext(
            name=self.config.name,
            base_dir=loaded.base_dir,
            data_dir=runtime.data_dir,
            log=log.bind(component=name, sink=route.sink.name),
        )
        limit = self._sink_class.max_batch_bytes
        self.max_bytes = min(self.config.batch.max_bytes, limit) if limit else self.config.batch.max_bytes
        self.log = log.bind(component=name)
        self.batch_seconds = runtime.metrics.own(RouteMetrics).batch_seconds.labels(
            self.config.name, route.sink.name
        )
        # One sink instance per start attempt: opened once, closed exactly once (also after a failed open).
        self.sink: LogSink | None = None
        self._close_owed = False
        self._ready = False
        self._failed_starts = 0
        self._start_failure: CeDaemonError | None = None
        # Acknowledgements the sink has earned but the spool has not been told yet, per stream (the
        # spool's acknowledgements are cumulative within a stream, so the newest covers the older).
        self._owed: dict[str, tuple[int, int | None]] = {}
        self._settled = time.monotonic()
        self._newest_shipped = 0
        self._oldest_waiting = 0
        self._shipped_once = False
        # (delivered, dead-lettered) of the latest batches, and the last reason a record was refused.
        self._recent: deque[tuple[int, int]] = deque(maxlen=HEALTH_WINDOW)
        self._unformatted = 0
        self._last_refusal = ""
        self._probe_at: float | None = None
        self._probe_delay = FIRST_PROBE_DELAY
        self.status.refresh = self._update_lag
        # Shown from the start, zero until something happens; lag_s appears with the first batch sent.
        self.status.counters.update({"received": 0, "sent": 0, "failed": 0, "dead_lettered": 0, "bytes": 0})

    async def start(self) -> None:
        """Open the sink and check its health: a failure is a start failure of this route.

        Whatever the plugin raises is re-raised as :class:`AuthError` or :class:`ComponentConfigError`
        when the plugin classified it so, else as :class:`TransientError` (an unhealthy answer too),
        naming the sink and the reason. At daemon start the route then runs degraded and ``run``
        tries again; at a reload the reload policy decides.
        """
        if self.route.sink.note:
            self.log.warning("sink.plugin_note", sink=self.route.sink.name, note=self.route.sink.note)
        if self.config.format in ("cef", "leef") and not native.AVAILABLE:
            # Same bytes, about twice the CPU per record: worth knowing on a busy tenant.
            self.log.warning("route.python_writer", format=self.config.format, c_writer=native.STATE)
        health = await self._open_sink()
        if not health.ok:
            raise TransientError(f"sink {self.route.sink.name!r} unhealthy: {health.detail}")
        self.status.ok(health.detail)

    async def close(self) -> None:
        await self._close_sink()

    async def _open_sink(self) -> Health:
        """Make and open a new sink and ask its health; on any failure it is closed and the failure raised."""
        name = self.route.sink.name
        try:
            sink = self.sink = self._sink_class(self.route.sink_options, self._context)
            self._close_owed = True  # from here on close() is owed, whether open() returns or raises
            await sink.open()
            health = _checked(await sink.health(), self._sink_class)
        except BaseException as exc:  # anything a plugin raises here is a start failure, never a crash
            self._failed_starts += 1
            try:
                await self._close_sink()
            except Exception as failure:  # noqa: BLE001 - the start failure is what the operator needs
                self.log.warning("sink.close_failed", sink=name, error=describe(failure))
            if not isinstance(exc, Exception):
                raise  # cancelled (the start checks' bound, a stop): closed, and cancelled still
            self._start_failure = _start_failure(f"sink {name!r} not usable: {describe(exc)}", exc)
            raise self._start_failure from exc
        self._ready = True
        self._start_failure = None
        return health

    async def _close_sink(self) -> None:
        """Close the sink once if ``open`` was called on it (returned or raised)."""
        if self._close_owed and self.sink is not None:
            self._close_owed = self._ready = False
            await self.sink.close()

    async def _reopen(self, stopping: asyncio.Event) -> bool:
        """After a failed start, open a new sink with backoff until it opens; False when asked to stop first.

        A failure the plugin classified as auth or configuration ends the run (the supervisor stops the
        route until a reload); any other is retried, the route degraded with the reason meanwhile.
        """
        while not stopping.is_set():
            if isinstance(self._start_failure, AuthError | ComponentConfigError):
                raise self._start_failure  # not worth another try: the supervisor waits for a reload
            if self._failed_starts and await pause(
                stopping, Backoff(cap=self.config.retry_max_delay).delay(self._failed_starts)
            ):
                return False
            try:
                health = await self._open_sink()
            except TransientError as exc:
                self.status.degraded(f"start failed: {exc}")
                self.log.warning("route.start_failed", error=str(exc), attempt=self._failed_starts)
                continue
            if health.ok:
                self.status.ok(health.detail)
            else:
                self.status.degraded(f"sink {self.route.sink.name!r} unhealthy: {health.detail}")
            return True
        return False

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        self.taps.register(self.name)
        if not self.formatter.reads_json or (self.route.predicate is not None and self._pick is None):
            self.spool.shares_frames(self.name)  # it reads pages read-only, here or through a format worker
        self.workers = FormatWorkers.acquire(self.worker_count)
        streams = [stream.key for stream in self.route.streams]
        if self.workers is not None:
            self.workers.share(self.output, streams)
        try:
            await self._run(stopping)
        finally:
            if self.workers is not None:
                self.workers.share(self.output, streams, joining=False)
                self.workers.release()
                self.workers = None
            self.taps.unregister(self.name)

    async def _run(self, stopping: asyncio.Event) -> None:
        if not self._ready and not await self._reopen(stopping):
            return
        if self.status.state is not State.OK:
            # The start check failed (or the last run crashed): until a batch goes through, the sink's
            # health is checked again whenever no batch is pending, so that a route with nothing to
            # send still shows when its target is back.
            self._probe_at = time.monotonic() + self._probe_delay
        # A batch abandoned at shutdown ends the run: nothing read after it may be sent or acknowledged.
        try:
            with contextlib.suppress(_BatchAbandonedError):
                await self._ship(stopping)
        finally:
            await self._settle(force=True)

    async def _ship(self, stopping: asyncio.Event) -> None:
        batch = _Batch()
        after: int | None = None
        wait = self.config.batch.max_wait
        # With format workers, the next page is handed to one while this one is sent: the workers then
        # decide while the sink takes its time, instead of waiting for the route's next request.
        ahead: tuple[Page, asyncio.Task[PageDecisions]] | None = None
        inflight: set[asyncio.Task[PageDecisions]] = set()  # ended with the route, whatever ends it
        try:
            while not stopping.is_set() and not (self.lease is not None and self.lease.lost):
                if self._probe_at is not None and not batch.records and time.monotonic() >= self._probe_at:
                    await self._probe()  # nothing of its own tells whether the sink is back
                if ahead is not None:
                    (page, deciding), ahead = ahead, None
                else:
                    timeout = max(0.0, wait - (time.monotonic() - batch.opened)) if batch.records else 1.0
                    found = await self.spool.next_page(self.name, after=after, timeout=timeout)
                    self.status.beat()
                    self._update_lag()
                    if found is None:
                        batch = await self._idle(batch, stopping)
                        continue
                    page, deciding = found, self._deciding(found, inflight)
                after = page.seq
                if self.workers is not None:
                    following = await self.spool.next_page(self.name, after=after, timeout=0)
                    if following is not None:
                        ahead = (following, self._deciding(following, inflight))
                decisions = await deciding
                inflight.discard(deciding)
                batch = await self._consume_page(page, decisions, batch, stopping)
                if batch.records:
                    batch.acks[page.stream] = (page.seq, None)
                else:
                    self._owed[page.stream] = (page.seq, None)
                    await self._settle()
                del page, deciding, decisions  # never hold a page's decisions across the next wait
            if batch.records:
                await self._flush(batch, stopping)
        finally:
            # A page decided but never sent is not acknowledged either: it is read again next time.
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _idle(self, batch: _Batch, stopping: asyncio.Event) -> _Batch:
        """No page came: send the open batch if it has waited ``max_wait``, hand over what is owed."""
        if batch.records and time.monotonic() - batch.opened >= self.config.batch.max_wait:
            batch = await self._flush(batch, stopping)
        await self._settle()
        return batch

    def _deciding(
        self, page: Page, inflight: set[asyncio.Task[PageDecisions]]
    ) -> asyncio.Task[PageDecisions]:
        """The decisions of ``page``, under way (the task is added to ``inflight``)."""
        task = asyncio.create_task(
            self._decide(page, StreamKey.parse(page.stream)), name=f"{self.name} decide"
        )
        inflight.add(task)
        return task

    async def _consume_page(
        self, page: Page, decisions: PageDecisions, batch: _Batch, stopping: asyncio.Event
    ) -> _Batch:
        stream = page.stream
        key = StreamKey.parse(stream)
        name = self.config.format
        max_records, max_bytes = self.config.batch.max_records, self.max_bytes
        counters = self.status.counters
        dropped = {"filtered": 0, "muted": 0, "dead_lettered": 0}
        for _, counter, detail, record in decisions.dropped:
            dropped[counter] += 1
            if counter == "dead_lettered":
                self._last_refusal = f"formatting failed: {detail}"
                await self.dead.add(self.config.name, stream, record or {}, b"", self._last_refusal)
        taps = self.taps.taps_of(self.name)
        positions, ids, data = decisions.positions, decisions.ids, decisions.data
        stamps = decisions.timestamps
        sending = len(data)
        # ends[k]: the bytes of records 0..k-1 with their separators, as the batch counts them (summed in
        # C: a generator's frame per line cost more than the rest of this loop).
        ends = list(map(add, accumulate(map(len, data), initial=0), range(sending + 1)))
        first = 0
        while first < sending:
            if batch.records and batch.size + ends[first + 1] - ends[first] > max_bytes:
                # The record would take the batch past the byte cap (a target's hard request limit):
                # send what is there, acknowledged up to this record, and start the next with it.
                batch.acks[stream] = (page.seq, positions[first])
                batch = await self._flush(batch, stopping)
            if not batch.records:
                batch.opened = time.monotonic()
            # This record and those after it that keep the batch within both caps, as many as fit.
            fits = bisect.bisect_right(ends, max_bytes - batch.size + ends[first], first + 1) - 1
            last = max(first + 1, min(fits, first + max_records - len(batch.records), sending))
            if taps:
                for index in range(first, last):
                    TapHub.publish(taps, Sample(stream, ids[index], data[index]))
            # The batch's lists grow a run at a time (no object per record: see OutBatch).
            out, count = batch.records, last - first
            out.ids += ids[first:last]
            out.timestamps += stamps[first:last]
            out.data += data[first:last]
            out.kinds += repeat(key.kind, count)
            out.subtypes += repeat(key.subtype, count)
            out.formats += repeat(name, count)
            batch.runs.append((len(out.ids) - count, page, positions[first:last]))
            batch.size += ends[last] - ends[first]
            first = last
            if len(batch.records) >= max_records or batch.size >= max_bytes:
                batch.acks[stream] = (page.seq, positions[last - 1] + 1)
                batch = await self._flush(batch, stopping)
        counters["received"] = counters.get("received", 0) + len(decisions)
        for counter, count in dropped.items():
            if count:
                counters[counter] = counters.get(counter, 0) + count
        bad = dropped["dead_lettered"]
        if bad:
            self._unformatted += bad
            if not batch.records:
                self._judge(0, 0)  # no batch will carry them into the health window: judge now
        return batch

    async def _decide(self, page: Page, key: StreamKey) -> PageDecisions:
        """What to do with each unread record of ``page``: from a format worker when the daemon has
        them (decided here when the worker is lost), else here."""
        mutes = await self._active_mutes()
        if self.workers is not None:
            work = PageWork(
                recipe_key=self.recipe_key,
                recipe=self.recipe,
                spool=self.spool.identity,
                readers=self.spool.readers_of(page.stream),
                kind=key.kind,
                subtype=key.subtype,
                seq=page.seq,
                codec=page.codec,
                body=page.body,
                start=page.start,
                mutes=tuple((mute.name, mute.filter) for mute in mutes),
                output_key=self.output,
                sharers=self.workers.sharers(self.output, page.stream),
                outputs=self.workers.outputs(page.stream),
            )
            try:
                return await self.workers.decide(work)
            except WorkerLostError as exc:
                self.status.count("worker_lost")
                self.log.warning("route.page_decided_here", seq=page.seq, reason=str(exc))
        write = self.formatter.writer_for(key.kind, key.subtype)
        return decide_page(page, self.route.predicate, mutes, write, self._picker(mutes))

    def _picker(self, mutes: Sequence[Mute]) -> Any:
        """What hands the route's filter and ``mutes`` their fields from the frames' text (None: dicts)."""
        if not mutes:
            return self._pick
        key = tuple(repr(mute.filter) for mute in mutes)
        if key not in self._mute_picks:
            if len(self._mute_picks) >= _MUTE_PICKERS:
                self._mute_picks.clear()
            filters = (mute.filter for mute in mutes)
            self._mute_picks[key] = native.filter_picker(self.route.config.filter, *filters)
        return self._mute_picks[key]

    async def _active_mutes(self) -> list[Mute]:
        await self._refresh_mutes()
        return active_mutes(self.route, time.time(), self._runtime_mutes)

    async def _refresh_mutes(self) -> None:
        """Re-read the mutes added while running (every ``REFRESH`` seconds; a failed read keeps the last)."""
        now = time.monotonic()
        if now - self._mutes_read < REFRESH:
            return
        self._mutes_read = now
        try:
            self._runtime_mutes = await self.mutes.upcoming(self.config.name)
        except Exception as exc:  # noqa: BLE001 - the mutes read before stay; the route ships on
            log.warning("route.mutes_unread", route=self.config.name, error=describe(exc))

    async def _flush(self, batch: _Batch, stopping: asyncio.Event) -> _Batch:
        """Send ``batch`` until the sink acknowledges it, then move the offset. Returns a fresh batch."""
        if not self._newest_shipped and not self._oldest_waiting:
            self._oldest_waiting = min(filter(None, batch.records.timestamps), default=0)
        rejected = await self._send(batch, stopping)
        refused = records_at([batch.source(index) for index, _ in rejected])
        for (index, reason), record in zip(rejected, refused, strict=True):
            page = batch.source(index)[0]
            await self.dead.add(self.config.name, page.stream, record, batch.records.data[index], reason)
        if rejected:
            self._last_refusal = rejected[0][1]
            self.status.count("dead_lettered", len(rejected))
        sent = len(batch.records) - len(rejected)
        if not self._shipped_once:
            self._shipped_once = True
            self.log.info("route.first_batch_shipped", records=sent, sink=self.route.sink.name)
        self.status.count("sent", sent)
        self.status.count("bytes", batch.size)
        self.status.count("batches")
        newest = max(batch.records.timestamps, default=0)
        self._newest_shipped = max(self._newest_shipped, newest)
        self._update_lag()
        self._owed.update(batch.acks)
        await self._settle()
        self._judge(sent, len(rejected))
        return _Batch()

    async def _send(self, batch: _Batch, stopping: asyncio.Event) -> list[tuple[int, str]]:
        """Hand ``batch`` to the sink, retrying what fails for now; returns what it refused for good."""
        sink = self.sink
        assert sink is not None  # run() opened it before shipping
        attempt = 0
        while True:
            try:
                started = time.monotonic()
                result = await sink.send(batch.records)
                self.batch_seconds.observe(time.monotonic() - started)
            except TransientError as exc:
                attempt += 1
                self.status.count("retries")
                self.status.count("failed", len(batch.records))
                delay = Backoff(cap=self.config.retry_max_delay).delay(attempt, exc.retry_after)
                if attempt >= 2:
                    never = "" if self.status.counters.get("sent") else " (nothing delivered yet)"
                    self.status.degraded(f"sink failing, retrying{never}: {exc}")
                self.log.warning(
                    "sink.batch_failed",
                    error=str(exc),
                    attempt=attempt,
                    retry_in=round(delay, 2),
                    records=len(batch.records),
                )
                if stopping.is_set():
                    # Never acknowledged: the pages are read again after a restart. Nothing after this
                    # batch may be sent either, or its acknowledgement would cover these records.
                    raise _BatchAbandonedError from exc
                await pause(stopping, delay)
                continue
            except PermanentError as exc:
                self.log.error("sink.batch_rejected", error=str(exc), records=len(batch.records))
                return [(i, str(exc)) for i in range(len(batch.records))]
            rejected = list(result.rejected)
            if rejected:
                self.log.warning(
                    "sink.records_dead_lettered", records=len(rejected), first_reason=rejected[0][1]
                )
            return rejected

    def _judge(self, delivered: int, refused: int) -> None:
        """The route's health after a batch: degraded while at least half of the recent records were refused.

        Records that could not be formatted count with the batch after them (or alone, when none follows).
        """
        self._recent.append((delivered, refused + self._unformatted))
        self._unformatted = 0
        self._probe_at = None  # the sink answered: no need to check its health apart
        self._probe_delay = FIRST_PROBE_DELAY  # a later failed start check probes from the start again
        good = sum(count for count, _ in self._recent)
        bad = sum(count for _, count in self._recent)
        sent = self.status.counters.get("sent", 0)
        if bad and bad >= good:
            never = ", none delivered yet" if not sent else ""
            self.status.degraded(
                f"{bad} of the last {good + bad} records were dead-lettered{never}: {self._last_refusal}"
            )
        else:
            self.status.ok(f"shipped {sent} records")

    async def _probe(self) -> None:
        """Check the sink's health again (its start check failed): ok ends the checks, else back off."""
        assert self.sink is not None  # run() opened it before shipping
        try:
            health = _checked(await self.sink.health(), self._sink_class)
        except Exception as exc:  # noqa: BLE001 - a health check that raises is a finding, not a crash
            health = Health(ok=False, detail=describe(exc))
        if health.ok:
            self._probe_at = None
            self._probe_delay = FIRST_PROBE_DELAY
            self.status.ok(health.detail)
            return
        self.status.degraded(f"sink unhealthy: {health.detail}")
        self._probe_delay = min(self._probe_delay * 2, max(self.config.retry_max_delay, FIRST_PROBE_DELAY))
        self._probe_at = time.monotonic() + self._probe_delay

    async def _settle(self, *, force: bool = False) -> None:
        """Hand the spool what the sink has acknowledged.

        At once when a whole page is owed (so a crash replays at most the unfinished page of each
        stream), when the spool is full (pollers wait for that space) and at the end; acknowledgements
        in the middle of a page wait up to ``ACK_INTERVAL``, since each is a SQLite transaction.
        """
        if not self._owed:
            return
        now = time.monotonic()
        whole_page = any(position is None for _, position in self._owed.values())
        if not (force or whole_page or self.spool.full or now - self._settled >= ACK_INTERVAL):
            return
        owed, self._owed = self._owed, {}
        for seq, position in owed.values():
            fence = self.lease.fence if self.lease is not None else None
            await asyncio.shield(self.spool.ack(self.name, seq, position, fence=fence))
        self._settled = now

    def _update_lag(self) -> None:
        # Also the status's refresh hook: read while a batch is being retried, it keeps growing.
        since = self._newest_shipped or self._oldest_waiting
        if since:
            self.status.counters["lag_s"] = max(0, int(time.time()) - since)


class _BatchAbandonedError(Exception):
    """A batch was abandoned unacknowledged because the route is stopping."""


@dataclass(frozen=True, slots=True)
class Dropped:
    """Why a record is not sent: filtered out (neither field set: by the route's filter, or a formatter
    that writes nothing for it), muted (``mute``), or impossible to format (``error``)."""

    mute: Mute | None = None
    error: Exception | None = None

    @property
    def counter(self) -> str:
        """The route's counter of such records: ``filtered``, ``muted`` or ``dead_lettered``."""
        if self.mute is not None:
            return "muted"
        return "filtered" if self.error is None else "dead_lettered"


_FILTERED = Dropped()


def judge(
    record: dict[str, Any],
    predicate: Predicate | None,
    mutes: Sequence[Mute],
    write: Callable[[dict[str, Any]], bytes | None],
) -> bytes | Dropped:
    """The one decision a route makes per record: its filter, then its active ``mutes`` (the first that
    matches), then its formatter's ``write``; the bytes to send, or why not. ``ce-daemon test`` and the
    format workers decide with it too."""
    screened = screen(record, predicate, mutes)
    if screened is not None:
        return screened
    try:
        data = write(record)
    except Exception as exc:  # noqa: BLE001 - one bad record is dead-lettered, never fatal
        return Dropped(error=exc)
    return _FILTERED if data is None else data


def screen(record: dict[str, Any], predicate: Predicate | None, mutes: Sequence[Mute]) -> Dropped | None:
    """:func:`judge` up to the formatter: the filter, then the first active mute that matches; None when
    the record is to be written. Given the whole record, or the fields the filters read (`decide_texts`)."""
    if predicate is not None and not predicate(record):
        return _FILTERED
    for mute in mutes:
        if mute.predicate is None or mute.predicate(record):
            return Dropped(mute=mute)
    return None


def sift(
    records: Iterable[tuple[int, dict[str, Any]]],
    predicate: Predicate | None,
    mutes: Sequence[Mute],
    write: Callable[[dict[str, Any]], bytes | None],
) -> Iterator[tuple[int, dict[str, Any], bytes | Dropped]]:
    """``(position, record, bytes to send or why not)`` for each of ``records`` (see :func:`judge`)."""
    for position, record in records:
        yield position, record, judge(record, predicate, mutes, write)


def decide_page(
    page: Page,
    predicate: Predicate | None,
    mutes: Sequence[Mute],
    write: Callable[[dict[str, Any]], bytes | None],
    pick: Any = None,
) -> PageDecisions:
    """What a route does with each unread record of ``page``, decided in this process: from the frames'
    JSON text when it :func:`reads_json`, else from their records (parsed once for every route that
    reads them, `Page.frames`). ``pick`` hands the filter its fields (`native.filter_picker`)."""
    if reads_json(write, predicate, mutes, pick):
        return decide_texts(page.chunks, page.start, write, page.parse, predicate, pick, mutes)
    return decide_records(page.frames(read_only=True), page.start, predicate, mutes, write)


def decide_records(
    frames: Iterable[tuple[int, list[dict[str, Any]]]],
    start: int,
    predicate: Predicate | None,
    mutes: Sequence[Mute],
    write: Callable[[dict[str, Any]], bytes | None],
) -> PageDecisions:
    """:func:`judge` over a page's records from position ``start`` on (given as parsed frames: ``(position
    of the first record, records)``), gathered as the route consumes them (in a format worker or here).

    One flat loop, no generator between it and the records: this runs once per record and route.
    """
    decisions = PageDecisions()
    for offset, records in frames:
        if offset + len(records) > start:
            _decide_frame(decisions, offset, records, start, predicate, mutes, write)
    return decisions


def _decide_frame(
    decisions: PageDecisions,
    offset: int,
    records: list[dict[str, Any]],
    start: int,
    predicate: Predicate | None,
    mutes: Sequence[Mute],
    write: Callable[[dict[str, Any]], bytes | None],
) -> None:
    """:func:`judge` over one frame's records (the first at position ``offset``) from ``start`` on."""
    positions, ids, timestamps, data = (
        decisions.positions,
        decisions.ids,
        decisions.timestamps,
        decisions.data,
    )
    dropped = decisions.dropped
    first = max(0, start - offset)
    for position, record in enumerate(records[first:] if first else records, offset + first):
        outcome = judge(record, predicate, mutes, write)
        if outcome.__class__ is bytes:
            positions.append(position)
            ids.append(str(record.get("_id", "")))
            ts = record.get("timestamp")
            timestamps.append(ts if ts.__class__ is int else 0)
            data.append(outcome)
            continue
        assert isinstance(outcome, Dropped)
        if outcome.mute is not None:
            dropped.append((position, "muted", outcome.mute.name, None))
        elif outcome.error is not None:
            dropped.append((position, "dead_lettered", str(outcome.error), record))
        else:
            dropped.append((position, "filtered", None, None))


def reads_json(write: object, predicate: Predicate | None, mutes: Sequence[Mute], pick: Any = None) -> bool:
    """True when a page can be decided from its frames' JSON text (:func:`decide_texts`): ``write`` is a
    C writer that reads records as text, and the route has no filter and no active mute, or a ``pick``
    that hands them their fields (`native.filter_picker`)."""
    judged = predicate is not None or bool(mutes)
    return (pick is not None or not judged) and getattr(write, "reads_json", False) is True


def decide_texts(
    chunks: Iterable[bytes],
    start: int,
    write: Callable[[dict[str, Any]], bytes | None],
    parse: Callable[[bytes], list[dict[str, Any]]],
    predicate: Predicate | None = None,
    pick: Any = None,
    mutes: Sequence[Mute] = (),
) -> PageDecisions:
    """What :func:`decide_records` decides for a route that :func:`reads_json`, from the page's frames
    as JSON text (``chunks``): the C writer writes each record's line from its text, and no dict is
    built (`ce_daemon.logs.native`); the ``predicate`` and the ``mutes`` are given the fields they read,
    from ``pick``. A frame they do not take (text orjson reads in a way of its own, or a record on which
    a converter raises) is ``parse``d and decided record by record, as anywhere else: the same lines,
    the same dead letters.
    """
    decisions = PageDecisions()
    write_frame = write.write_frame  # type: ignore[attr-defined]  # reads_json said it has one
    judged = predicate is not None or bool(mutes)
    offset = 0
    for chunk in chunks:
        first = max(0, start - offset)
        try:
            verdicts = (
                [screen(fields, predicate, mutes) for fields in pick.pick_frame(chunk, first)[1]]
                if judged
                else None
            )
            keep = None if verdicts is None else [verdict is None for verdict in verdicts]
            count, ids, timestamps, lines = write_frame(chunk, first, keep)
        except Exception:  # noqa: BLE001 - this frame is read as dicts instead, where errors are judged
            records = parse(chunk)
            if offset + len(records) > start:
                _decide_frame(decisions, offset, records, start, predicate, mutes, write)
            offset += len(records)
            continue
        if verdicts is None:
            decisions.positions.extend(range(offset + first, offset + count))
        else:
            for position, verdict in enumerate(verdicts, offset + first):
                if verdict is None:
                    decisions.positions.append(position)
                elif verdict.mute is None:
                    decisions.dropped.append((position, "filtered", None, None))
                else:
                    decisions.dropped.append((position, "muted", verdict.mute.name, None))
        decisions.ids += ids
        decisions.timestamps += timestamps
        decisions.data += lines
        offset += count
    return decisions


def records_at(places: Sequence[tuple[Page, int]]) -> list[dict[str, Any]]:
    """The records at ``(page, position)`` in ``places``, parsed again from their pages (records the
    sink refused, on their way to the dead letters): each page once, however many of its records."""
    wanted: dict[int, tuple[Page, set[int]]] = {}
    for page, position in places:
        wanted.setdefault(page.seq, (page, set()))[1].add(position)
    found: dict[int, dict[int, dict[str, Any]]] = {
        seq: {
            offset + i: record
            for offset, records in page.frames()
            for i, record in enumerate(records)
            if offset + i in positions
        }
        for seq, (page, positions) in wanted.items()
    }
    for page, position in places:
        if position not in found[page.seq]:
            raise IndexError(f"spool page {page.seq} has no record {position}")
    return [found[page.seq][position] for page, position in places]


def active_mutes(route: ResolvedRoute, now: float, added: Sequence[Mute] = ()) -> list[Mute]:
    """The mutes of ``route`` (its YAML's, and those ``added`` while running) whose window holds ``now``."""
    return [m for m in (*route.mutes, *added) if m.start <= now < m.end]


def route_formatter(route: ResolvedRoute, loaded: LoadedPipeline) -> RecordFormatter:
    """The formatter of ``route``: its format, mapping, tenant name and JSON fields."""
    tenant = loaded.tenants.get(route.config.tenant)
    return RecordFormatter(
        route.config.format,
        route.mapping,
        tenant.name if tenant else route.config.tenant,
        json_fields=route.config.fields,
    )


def _checked(health: object, plugin: type) -> Health:
    """``health`` if it is a :class:`Health` (a plugin may return anything); else a TypeError saying so."""
    if not isinstance(health, Health):
        raise TypeError(f"{plugin.__name__}.health() returned {health!r}, not a Health")
    return health


def _start_failure(message: str, cause: Exception) -> CeDaemonError:
    """How a start failure is raised: as the plugin's class when auth or config, else as transient."""
    if isinstance(cause, AuthError):
        return AuthError(message)
    if isinstance(cause, ComponentConfigError):
        return ComponentConfigError(message)
    return TransientError(message)
