"""The spool's store: pages per stream, consumer offsets, acknowledgements and space accounting.

A *stream* is what one producer writes (one tenant, alerts or events, one subtype; keyed like
``demo/alerts/dlp``). A poller commits each page it fetched with :meth:`Spool.append` *before* it
advances the server's iterator; the same transaction runs the producer's own bookkeeping (the
iterator checkpoint, :mod:`ce_daemon.netskope.checkpoint`), so that "page committed" and "iterator
moved past it" can never disagree after a crash.

Consumers (log routes, later other jobs) each read the streams they subscribe to, in global page
order, with their own durable offset, and acknowledge what their target has accepted. A page is
deleted once every consumer of its stream is past it. Nothing is ever dropped: when the stored pages
reach ``max_bytes``, producers wait in :meth:`Spool.wait_for_space` until acknowledgements free room.

Only the :class:`~ce_daemon.store.Store` protocol is used. When the store is shared with other
processes (PostgreSQL, several nodes), a consumer waiting for a page and a producer waiting for
space also re-check the database every :data:`SHARED_RECHECK` seconds, since another node's append or
acknowledgement wakes no event here.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from typing_extensions import Buffer

from ce_daemon.spool.codec import CODEC, TextArrays, decode, encode, encode_texts, parse_frame
from ce_daemon.store import Fence, Migration, Store, Transaction

__all__ = [
    "SHARED_FRAMES",
    "SHARED_RECHECK",
    "SPOOL_MIGRATIONS",
    "Page",
    "PageCommit",
    "SharedFrames",
    "Spool",
    "peek_pages",
]

log = structlog.get_logger("ce_daemon.spool")

PageCommit = Callable[[Transaction], Awaitable[None]]
"""The producer's own bookkeeping, run inside the transaction that commits its page."""

# A re-check of the database every half second costs one indexed query per waiting consumer; LISTEN/
# NOTIFY would need a connection per process held apart from the pool and re-subscribed after every
# reconnect, to save at most half a second of latency on a spool that is rarely empty under load.
SHARED_RECHECK = 0.5
SHARED_FRAMES = 8
"""Parsed frames (of 1,000 records, about 5 MB each) kept for a stream's other read-only consumers."""
# Past the largest id either backend hands out: "every page of the stream".
_BEYOND_ANY_SEQ = 2**63 - 1

