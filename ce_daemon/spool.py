"""The durable spool: pages of Netskope records between the pollers and their consumers.

A *stream* is what one poller produces (one tenant, alerts or events, one subtype; keyed like
``demo/alerts/dlp``). The poller commits each page it fetched with :meth:`Spool.append` *before* it
advances the server's iterator, and the same transaction records where the iterator stands, so that
"page committed" and "iterator marker moved past it" can never disagree after a crash.

Consumers (log routes, later other modules) each read the streams they subscribe to, in global page
order, with their own durable offset, and acknowledge what their target has accepted. A page is
deleted once every consumer of its stream is past it. Nothing is ever dropped: when the stored pages
reach ``max_bytes``, pollers wait in :meth:`Spool.wait_for_space` until acknowledgements free room.

Pages are stored as a few independent LZ4 frames of orjson arrays (about 4.6x smaller than the JSON,
and 5x faster to decompress than zlib: every route reads every page). Splitting a page into
frames keeps each stretch of GIL-holding JSON work short when encoding and decoding run in a worker
thread, so the event loop stays responsive while a 10,000-record page is processed.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiosqlite
import lz4.frame
import orjson
import structlog

from ce_daemon.state import Migration, StateError, StateStore

__all__ = [
    "SPOOL_MIGRATIONS",
    "IteratorMark",
    "IteratorState",
    "Page",
    "Pending",
    "Spool",
    "SpoolCorruptError",
    "UnencodableRecordsError",
    "page_marker",
]

log = structlog.get_logger(__name__)

Pending = Literal["none", "next"]

CODEC = "orjson-lz4-frames"
# Pages written before lz4 (still readable): zlib level 1 frames.
_ZLIB_CODEC = "orjson-zlib1-frames"
# Records per compressed frame: small enough that one frame's JSON work holds the GIL only ~3 ms,
# large enough that the compressor still finds the repetition between records.
FRAME_RECORDS = 1_000
# Past the largest rowid SQLite can hand out: "every page of the stream".
_BEYOND_ANY_SEQ = 2**63 - 1

SPOOL_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "spool",
        1,
        (
            # AUTOINCREMENT: seq must never be reused, or a consumer offset could skip a new page once
            # every older page has been deleted. The body is last so that queries on the other columns
            # never walk its overflow pages.
            """CREATE TABLE spool_pages (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                stream TEXT NOT NULL,
                count INTEGER NOT NULL,
                first_id TEXT,
                last_id TEXT,
                bytes INTEGER NOT NULL,
                created_at REAL NOT NULL,
                codec TEXT NOT NULL,
                body BLOB NOT NULL
            )""",
            "CREATE INDEX spool_pages_by_stream ON spool_pages (stream, seq)",
            # Next unread record of a consumer in a stream: record `position` of the first page whose
            # seq is >= `seq`.
            """CREATE TABLE spool_offsets (
                consumer TEXT NOT NULL,
                stream TEXT NOT NULL,
                seq INTEGER NOT NULL,
                position INTEGER NOT NULL,
                PRIMARY KEY (consumer, stream)
            ) WITHOUT ROWID""",
            "CREATE INDEX spool_offsets_by_stream ON spool_offsets (stream, seq)",
            # Streams that have had a consumer at least once: a stream that never had one keeps its
            # pages for the first consumer, which then reads from the beginning.
            """CREATE TABLE spool_streams (
                stream TEXT PRIMARY KEY,
                first_subscribed_at REAL NOT NULL
            ) WITHOUT ROWID""",
            # One row per iterator: keyed by the stream it feeds, or by a key of its own when a second
            # iterator feeds the same stream (a look-back pull: ``demo/alerts/dlp#history``).
            """CREATE TABLE spool_iterators (
                iterator_key TEXT PRIMARY KEY,
                index_name TEXT,
                pending TEXT NOT NULL DEFAULT 'none' CHECK (pending IN ('none', 'next')),
                first_id TEXT,
                last_id TEXT,
                count INTEGER NOT NULL DEFAULT 0,
                first_pull_done INTEGER NOT NULL DEFAULT 0,
                timestamp_hwm INTEGER,
                progress TEXT NOT NULL DEFAULT '{}',
                updated_at REAL NOT NULL
            ) WITHOUT ROWID""",
        ),
    ),
)


class SpoolCorruptError(StateError):
    """A stored page cannot be decoded (the database was damaged or edited by hand)."""


class UnencodableRecordsError(ValueError):
    """A page holds a value the codec cannot write (nested too deep, say); nothing was committed.

    The caller repairs the records (`ce_daemon.netskope.pages.repair_records`) and appends again.
    """


@dataclass(frozen=True, slots=True)
class Page:
    """One spooled page as a consumer reads it.

    ``start`` is the position of the first record this consumer has not acknowledged yet: 0 for a
    fresh page, more when an earlier run acknowledged part of it. The page arrives decompressed but not
    yet parsed: :meth:`frames` parses it a frame (1,000 records) at a time, which keeps a consumer's
    working set in the CPU cache (23 % faster than parsing the whole 10,000-record page first).
    """

    seq: int
    stream: str
    chunks: tuple[bytes, ...]
    count: int
    first_id: str | None
    last_id: str | None
    start: int = 0

    def frames(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """``(position of the first record, records)`` per frame, in order, from the first frame on."""
        offset = 0
        for chunk in self.chunks:
            try:
                records = orjson.loads(chunk)
            except orjson.JSONDecodeError as exc:
                raise SpoolCorruptError(f"spool page {self.seq} cannot be decoded: {exc}") from exc
            yield offset, records
            offset += len(records)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record of the page (parses the whole page: prefer :meth:`frames` on hot paths)."""
        return [record for _, records in self.frames() for record in records]

    @property
    def unread(self) -> list[dict[str, Any]]:
        """The records from ``start`` on."""
        return self.records[self.start :]


