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
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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
from ce_daemon.logs.deadletter import DeadLetters
from ce_daemon.logs.formatter import RecordFormatter
from ce_daemon.logs.metrics import RouteMetrics
from ce_daemon.logs.mutes import REFRESH, MuteStore
from ce_daemon.logs.resolve import Mute, Predicate, ResolvedRoute
from ce_daemon.plugin import Health, LogSink, OutRecord, PluginContext
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


@dataclass
class _Batch:
    records: list[OutRecord] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    size: int = 0
    opened: float = 0.0
    acks: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    """Per stream, the newest (page seq, next position or None for the whole page) the batch covers."""


class RouteComponent(Component):
    """One ``logs.routes[]`` entry at work."""

    kind = "route"

    def __init__(
        self, name: str, fingerprint: str, route: ResolvedRoute, loaded: LoadedPipeline, runtime: Runtime
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
        try:
            await self._run(stopping)
        finally:
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
        while not stopping.is_set() and not (self.lease is not None and self.lease.lost):
            if self._probe_at is not None and not batch.records and time.monotonic() >= self._probe_at:
                await self._probe()  # nothing of its own tells whether the sink is back
            timeout = max(0.0, wait - (time.monotonic() - batch.opened)) if batch.records else 1.0
            page = await self.spool.next_page(self.name, after=after, timeout=timeout)
            self.status.beat()
            self._update_lag()
            if page is None:
                if batch.records and time.monotonic() - batch.opened >= wait:
                    batch = await self._flush(batch, stopping)
                await self._settle()
                continue
            after = page.seq
            batch = await self._consume_page(page, batch, stopping)
            if batch.records:
                batch.acks[page.stream] = (page.seq, None)
            else:
                self._owed[page.stream] = (page.seq, None)
                await self._settle()
            del page  # a decoded 10,000-record page is ~55 MB: never hold it across the next wait
        if batch.records:
            await self._flush(batch, stopping)

    async def _consume_page(self, page: Page, batch: _Batch, stopping: asyncio.Event) -> _Batch:
        stream = page.stream
        key = StreamKey.parse(stream)
        predicate = self.route.predicate
        mutes = await self._active_mutes()
        write = self.formatter.writer_for(key.kind, key.subtype)
        name = self.config.format
        max_records, max_bytes = self.config.batch.max_records, self.max_bytes
        counters = self.status.counters
        received = 0
        dropped = {"filtered": 0, "muted": 0, "dead_lettered": 0}
        taps = self.taps.taps_of(self.name)
        for position, record, data in sift(_unread(page), predicate, mutes, write):
            received += 1
            if data.__class__ is not bytes:  # the rare case: a Dropped
                assert isinstance(data, Dropped)
                dropped[data.counter] += 1
                if data.error is not None:
                    self._last_refusal = f"formatting failed: {data.error}"
                    await self.dead.add(self.config.name, stream, record, b"", self._last_refusal)
                continue
            assert isinstance(data, bytes)
            ts = record.get("timestamp")
            out = OutRecord(
                str(record.get("_id", "")),
                ts if isinstance(ts, int) else 0,
                data,
                key.kind,
                key.subtype,
                name,
            )
            if batch.records and batch.size + len(data) + 1 > max_bytes:
                # The record would take the batch past the byte cap (a target's hard request limit):
                # send what is there, acknowledged up to this record, and start the next with it.
                batch.acks[stream] = (page.seq, position)
                batch = await self._flush(batch, stopping)
            if not batch.records:
                batch.opened = time.monotonic()
            if taps:
                TapHub.publish(taps, Sample(stream, out.id, data))
            batch.records.append(out)  # appended inline: this is the per-record hot path
            batch.raw.append(record)
            batch.streams.append(stream)
            batch.size += len(data) + 1
            if len(batch.records) >= max_records or batch.size >= max_bytes:
                batch.acks[stream] = (page.seq, position + 1)
                batch = await self._flush(batch, stopping)
        counters["received"] = counters.get("received", 0) + received
        for counter, count in dropped.items():
            if count:
                counters[counter] = counters.get(counter, 0) + count
        bad = dropped["dead_lettered"]
        if bad:
            self._unformatted += bad
            if not batch.records:
                self._judge(0, 0)  # no batch will carry them into the health window: judge now
        return batch

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
            self._oldest_waiting = min((r.timestamp for r in batch.records if r.timestamp), default=0)
        rejected = await self._send(batch, stopping)
        for index, reason in rejected:
            await self.dead.add(
                self.config.name, batch.streams[index], batch.raw[index], batch.records[index].data, reason
            )
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
        newest = max((r.timestamp for r in batch.records), default=0)
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


def _unread(page: Page) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(position, record)`` from the page's ``start`` on, parsed a frame at a time (cache-friendly)."""
    start = page.start
    for offset, records in page.frames(read_only=True):
        if offset + len(records) <= start:
            continue
        first = max(0, start - offset)
        yield from enumerate(records[first:] if first else records, offset + first)


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


def sift(
    records: Iterable[tuple[int, dict[str, Any]]],
    predicate: Predicate | None,
    mutes: Sequence[Mute],
    write: Callable[[dict[str, Any]], bytes | None],
) -> Iterator[tuple[int, dict[str, Any], bytes | Dropped]]:
    """``(position, record, bytes to send or why not)`` for each of ``records``: the route's filter, then
    its active ``mutes`` (the first that matches), then its formatter's ``write``.

    The one decision a route makes per record; ``ce-daemon test`` runs the same.
    """
    for position, record in records:
        if predicate is not None and not predicate(record):
            yield position, record, _FILTERED
            continue
        if mutes:
            mute = next((m for m in mutes if m.predicate is None or m.predicate(record)), None)
            if mute is not None:
                yield position, record, Dropped(mute=mute)
                continue
        try:
            data = write(record)
        except Exception as exc:  # noqa: BLE001 - one bad record is dead-lettered, never fatal
            yield position, record, Dropped(error=exc)
            continue
        yield position, record, _FILTERED if data is None else data


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