SPOOL_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "spool",
        1,
        (
            # {id}: seq is never reused, or a consumer offset could skip a new page once every older
            # page has been deleted. The body is last so that queries on the other columns never walk
            # its overflow pages (SQLite).
            """CREATE TABLE spool_pages (
                seq {id},
                stream {text} NOT NULL,
                count {int} NOT NULL,
                first_id {text},
                last_id {text},
                bytes {int} NOT NULL,
                created_at {real} NOT NULL,
                codec {text} NOT NULL,
                body {blob} NOT NULL
            )""",
            "CREATE INDEX spool_pages_by_stream ON spool_pages (stream, seq)",
            # Next unread record of a consumer in a stream: record `position` of the first page whose
            # seq is >= `seq`.
            """CREATE TABLE spool_offsets (
                consumer {text} NOT NULL,
                stream {text} NOT NULL,
                seq {int} NOT NULL,
                position {int} NOT NULL,
                PRIMARY KEY (consumer, stream)
            ) {keyed}""",
            "CREATE INDEX spool_offsets_by_stream ON spool_offsets (stream, seq)",
            # Streams that have had a consumer at least once: a stream that never had one keeps its
            # pages for the first consumer, which then reads from the beginning.
            """CREATE TABLE spool_streams (
                stream {text} PRIMARY KEY,
                first_subscribed_at {real} NOT NULL
            ) {keyed}""",
            # One row per Netskope iterator (ce_daemon.netskope.checkpoint): keyed by the stream it
            # feeds, or by a key of its own when a second iterator feeds the same stream (a look-back
            # pull: ``demo/alerts/dlp#history``). Created here because released migrations never move.
            """CREATE TABLE spool_iterators (
                iterator_key {text} PRIMARY KEY,
                index_name {text},
                pending {text} NOT NULL DEFAULT 'none' CHECK (pending IN ('none', 'next')),
                first_id {text},
                last_id {text},
                count {int} NOT NULL DEFAULT 0,
                first_pull_done {int} NOT NULL DEFAULT 0,
                timestamp_hwm {int},
                progress {text} NOT NULL DEFAULT '{}',
                updated_at {real} NOT NULL
            ) {keyed}""",
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class Page:
    """One spooled page as a consumer reads it.

    ``start`` is the position of the first record this consumer has not acknowledged yet: 0 for a
    fresh page, more when an earlier run acknowledged part of it. The page arrives as stored
    (``body`` in ``codec``): :attr:`chunks` decompresses it on first use (a consumer that hands the
    page to another process never does), and :meth:`frames` parses it a frame (1,000 records) at a
    time, which keeps a consumer's working set in the CPU cache (23 % faster than parsing the whole
    10,000-record page first). Damage is found there, as :class:`SpoolCorruptError`.
    """

    seq: int
    stream: str
    body: bytes
    codec: str
    count: int
    first_id: str | None
    last_id: str | None
    start: int = 0
    shared: SharedFrames | None = field(default=None, repr=False, compare=False)
    _chunks: tuple[bytes, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def chunks(self) -> tuple[bytes, ...]:
        """The page's frames, decompressed (JSON arrays, not parsed yet)."""
        if self._chunks is None:
            object.__setattr__(self, "_chunks", decode(self.seq, self.codec, self.body))  # a cache
        assert self._chunks is not None
        return self._chunks

    def frames(self, *, read_only: bool = False) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """``(position of the first record, records)`` per frame, in order, from the first frame on.

        ``read_only``: the caller promises never to modify the records, so a frame another consumer of
        the stream parsed a moment ago is handed over instead of parsed again (:class:`SharedFrames`).
        """
        offset = 0
        shared = self.shared if read_only else None
        for index, chunk in enumerate(self.chunks):
            records = None if shared is None else shared.take(self.seq, index)
            if records is None:
                records = self.parse(chunk)
                if shared is not None:
                    shared.offer(self.seq, self.stream, index, records)
            yield offset, records
            offset += len(records)

    def parse(self, chunk: bytes) -> list[dict[str, Any]]:
        """The records of one of this page's frames (:attr:`chunks`)."""
        return parse_frame(self.seq, chunk)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record of the page (parses the whole page: prefer :meth:`frames` on hot paths)."""
        return [record for _, records in self.frames() for record in records]

    @property
    def unread(self) -> list[dict[str, Any]]:
        """The records from ``start`` on."""
        return self.records[self.start :]


class SharedFrames:
    """Parsed frames handed from the first consumer of a stream that parses them to the others.

    Each read-only consumer of a stream (log routes) would otherwise parse every frame itself: with
    three routes on one stream, JSON decoding three times. A frame parsed by one is kept for the other
    consumers of its stream in this process, and dropped once each has taken it. Consumers that fall
    behind find their frames gone and parse them themselves: at most :attr:`limit` frames are kept,
    the oldest dropped first, so a route stuck on an outage never holds memory for the others (nor
    the others back). Pages are never rewritten and their seq never reused, so (seq, frame) names one
    frame's records for good.
    """

    def __init__(self, readers: Callable[[str], int], limit: int) -> None:
        self.readers = readers
        """How many consumers read a stream (this one included)."""
        self.limit = limit
        self._frames: OrderedDict[tuple[int, int], tuple[list[dict[str, Any]], int]] = OrderedDict()
        self._newest: dict[str, tuple[int, int]] = {}
        self.hits = 0
        self.misses = 0

    def take(self, seq: int, index: int) -> list[dict[str, Any]] | None:
        """The records of frame ``index`` of page ``seq`` if another consumer parsed them, else None."""
        key = (seq, index)
        found = self._frames.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        records, waiting = found
        if waiting <= 1:
            del self._frames[key]
        else:
            self._frames[key] = (records, waiting - 1)
        return records

    def offer(self, seq: int, stream: str, index: int, records: list[dict[str, Any]]) -> None:
        """Keep the records of a frame just parsed for the stream's other consumers, if it has any and
        the frame is the newest of its stream offered yet: a consumer parsing an older one is behind
        the others, who have read it already."""
        others = self.readers(stream) - 1
        key = (seq, index)
        if others <= 0 or key <= self._newest.get(stream, (-1, -1)):
            return
        self._newest[stream] = key
        self._frames[key] = (records, others)
        while len(self._frames) > self.limit:
            self._frames.popitem(last=False)

    def __len__(self) -> int:
        return len(self._frames)


class Spool:
    """Durable pages per stream, read by consumers with their own offsets.

    Call :meth:`load` once before use. ``max_bytes`` caps the compressed size of the stored pages
    (the database is somewhat larger: its own pages, the WAL, free pages awaiting reuse). The cap
    is checked by :meth:`wait_for_space` before a producer fetches, never by :meth:`append`: an answer
    already taken from the server is always committed. The spool can thus overshoot ``max_bytes`` by
    at most one page per producer, and a page larger than the whole cap is still taken when the spool
    is empty instead of blocking that producer forever.

    Every write that commits a unit's progress (:meth:`append`, :meth:`ack`) takes the unit's
    :class:`~ce_daemon.store.Fence` when it holds one: checked inside the same transaction.
    """

    def __init__(self, store: Store, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be positive, got {max_bytes}")
        self._store = store
        self._max_bytes = max_bytes
        self._used_bytes = 0
        self._counted_at = 0.0
        self._subscriptions: dict[str, frozenset[str]] = {}
        self.shared_frames = SharedFrames(self.readers_of, SHARED_FRAMES)
        self._sharing: set[str] = set()
        self.identity = secrets.token_hex(8)
        """Names this spool among others in the process (seqs are unique per spool only)."""
        # The (consumer, stream) pairs this process subscribed: the only offsets set_consumers may delete.
        self._owned: frozenset[tuple[str, str]] = frozenset()
        # Where each of this process's consumers stands in each stream (seq, position), as last written:
        # an offset row another process deleted is put back here instead of leaving its consumer stalled.
        self._positions: dict[tuple[str, str], tuple[int, int]] = {}
        self._loaded = False
        # Bumped on every append and subscription change; readers wait for it to move.
        self._version = 0
        self._changes = asyncio.Condition()
        self._has_space = asyncio.Event()
        self._has_space.set()

    async def load(self) -> None:
        """Restore the byte count and the consumers' subscriptions from the database.

        A store of its own (SQLite, held by one daemon) holds only this daemon's consumers: they become
        its previous generation, which the next :meth:`set_consumers` may prune. On a shared store the
        offsets found belong to every node: this process owns none of them until it subscribes them.
        """
        async with self._store.read() as tx:
            offsets = await tx.fetch("SELECT consumer, stream, seq, position FROM spool_offsets")
        subscriptions: dict[str, set[str]] = {}
        for consumer, stream, seq, position in offsets:
            subscriptions.setdefault(consumer, set()).add(stream)
            self._positions[(consumer, stream)] = (int(seq), int(position))
        self._subscriptions = {consumer: frozenset(streams) for consumer, streams in subscriptions.items()}
        if not self._store.shared:
            self._owned = frozenset(self._positions)
        await self._count_bytes()
        self._loaded = True
        log.info(
            "spool.loaded",
            used_bytes=self._used_bytes,
            max_bytes=self._max_bytes,
            consumers=sorted(self._subscriptions),
        )

    @property
    def store(self) -> Store:
        """The state store the pages live in (producers keep their checkpoints there too)."""
        return self._store

    @property
    def used_bytes(self) -> int:
        """Compressed bytes of all stored pages (of every process, as of the last count when shared)."""
        return self._used_bytes

    @property
    def max_bytes(self) -> int:
        """The cap producers respect through :meth:`wait_for_space`."""
        return self._max_bytes

    def resize(self, max_bytes: int) -> None:
        """Change the cap while running (a reload): waiting producers resume at once if it grew."""
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be positive, got {max_bytes}")
        self._max_bytes = max_bytes
        self._update_space()

    @property
    def full(self) -> bool:
        """True while stored pages use at least ``max_bytes``."""
        return self._used_bytes >= self._max_bytes

    async def wait_for_space(self) -> None:
        """Return at once when the spool is not full, else when acknowledgements have freed space.

        On a shared store the acknowledgements may come from another process: the count is taken
        again from the database every :data:`SHARED_RECHECK` seconds while waiting.
        """
        while self.full:
            if not self._store.shared:
                await self._has_space.wait()
                continue
            try:
                async with asyncio.timeout(SHARED_RECHECK):
                    await self._has_space.wait()
            except TimeoutError:
                await self._count_bytes()

    # -- producers ------------------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        records: list[dict[str, Any]],
        *,
        commit: PageCommit | None = None,
        fence: Fence | None = None,
    ) -> int:
        """Commit a non-empty page of ``stream``, with the producer's ``commit`` in the same transaction.

        Returns the page's seq. Once this returns the page survives a crash. A record the codec cannot
        write raises :class:`~ce_daemon.spool.codec.UnencodableRecordsError` before anything is written.
        """
        self._require_loaded()
        _require_records(len(records))
        first_id, last_id = _record_id(records[0]), _record_id(records[-1])
        body = await asyncio.to_thread(encode, records)
        # Shielded: if the caller is cancelled mid-commit, the accounting and the readers' wake-up
        # still follow the commit.
        return await asyncio.shield(
            self._commit_page(stream, body, first_id, last_id, len(records), commit, fence)
        )

    async def append_texts(
        self,
        stream: str,
        texts: Sequence[Buffer] | TextArrays,
        *,
        first_id: str | None,
        last_id: str | None,
        commit: PageCommit | None = None,
        fence: Fence | None = None,
    ) -> int:
        """:meth:`append` for records that are already JSON texts, stored as they are (no parse, no write).

        The caller vouches that orjson reads each text as one object (`ce_daemon.netskope.rawpages`), and
        names the ``_id`` of the first and last record (None for none).
        """
        self._require_loaded()
        _require_records(len(texts))
        body = await asyncio.to_thread(encode_texts, texts)
        # Shielded, as in append.
        return await asyncio.shield(
            self._commit_page(stream, body, first_id, last_id, len(texts), commit, fence)
        )

    # -- consumers ------------------------------------------------------------------------------------

    async def set_consumers(self, subscriptions: Mapping[str, Iterable[str]]) -> None:
        """Make ``subscriptions`` (consumer name → streams) this process's complete set of consumers.

        A consumer new to a stream starts at the current end of the spool (it sees pages appended from
        now on), except on a stream that has never had any consumer, where it reads from the beginning
        (the first start keeps what the producers already committed). Offsets of consumers (or streams)
        this process subscribed before and no longer lists are deleted, and pages nobody needs any more
        are collected. Offsets this process never subscribed are left alone: on a shared store they
        belong to other nodes, whose pipeline may differ from this one's during a rolling update.
        """
        self._require_loaded()
        wanted = {consumer: frozenset(streams) for consumer, streams in subscriptions.items()}
        await asyncio.shield(self._apply_consumers(wanted))

    async def next_page(
        self,
        consumer: str,
        # A bounded wait that answers None (rather than raising) is what a consumer loop wants.
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        after: int | None = None,
    ) -> Page | None:
        """The oldest page among ``consumer``'s streams it has not fully acknowledged.

        Waits until one is appended, or returns None after ``timeout`` seconds. Asking again before
        acknowledging returns the same page; a consumer that reads ahead before acknowledging (to
        batch across pages) passes ``after=<seq of the last page it holds>``.
        """
        self._require_loaded()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            streams = self._streams_of(consumer)
            seen = self._version
            page = await self._find_page(consumer, -1 if after is None else after)
            if page is not None:
                return page
            if await self._ensure_offsets(consumer, streams):
                continue
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            wait = remaining
            if self._store.shared:  # another process may append: look again soon
                wait = SHARED_RECHECK if remaining is None else min(remaining, SHARED_RECHECK)
            try:
                async with asyncio.timeout(wait):
                    await self._wait_for_change(seen)
            except TimeoutError:
                if wait == remaining:
                    return None

    async def ack(
        self, consumer: str, seq: int, position: int | None = None, *, fence: Fence | None = None
    ) -> None:
        """Acknowledge page ``seq`` up to ``position`` (next unread record), or whole when None.

        Acknowledgements are cumulative within a stream (a whole page acknowledged also covers older
        pages of that stream), idempotent, and never move an offset backwards.
        """
        self._require_loaded()
        streams = self._streams_of(consumer)
        if position is not None and position < 0:
            raise ValueError(f"ack position must be >= 0, got {position}")
        await asyncio.shield(self._apply_ack(consumer, streams, seq, position, fence))

    async def stats(self) -> dict[str, Any]:
        """Pages, records and bytes in total and per stream, and each consumer's lag per stream."""
        async with self._store.read() as tx:
            per_stream = await tx.fetch(
                "SELECT stream, COUNT(*), SUM(count), SUM(bytes), MIN(created_at) FROM spool_pages"
                " GROUP BY stream"
            )
            lags = await tx.fetch(
                "SELECT o.consumer, o.stream, COUNT(p.seq),"
                " COALESCE(SUM(p.count - CASE WHEN p.seq = o.seq THEN o.position ELSE 0 END), 0)"
                " FROM spool_offsets AS o"
                " LEFT JOIN spool_pages AS p ON p.stream = o.stream AND p.seq >= o.seq"
                " GROUP BY o.consumer, o.stream"
            )
        # int(): PostgreSQL sums integers as numerics
        streams = {
            stream: {
                "pages": int(pages),
                "records": int(records),
                "bytes": int(size),
                "oldest_created_at": oldest,
            }
            for stream, pages, records, size, oldest in per_stream
        }
        consumers: dict[str, dict[str, Any]] = {}
        for consumer, stream, pages, records in lags:
            entry = consumers.setdefault(consumer, {"pages": 0, "records": 0, "streams": {}})
            entry["pages"] += int(pages)
            entry["records"] += int(records)
            entry["streams"][stream] = {"pages": int(pages), "records": int(records)}
        return {
            "pages": sum(s["pages"] for s in streams.values()),
            "records": sum(s["records"] for s in streams.values()),
            "bytes": self._used_bytes,
            "max_bytes": self._max_bytes,
            "full": self.full,
            "streams": streams,
            "consumers": consumers,
        }

    # -- internals -----------------------------------------------------------------------------------

    async def _commit_page(
        self,
        stream: str,
        body: bytes,
        first_id: str | None,
        last_id: str | None,
        count: int,
        commit: PageCommit | None,
        fence: Fence | None,
    ) -> int:
        async with self._store.transaction() as tx:
            if fence is not None:
                await fence.check(tx)
            # Seqs then commit in the order they were taken, whichever process appends.
            await tx.serialize("spool_pages")
            seq = int(
                await tx.fetchval(
                    "INSERT INTO spool_pages"
                    " (stream, count, first_id, last_id, bytes, created_at, codec, body) VALUES"
                    " (:stream, :count, :first_id, :last_id, :bytes, :now, :codec, :body) RETURNING seq",
                    {
                        "stream": stream,
                        "count": count,
                        "first_id": first_id,
                        "last_id": last_id,
                        "bytes": len(body),
                        "now": time.time(),
                        "codec": CODEC,
                        "body": body,
                    },
                )
            )
            if commit is not None:
                await commit(tx)
        self._used_bytes += len(body)
        self._update_space()
        await self._bump()
        if self._store.shared:
            await self._recount_when_due()
        log.debug("spool.page_appended", stream=stream, seq=seq, records=count, bytes=len(body))
        return seq

    async def _find_page(self, consumer: str, after: int) -> Page | None:
        async with self._store.read() as tx:
            # Per stream, the first page at or past the offset, through the (stream, seq) index;
            # then the smallest of those: the consumer's oldest unread page.
            seq = await tx.fetchval(
                "SELECT MIN((SELECT p.seq FROM spool_pages AS p WHERE p.stream = o.stream"
                " AND p.seq >= o.seq AND p.seq > :after ORDER BY p.seq LIMIT 1))"
                " FROM spool_offsets AS o WHERE o.consumer = :consumer",
                {"consumer": consumer, "after": after},
            )
            if seq is None:
                return None
            row = await tx.fetchrow(
                "SELECT p.stream, p.first_id, p.last_id, p.codec, p.body,"
                " CASE WHEN o.seq = p.seq THEN o.position ELSE 0 END, p.count"
                " FROM spool_pages AS p JOIN spool_offsets AS o ON o.stream = p.stream"
                " WHERE p.seq = :seq AND o.consumer = :consumer",
                {"seq": seq, "consumer": consumer},
            )
        if row is None:
            return None  # collected between the two queries (another process acknowledged it)
        stream, first_id, last_id, codec, body, start, count = row
        return Page(
            seq=seq,
            stream=stream,
            body=bytes(body),
            codec=codec,
            count=count,
            first_id=first_id,
            last_id=last_id,
            start=start,
            shared=self.shared_frames,
        )

    def shares_frames(self, consumer: str) -> None:
        """Count ``consumer`` among the readers its streams' parsed frames are kept for
        (:class:`SharedFrames`): it reads them with ``Page.frames(read_only=True)``, or has a format
        worker read them, which keeps them the same way. A consumer that parses its own records (tickets,
        risk) is not counted: frames waiting for it would only be dropped by the limit, late."""
        self._sharing.add(consumer)

    def readers_of(self, stream: str) -> int:
        """How many of this process's consumers that share frames (:meth:`shares_frames`) read ``stream``."""
        return sum(
            stream in streams
            for consumer, streams in self._subscriptions.items()
            if consumer in self._sharing
        )

    async def _apply_ack(
        self, consumer: str, streams: frozenset[str], seq: int, position: int | None, fence: Fence | None
    ) -> None:
        freed = 0
        async with self._store.transaction() as tx:
            if fence is not None:
                await fence.check(tx)
            row = await tx.fetchrow("SELECT stream, count FROM spool_pages WHERE seq = :seq", {"seq": seq})
            if row is None:
                return  # already collected: every consumer of its stream was past it
            stream, count = row
            if stream not in streams:
                raise ValueError(
                    f"consumer {consumer!r} acknowledged page {seq} of {stream!r}, a stream it does not read"
                )
            whole = position is None or position >= count
            new_seq, new_position = (seq + 1, 0) if whole or position is None else (seq, position)
            moved = await tx.execute(
                "UPDATE spool_offsets SET seq = :seq, position = :position"
                " WHERE consumer = :consumer AND stream = :stream"
                " AND (seq < :seq OR (seq = :seq AND position < :position))",
                {"seq": new_seq, "position": new_position, "consumer": consumer, "stream": stream},
            )
            key = (consumer, stream)
            if not moved:
                # An offset row gone (another process deleted it) must not swallow the acknowledgement.
                self._positions[key] = max(self._positions.get(key, (0, 0)), (new_seq, new_position))
                moved = await self._restore_offsets(tx, consumer, [stream])
            if moved:
                # Even a partial acknowledgement can move past older pages of the stream (cumulative).
                freed = await _collect(tx, [stream])
        self._positions[key] = max(self._positions.get(key, (0, 0)), (new_seq, new_position))
        self._release(freed)
        if self._store.shared:
            await self._recount_when_due()

    async def _apply_consumers(self, wanted: dict[str, frozenset[str]]) -> None:
        pairs = {(consumer, stream) for consumer, streams in wanted.items() for stream in streams}
        now = time.time()
        async with self._store.transaction() as tx:
            existing = {(c, s) for c, s in await tx.fetch("SELECT consumer, stream FROM spool_offsets")}
            removed = (self._owned & existing) - pairs
            added = pairs - existing
            await tx.executemany(
                "DELETE FROM spool_offsets WHERE consumer = :consumer AND stream = :stream",
                [{"consumer": c, "stream": s} for c, s in sorted(removed)],
            )
            seen = {s for (s,) in await tx.fetch("SELECT stream FROM spool_streams")}
            last = int(await tx.fetchval("SELECT COALESCE(MAX(seq), 0) FROM spool_pages"))
            # ON CONFLICT: another node sharing the store may subscribe the same consumer meanwhile.
            await tx.executemany(
                "INSERT INTO spool_offsets (consumer, stream, seq, position)"
                " VALUES (:consumer, :stream, :seq, 0) ON CONFLICT (consumer, stream) DO NOTHING",
                [{"consumer": c, "stream": s, "seq": last + 1 if s in seen else 0} for c, s in sorted(added)],
            )
            await tx.executemany(
                "INSERT INTO spool_streams (stream, first_subscribed_at) VALUES (:stream, :now)"
                " ON CONFLICT (stream) DO NOTHING",
                [{"stream": s, "now": now} for s in sorted({s for _, s in added} - seen)],
            )
            positions = {
                (c, s): (int(seq), int(position))
                for c, s, seq, position in await tx.fetch(
                    "SELECT consumer, stream, seq, position FROM spool_offsets"
                )
                if (c, s) in pairs
            }
            freed = await _collect(tx, seen | {s for _, s in removed})
        self._subscriptions = wanted
        self._sharing &= wanted.keys()  # a consumer that comes back declares itself again when it runs
        self._owned = frozenset(pairs)
        self._positions = positions
        self._release(freed)
        await self._bump()
        log.info(
            "spool.consumers_set",
            consumers=sorted(wanted),
            added=[f"{c}:{s}" for c, s in sorted(added)],
            removed=[f"{c}:{s}" for c, s in sorted(removed)],
        )

    async def _ensure_offsets(self, consumer: str, streams: frozenset[str]) -> bool:
        """Put back any offset of ``consumer`` that is gone (see :meth:`_restore_offsets`): True if any."""
        async with self._store.read() as tx:
            present = await tx.fetchval(
                "SELECT COUNT(*) FROM spool_offsets WHERE consumer = :consumer", {"consumer": consumer}
            )
        if int(present) >= len(streams):
            return False
        async with self._store.transaction() as tx:
            restored = await self._restore_offsets(tx, consumer, streams)
        return restored > 0

    async def _restore_offsets(self, tx: Transaction, consumer: str, streams: Iterable[str]) -> int:
        """Put back the offsets of ``consumer`` in ``streams`` that are gone, where it last stood.

        Another process removed them (an operator, or a node that subscribed the same consumer and
        dropped it): without its offset the consumer would wait forever and its acknowledgements would
        change nothing. Pages of the stream collected meanwhile are lost to it: said in the error.
        Returns how many offsets were put back.
        """
        present = {
            str(stream)
            for (stream,) in await tx.fetch(
                "SELECT stream FROM spool_offsets WHERE consumer = :consumer", {"consumer": consumer}
            )
        }
        missing = sorted(set(streams) - present)
        for stream in missing:
            seq, position = self._positions.get((consumer, stream), (0, 0))
            await tx.execute(
                "INSERT INTO spool_offsets (consumer, stream, seq, position)"
                " VALUES (:consumer, :stream, :seq, :position) ON CONFLICT (consumer, stream) DO NOTHING",
                {"consumer": consumer, "stream": stream, "seq": seq, "position": position},
            )
            log.error(
                "spool.offset_restored",
                consumer=consumer,
                stream=stream,
                seq=seq,
                position=position,
                reason="its offset was deleted by another process; pages of the stream it had not "
                "acknowledged may have been collected meanwhile",
            )
        return len(missing)

    def _streams_of(self, consumer: str) -> frozenset[str]:
        try:
            return self._subscriptions[consumer]
        except KeyError:
            raise ValueError(f"spool consumer {consumer!r} is not registered (see set_consumers)") from None

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError("Spool.load() must be awaited before the spool is used")

    def _release(self, freed: int) -> None:
        if freed:
            self._used_bytes -= freed
            self._update_space()

    async def _count_bytes(self) -> None:
        """Take the byte count from the database: the truth when other processes append and acknowledge."""
        async with self._store.read() as tx:
            total = await tx.fetchval("SELECT COALESCE(SUM(bytes), 0) FROM spool_pages")
        self._used_bytes = int(total)
        self._counted_at = time.monotonic()
        self._update_space()

    async def _recount_when_due(self) -> None:
        if time.monotonic() - self._counted_at >= SHARED_RECHECK:
            await self._count_bytes()

    def _update_space(self) -> None:
        if self.full and self._has_space.is_set():
            self._has_space.clear()
            log.info("spool.full", used_bytes=self._used_bytes, max_bytes=self._max_bytes)
        elif not self.full and not self._has_space.is_set():
            self._has_space.set()
            log.info("spool.space_available", used_bytes=self._used_bytes, max_bytes=self._max_bytes)

    async def _wait_for_change(self, seen: int) -> None:
        async with self._changes:
            await self._changes.wait_for(lambda: self._version != seen)

    async def _bump(self) -> None:
        async with self._changes:
            self._version += 1
            self._changes.notify_all()


async def peek_pages(store: Store, consumer: str, streams: Iterable[str]) -> AsyncIterator[Page]:
    """The pages of ``streams`` from ``consumer``'s offsets on (every page of a stream it has none in), in
    order, each with ``start`` at its first unacknowledged record. Only reads: no offset moves, nothing
    is collected (``ce-daemon test --from-spool``)."""
    wanted = sorted(set(streams))
    after = -1
    while True:
        async with store.read() as tx:
            rows = await tx.fetch(
                "SELECT stream, seq, position FROM spool_offsets WHERE consumer = :consumer",
                {"consumer": consumer},
            )
            offsets = {stream: (int(seq), int(position)) for stream, seq, position in rows}
            found = None
            for stream in wanted:
                since = max(after + 1, offsets.get(stream, (0, 0))[0])
                row = await tx.fetchrow(
                    "SELECT seq, stream, first_id, last_id, codec, body, count FROM spool_pages"
                    " WHERE stream = :stream AND seq >= :since ORDER BY seq LIMIT 1",
                    {"stream": stream, "since": since},
                )
                if row is not None and (found is None or row[0] < found[0]):
                    found = row
        if found is None:
            return
        seq, stream, first_id, last_id, codec, body, count = found
        offset = offsets.get(stream)
        start = offset[1] if offset is not None and offset[0] == seq else 0
        after = int(seq)
        yield Page(after, stream, bytes(body), codec, count, first_id, last_id, start)


async def _collect(tx: Transaction, streams: Iterable[str]) -> int:
    """Delete the pages of ``streams`` that no consumer still needs; return the bytes freed.

    A stream that has never had a consumer keeps everything, for its first one.
    """
    freed = 0
    for stream in streams:
        row = await tx.fetchrow(
            "SELECT (SELECT MIN(seq) FROM spool_offsets WHERE stream = :stream),"
            " EXISTS (SELECT 1 FROM spool_streams WHERE stream = :stream)",
            {"stream": stream},
        )
        assert row is not None  # a SELECT without FROM returns one row
        lowest_needed, has_had_consumer = row
        if lowest_needed is None and not has_had_consumer:
            continue
        deleted = await tx.fetch(
            "DELETE FROM spool_pages WHERE stream = :stream AND seq < :below RETURNING bytes",
            {"stream": stream, "below": _BEYOND_ANY_SEQ if lowest_needed is None else lowest_needed},
        )
        sizes = [int(size) for (size,) in deleted]
        if sizes:
            freed += sum(sizes)
            log.debug("spool.pages_collected", stream=stream, pages=len(sizes), bytes=sum(sizes))
    return freed


def _require_records(count: int) -> None:
    if not count:
        raise ValueError(
            "an empty answer is not appended: the producer records it in its checkpoint (mark_empty_page)"
        )


def _record_id(record: Mapping[str, Any]) -> str | None:
    value = record.get("_id")
    return None if value is None else str(value)