@dataclass(frozen=True, slots=True)
class IteratorMark:
    """What the poller learnt from the answer it is committing, stored with the page.

    ``timestamp_hwm`` and ``progress`` (free-form JSON, for historical pulls) are left as they were
    when None.
    """

    timestamp_hwm: int | None = None
    progress: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class IteratorState:
    """Where a Netskope iterator stands, as last committed.

    ``pending == "next"`` means the poller recorded its intent to send ``operation=next`` and no answer
    has been committed since: the server's cursor may have moved, so the poller must ask ``resend``.
    ``first_id``/``last_id``/``count`` describe the last page committed (None/None/0 before any).
    """

    key: str
    index: str | None
    pending: Pending
    first_id: str | None
    last_id: str | None
    count: int
    first_pull_done: bool
    timestamp_hwm: int | None
    progress: dict[str, Any] = field(default_factory=dict)

    def is_committed(self, first_id: str | None, last_id: str | None, count: int) -> bool:
        """Whether a page with this marker is the last one committed (a ``resend`` of a spooled page).

        A missing ``_id`` may be given as None or ``""``; both compare equal.
        """
        stored = (self.first_id or "", self.last_id or "", self.count)
        return count > 0 and stored == (first_id or "", last_id or "", count)


def page_marker(records: list[dict[str, Any]]) -> tuple[str | None, str | None, int]:
    """``(first_id, last_id, count)`` of a page, as :meth:`IteratorState.is_committed` compares them."""
    if not records:
        return None, None, 0
    return _record_id(records[0]), _record_id(records[-1]), len(records)


class Spool:
    """Durable pages per stream, read by consumers with their own offsets.

    Call :meth:`load` once before use. ``max_bytes`` caps the compressed size of the stored pages
    (the database file is somewhat larger: SQLite pages, the WAL, free pages awaiting reuse). The cap
    is checked by :meth:`wait_for_space` before a poller fetches, never by :meth:`append`: an answer
    already taken from the server is always committed. The spool can thus overshoot ``max_bytes`` by
    at most one page per poller, and a page larger than the whole cap is still taken when the spool
    is empty instead of blocking that poller forever.
    """

    def __init__(self, store: StateStore, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be positive, got {max_bytes}")
        self._store = store
        self._max_bytes = max_bytes
        self._used_bytes = 0
        self._subscriptions: dict[str, frozenset[str]] = {}
        self._loaded = False
        # Bumped on every append and subscription change; readers wait for it to move.
        self._version = 0
        self._changes = asyncio.Condition()
        self._has_space = asyncio.Event()
        self._has_space.set()

    async def load(self) -> None:
        """Restore the byte count and the consumers' subscriptions from the database."""
        async with self._store.read() as db:
            totals = list(await db.execute_fetchall("SELECT COALESCE(SUM(bytes), 0) FROM spool_pages"))
            offsets = await db.execute_fetchall("SELECT consumer, stream FROM spool_offsets")
        subscriptions: dict[str, set[str]] = {}
        for consumer, stream in offsets:
            subscriptions.setdefault(consumer, set()).add(stream)
        self._subscriptions = {consumer: frozenset(streams) for consumer, streams in subscriptions.items()}
        self._used_bytes = int(totals[0][0])
        self._loaded = True
        self._update_space()
        log.info(
            "spool.loaded",
            used_bytes=self._used_bytes,
            max_bytes=self._max_bytes,
            consumers=sorted(self._subscriptions),
        )

    @property
    def used_bytes(self) -> int:
        """Compressed bytes of all stored pages."""
        return self._used_bytes

    @property
    def max_bytes(self) -> int:
        """The cap pollers respect through :meth:`wait_for_space`."""
        return self._max_bytes

    def resize(self, max_bytes: int) -> None:
        """Change the cap while running (a reload): waiting pollers resume at once if it grew."""
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be positive, got {max_bytes}")
        self._max_bytes = max_bytes
        self._update_space()

    @property
    def full(self) -> bool:
        """True while stored pages use at least ``max_bytes``."""
        return self._used_bytes >= self._max_bytes

    async def wait_for_space(self) -> None:
        """Return at once when the spool is not full, else when acknowledgements have freed space."""
        while self.full:
            await self._has_space.wait()

    # -- pollers -------------------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        records: list[dict[str, Any]],
        *,
        iterator: IteratorMark,
        iterator_key: str | None = None,
    ) -> int:
        """Commit a non-empty page of ``stream`` and the iterator state after it; return its seq.

        In the same transaction the iterator's pending intent goes back to ``"none"`` and the page's
        marker becomes the last committed one. The iterator is ``iterator_key`` when given (a second
        iterator feeding the same stream), else the stream itself. Once this returns the page survives
        a crash. A record the codec cannot write raises :class:`UnencodableRecordsError` before anything
        is written.
        """
        self._require_loaded()
        if not records:
            raise ValueError("an empty answer is recorded with mark_empty_page(), not appended")
        first_id, last_id, count = page_marker(records)
        body = await asyncio.to_thread(_encode, records)
        # Shielded: if the caller is cancelled mid-commit, the accounting and the readers' wake-up
        # still follow the commit.
        return await asyncio.shield(
            self._commit_page(
                stream=stream,
                key=stream if iterator_key is None else iterator_key,
                body=body,
                first_id=first_id,
                last_id=last_id,
                count=count,
                iterator=iterator,
            )
        )

    # The iterator methods below take the iterator key: the stream, or the ``iterator_key`` given to
    # append() for a second iterator of the same stream.

    async def mark_empty_page(
        self, key: str, timestamp_hwm: int | None, *, progress: Mapping[str, Any] | None = None
    ) -> None:
        """Record an empty answer (or a resend of the page already committed): the intent is cleared,
        the first pull counts as done, hwm and progress are updated; nothing is spooled."""
        await self._upsert_iterator(
            key,
            "UPDATE spool_iterators SET pending = 'none', first_pull_done = 1,"
            " timestamp_hwm = COALESCE(:hwm, timestamp_hwm), progress = COALESCE(:progress, progress),"
            " updated_at = :now WHERE iterator_key = :key",
            hwm=timestamp_hwm,
            progress=_dump_progress(progress),
        )

    async def record_intent(self, key: str, pending: Pending) -> None:
        """Durably record the intent (``"next"``) before sending ``operation=next``, or clear it."""
        if pending not in ("none", "next"):
            raise ValueError(f"iterator intent must be 'none' or 'next', got {pending!r}")
        await self._upsert_iterator(
            key,
            "UPDATE spool_iterators SET pending = :pending, updated_at = :now WHERE iterator_key = :key",
            pending=pending,
        )

    async def set_index(self, key: str, index: str) -> None:
        """Persist the Netskope iterator ``index`` name the iterator uses."""
        await self._upsert_iterator(
            key,
            "UPDATE spool_iterators SET index_name = :index, updated_at = :now WHERE iterator_key = :key",
            index=index,
        )

    async def iterator_state(self, key: str) -> IteratorState | None:
        """The iterator's committed state, or None if its poller never recorded anything."""
        async with self._store.read() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT index_name, pending, first_id, last_id, count, first_pull_done, timestamp_hwm,"
                    " progress FROM spool_iterators WHERE iterator_key = ?",
                    (key,),
                )
            )
        if not rows:
            return None
        index, pending, first_id, last_id, count, first_pull_done, hwm, progress = rows[0]
        return IteratorState(
            key=key,
            index=index,
            pending="next" if pending == "next" else "none",
            first_id=first_id,
            last_id=last_id,
            count=int(count),
            first_pull_done=bool(first_pull_done),
            timestamp_hwm=hwm,
            progress=orjson.loads(progress),
        )

    # -- consumers -----------------------------------------------------------------------------------

    async def set_consumers(self, subscriptions: Mapping[str, Iterable[str]]) -> None:
        """Make ``subscriptions`` (consumer name → streams) the complete set of consumers.

        A consumer new to a stream starts at the current end of the spool (it sees pages appended from
        now on), except on a stream that has never had any consumer, where it reads from the beginning
        (the first start keeps what the pollers already committed). Offsets of consumers (or streams)
        no longer listed are deleted, and pages nobody needs any more are collected.
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
            self._streams_of(consumer)
            seen = self._version
            page = await self._find_page(consumer, -1 if after is None else after)
            if page is not None:
                return page
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    await self._wait_for_change(seen)
            except TimeoutError:
                return None

    async def ack(self, consumer: str, seq: int, position: int | None = None) -> None:
        """Acknowledge page ``seq`` up to ``position`` (next unread record), or whole when None.

        Acknowledgements are cumulative within a stream (a whole page acknowledged also covers older
        pages of that stream), idempotent, and never move an offset backwards.
        """
        self._require_loaded()
        streams = self._streams_of(consumer)
        if position is not None and position < 0:
            raise ValueError(f"ack position must be >= 0, got {position}")
        await asyncio.shield(self._apply_ack(consumer, streams, seq, position))

    async def stats(self) -> dict[str, Any]:
        """Pages, records and bytes in total and per stream, and each consumer's lag per stream."""
        async with self._store.read() as db:
            per_stream = await db.execute_fetchall(
                "SELECT stream, COUNT(*), SUM(count), SUM(bytes), MIN(created_at) FROM spool_pages"
                " GROUP BY stream"
            )
            lags = await db.execute_fetchall(
                "SELECT o.consumer, o.stream, COUNT(p.seq),"
                " COALESCE(SUM(p.count - CASE WHEN p.seq = o.seq THEN o.position ELSE 0 END), 0)"
                " FROM spool_offsets AS o"
                " LEFT JOIN spool_pages AS p ON p.stream = o.stream AND p.seq >= o.seq"
                " GROUP BY o.consumer, o.stream"
            )
        streams = {
            stream: {"pages": pages, "records": records, "bytes": size, "oldest_created_at": oldest}
            for stream, pages, records, size, oldest in per_stream
        }
        consumers: dict[str, dict[str, Any]] = {}
        for consumer, stream, pages, records in lags:
            entry = consumers.setdefault(consumer, {"pages": 0, "records": 0, "streams": {}})
            entry["pages"] += pages
            entry["records"] += records
            entry["streams"][stream] = {"pages": pages, "records": records}
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
        *,
        stream: str,
        key: str,
        body: bytes,
        first_id: str | None,
        last_id: str | None,
        count: int,
        iterator: IteratorMark,
    ) -> int:
        now = time.time()
        async with self._store.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO spool_pages (stream, count, first_id, last_id, bytes, created_at, codec, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (stream, count, first_id, last_id, len(body), now, CODEC, body),
            )
            seq = cursor.lastrowid
            assert seq is not None  # an INSERT into a rowid table always sets it
            await db.execute(
                "INSERT INTO spool_iterators (iterator_key, pending, first_id, last_id, count,"
                " first_pull_done, timestamp_hwm, progress, updated_at)"
                " VALUES (:key, 'none', :first_id, :last_id, :count, 1, :hwm,"
                " COALESCE(:progress, '{}'), :now)"
                " ON CONFLICT (iterator_key) DO UPDATE SET pending = 'none', first_id = :first_id,"
                " last_id = :last_id, count = :count, first_pull_done = 1,"
                " timestamp_hwm = COALESCE(:hwm, timestamp_hwm), progress = COALESCE(:progress, progress),"
                " updated_at = :now",
                {
                    "key": key,
                    "first_id": first_id,
                    "last_id": last_id,
                    "count": count,
                    "hwm": iterator.timestamp_hwm,
                    "progress": _dump_progress(iterator.progress),
                    "now": now,
                },
            )
        self._used_bytes += len(body)
        self._update_space()
        await self._bump()
        log.debug("spool.page_appended", stream=stream, seq=seq, records=count, bytes=len(body))
        return seq

    async def _upsert_iterator(self, key: str, update: str, **values: Any) -> None:
        """Create the iterator's row if needed, then run ``update`` on it (named parameters)."""
        params = {"key": key, "now": time.time(), **values}
        async with self._store.transaction() as db:
            await db.execute(
                "INSERT INTO spool_iterators (iterator_key, updated_at) VALUES (:key, :now)"
                " ON CONFLICT (iterator_key) DO NOTHING",
                params,
            )
            await db.execute(update, params)

    async def _find_page(self, consumer: str, after: int) -> Page | None:
        async with self._store.read() as db:
            # Per stream, the first page at or past the offset, through the (stream, seq) index;
            # then the smallest of those: the consumer's oldest unread page.
            found = list(
                await db.execute_fetchall(
                    "SELECT MIN((SELECT p.seq FROM spool_pages AS p WHERE p.stream = o.stream"
                    " AND p.seq >= MAX(o.seq, :after + 1) ORDER BY p.seq LIMIT 1))"
                    " FROM spool_offsets AS o WHERE o.consumer = :consumer",
                    {"consumer": consumer, "after": after},
                )
            )
            seq = found[0][0] if found else None
            if seq is None:
                return None
            rows = list(
                await db.execute_fetchall(
                    "SELECT p.stream, p.first_id, p.last_id, p.codec, p.body,"
                    " CASE WHEN o.seq = p.seq THEN o.position ELSE 0 END, p.count"
                    " FROM spool_pages AS p JOIN spool_offsets AS o ON o.stream = p.stream"
                    " WHERE p.seq = ? AND o.consumer = ?",
                    (seq, consumer),
                )
            )
        stream, first_id, last_id, codec, body, start, count = rows[0]
        chunks = _decompress(seq, codec, body)
        return Page(
            seq=seq,
            stream=stream,
            chunks=chunks,
            count=count,
            first_id=first_id,
            last_id=last_id,
            start=start,
        )

    async def _apply_ack(
        self, consumer: str, streams: frozenset[str], seq: int, position: int | None
    ) -> None:
        freed = 0
        async with self._store.transaction() as db:
            rows = list(
                await db.execute_fetchall("SELECT stream, count FROM spool_pages WHERE seq = ?", (seq,))
            )
            if not rows:
                return  # already collected: every consumer of its stream was past it
            stream, count = rows[0]
            if stream not in streams:
                raise ValueError(
                    f"consumer {consumer!r} acknowledged page {seq} of {stream!r}, a stream it does not read"
                )
            whole = position is None or position >= count
            new_seq, new_position = (seq + 1, 0) if whole else (seq, position)
            cursor = await db.execute(
                "UPDATE spool_offsets SET seq = :seq, position = :position"
                " WHERE consumer = :consumer AND stream = :stream"
                " AND (seq < :seq OR (seq = :seq AND position < :position))",
                {"seq": new_seq, "position": new_position, "consumer": consumer, "stream": stream},
            )
            if cursor.rowcount:
                # Even a partial acknowledgement can move past older pages of the stream (cumulative).
                freed = await _collect(db, [stream])
        self._release(freed)

    async def _apply_consumers(self, wanted: dict[str, frozenset[str]]) -> None:
        pairs = {(consumer, stream) for consumer, streams in wanted.items() for stream in streams}
        now = time.time()
        async with self._store.transaction() as db:
            existing = {
                (c, s) for c, s in await db.execute_fetchall("SELECT consumer, stream FROM spool_offsets")
            }
            removed = existing - pairs
            added = pairs - existing
            await db.executemany(
                "DELETE FROM spool_offsets WHERE consumer = ? AND stream = ?", sorted(removed)
            )
            seen = {s for (s,) in await db.execute_fetchall("SELECT stream FROM spool_streams")}
            (last,) = await _first_row(db, "SELECT COALESCE(MAX(seq), 0) FROM spool_pages")
            await db.executemany(
                "INSERT INTO spool_offsets (consumer, stream, seq, position) VALUES (?, ?, ?, 0)",
                [(c, s, last + 1 if s in seen else 0) for c, s in sorted(added)],
            )
            await db.executemany(
                "INSERT INTO spool_streams (stream, first_subscribed_at) VALUES (?, ?)",
                [(s, now) for s in sorted({s for _, s in added} - seen)],
            )
            freed = await _collect(db, seen | {s for _, s in removed})
        self._subscriptions = wanted
        self._release(freed)
        await self._bump()
        log.info(
            "spool.consumers_set",
            consumers=sorted(wanted),
            added=[f"{c}:{s}" for c, s in sorted(added)],
            removed=[f"{c}:{s}" for c, s in sorted(removed)],
        )

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


async def _collect(db: aiosqlite.Connection, streams: Iterable[str]) -> int:
    """Delete the pages of ``streams`` that no consumer still needs; return the bytes freed.

    A stream that has never had a consumer keeps everything, for its first one.
    """
    freed = 0
    for stream in streams:
        rows = list(
            await db.execute_fetchall(
                "SELECT (SELECT MIN(seq) FROM spool_offsets WHERE stream = :stream),"
                " EXISTS (SELECT 1 FROM spool_streams WHERE stream = :stream)",
                {"stream": stream},
            )
        )
        lowest_needed, has_had_consumer = rows[0]
        if lowest_needed is None and not has_had_consumer:
            continue
        deleted = await db.execute_fetchall(
            "DELETE FROM spool_pages WHERE stream = ? AND seq < ? RETURNING bytes",
            (stream, _BEYOND_ANY_SEQ if lowest_needed is None else lowest_needed),
        )
        sizes = [size for (size,) in deleted]
        if sizes:
            freed += sum(sizes)
            log.debug("spool.pages_collected", stream=stream, pages=len(sizes), bytes=sum(sizes))
    return freed


async def _first_row(db: aiosqlite.Connection, sql: str, params: Any = ()) -> tuple[Any, ...]:
    """The first row of a query that always returns one (an aggregate)."""
    rows = list(await db.execute_fetchall(sql, params))
    return tuple(rows[0])


def _record_id(record: Mapping[str, Any]) -> str | None:
    value = record.get("_id")
    return None if value is None else str(value)


def _dump_progress(progress: Mapping[str, Any] | None) -> str | None:
    return None if progress is None else orjson.dumps(dict(progress)).decode()


def _encode(records: list[dict[str, Any]]) -> bytes:
    frames = []
    for start in range(0, len(records), FRAME_RECORDS):
        try:
            text = orjson.dumps(records[start : start + FRAME_RECORDS])
        except orjson.JSONEncodeError as exc:
            raise UnencodableRecordsError(
                f"records {start}-{min(start + FRAME_RECORDS, len(records)) - 1} of the page: {exc}"
            ) from exc
        frames.append(lz4.frame.compress(text, content_checksum=True))
    return b"".join(frames)


def _decompress(seq: int, codec: str, body: bytes) -> tuple[bytes, ...]:
    """The page's frames as JSON arrays (not parsed yet); damage is detected here."""
    if codec not in (CODEC, _ZLIB_CODEC):
        raise SpoolCorruptError(f"spool page {seq} uses codec {codec!r}, which this ce-daemon cannot read")
    chunks: list[bytes] = []
    rest = body
    try:
        while rest:
            frame: Any = lz4.frame.LZ4FrameDecompressor() if codec == CODEC else zlib.decompressobj()
            chunks.append(frame.decompress(rest))
            if not frame.eof:
                raise SpoolCorruptError(f"spool page {seq} ends in the middle of a frame")
            rest = frame.unused_data
    except (zlib.error, RuntimeError) as exc:
        raise SpoolCorruptError(f"spool page {seq} cannot be decoded: {exc}") from exc
    return tuple(chunks)
