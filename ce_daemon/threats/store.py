"""The IOC store: one row per (value, type, source), a merged view per value, full lists as set differences.

Each source's word on an indicator is kept apart (first and last sighting, count, verdict, severity,
reputation, confidence, tags, comment, expiry), so trust policy can weigh sources and one source's
retraction never erases another's sighting (MineMeld's model, threat-intel.md). The merged view per
value takes first_seen = min, last_seen = max, sources = union, sightings = sum.

A full-list source (a feed that sends its whole list each poll) is applied as a set difference:
only new, changed or reappearing rows are written, and rows of the source missing from the poll
become inactive afterwards, once the whole poll went through ("sudden death" only after a
successful poll: a poll that fails midway deactivates nothing). A still-listed row is not rewritten
on every poll: its last sighting is the source's last successful poll (``threat_sources.last_poll``),
which the merged view and :meth:`IocStore.expire` read; ``sightings`` counts the polls that wrote it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Final, NamedTuple

import orjson

from ce_daemon.bulk import collector_paused
from ce_daemon.store import Fence, Migration, Store
from ce_daemon.store.base import Row
from ce_daemon.threats.model import Indicator, IocType, Severity, Sighting, Verdict
from ce_daemon.threats.settings import Lifetime

__all__ = ["THREATS_MIGRATIONS", "IngestResult", "IocStore", "Merged", "SourceRow", "StoredIoc"]

THREATS_MIGRATIONS: Final = (
    Migration(
        "threats",
        1,
        (
            """CREATE TABLE threat_iocs (
                value {text} NOT NULL,
                type {text} NOT NULL,
                source {text} NOT NULL,
                dlp {int} NOT NULL,
                first_seen {real} NOT NULL,
                last_seen {real} NOT NULL,
                sightings {int} NOT NULL,
                verdict {text} NOT NULL,
                severity {text} NOT NULL,
                reputation {int} NOT NULL,
                confidence {int} NOT NULL,
                tags {text} NOT NULL,
                comment {text} NOT NULL,
                digest {int} NOT NULL,
                expires_at {real} NOT NULL,
                active {int} NOT NULL,
                PRIMARY KEY (value, type, source)
            ) {keyed}""",
            "CREATE INDEX threat_iocs_source ON threat_iocs(source, active)",
            """CREATE TABLE threat_sources (
                source {text} PRIMARY KEY,
                full_list {int} NOT NULL,
                basis {text} NOT NULL,
                last_poll {real} NOT NULL,
                polls {int} NOT NULL,
                rejected {int} NOT NULL
            ) {keyed}""",
        ),
    ),
    Migration(
        "threats",
        2,
        (
            "ALTER TABLE threat_sources ADD COLUMN checkpoint {text}",
            "ALTER TABLE threat_sources ADD COLUMN last_error {text}",
            """CREATE TABLE threat_shares (
                destination {text} NOT NULL,
                type {text} NOT NULL,
                value {text} NOT NULL,
                rule {text} NOT NULL,
                state {text} NOT NULL,
                reason {text} NOT NULL,
                digest {int} NOT NULL,
                entry {text} NOT NULL,
                shared_at {real} NOT NULL,
                PRIMARY KEY (destination, type, value)
            ) {keyed}""",
            """CREATE TABLE threat_pushes (
                destination {text} PRIMARY KEY,
                runs {int} NOT NULL,
                last_run {real} NOT NULL,
                last_ok {real} NOT NULL,
                listed {int} NOT NULL,
                added {int} NOT NULL,
                removed {int} NOT NULL,
                dropped {int} NOT NULL,
                rejected {int} NOT NULL,
                list_digest {text} NOT NULL,
                error {text} NOT NULL
            ) {keyed}""",
        ),
    ),
)
"""The store's tables: the value leads the key (lookups by value), an index serves lookups by source;
what each destination holds (``threat_shares``) and each destination's last push (``threat_pushes``)."""

BATCH: Final = 5000
SORT_WINDOW: Final = 50_000
"""Rows sorted by key before they are written: inserts in key order touch each index page once instead
of jumping across the whole index (a 200,000-row feed writes 3 times faster, measured)."""
"""Rows per transaction: large enough for throughput, small enough to keep a transaction short."""
_COLUMNS: Final = (
    "value, type, source, dlp, first_seen, last_seen, sightings, verdict, severity, reputation,"
    " confidence, tags, comment, digest, expires_at, active"
)
_UPSERT: Final = (
    f"INSERT INTO threat_iocs ({_COLUMNS}) VALUES (:value, :type, :source, :dlp, :seen, :seen, 1,"  # noqa: S608 - fixed names
    " :verdict, :severity, :reputation, :confidence, :tags, :comment, :digest, :expires, 1)"
    " ON CONFLICT (value, type, source) DO UPDATE SET"
    " last_seen = CASE WHEN excluded.last_seen > threat_iocs.last_seen"
    " THEN excluded.last_seen ELSE threat_iocs.last_seen END,"
    " first_seen = CASE WHEN excluded.first_seen < threat_iocs.first_seen"
    " THEN excluded.first_seen ELSE threat_iocs.first_seen END,"
    " sightings = threat_iocs.sightings + 1, dlp = excluded.dlp, verdict = excluded.verdict,"
    " severity = excluded.severity, reputation = excluded.reputation, confidence = excluded.confidence,"
    " tags = excluded.tags, comment = excluded.comment, digest = excluded.digest, active = 1,"
    " expires_at = {basis} + :lifetime"
)
_BASIS: Final = {
    "first_seen": "CASE WHEN excluded.first_seen < threat_iocs.first_seen"
    " THEN excluded.first_seen ELSE threat_iocs.first_seen END",
    "last_seen": "CASE WHEN excluded.last_seen > threat_iocs.last_seen"
    " THEN excluded.last_seen ELSE threat_iocs.last_seen END",
}
# The row's last sighting, or its full-list source's last successful poll while it is still listed.
_LAST_SEEN: Final = (
    "CASE WHEN s.full_list = 1 AND i.active = 1 AND s.last_poll > i.last_seen"
    " THEN s.last_poll ELSE i.last_seen END"
)
_SELECT: Final = (
    "SELECT i.value, i.type, i.source, i.dlp, i.first_seen, "  # noqa: S608 - fixed column names
    + _LAST_SEEN
    + ", i.sightings, i.verdict,"
    " i.severity, i.reputation, i.confidence, i.tags, i.comment, i.expires_at, i.active"
    " FROM threat_iocs i LEFT JOIN threat_sources s ON s.source = i.source"
)


class StoredIoc(NamedTuple):
    """One source's row for one indicator (a named tuple: a million of them are read to share a list)."""

    indicator: Indicator
    source: str
    first_seen: float
    last_seen: float
    sightings: int
    verdict: Verdict
    severity: Severity
    reputation: int
    confidence: int
    tags: tuple[str, ...]
    comment: str
    expires_at: float
    active: bool


@dataclass(frozen=True, slots=True)
class Merged:
    """Every source's word on one indicator, merged (the view trust policy and sharing read)."""

    indicator: Indicator
    rows: tuple[StoredIoc, ...]

    @property
    def first_seen(self) -> float:
        return min(row.first_seen for row in self.rows)

    @property
    def last_seen(self) -> float:
        return max(row.last_seen for row in self.rows)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(sorted({row.source for row in self.rows}))

    @property
    def sightings(self) -> int:
        return sum(row.sightings for row in self.rows)

    @property
    def active(self) -> bool:
        """True while any source still lists it."""
        return any(row.active for row in self.rows)


@dataclass(frozen=True, slots=True)
class SourceRow:
    """What the store knows of one source's polls."""

    source: str
    full_list: bool
    last_poll: float
    polls: int
    rejected: int
    last_error: str = ""
    checkpoint: str | None = None


@dataclass(slots=True)
class IngestResult:
    """What one poll changed."""

    written: int = 0
    """New, changed or reappearing rows (and every sighting of an incremental source)."""
    unchanged: int = 0
    """Rows of a full list already stored as they are: not rewritten."""
    deactivated: int = 0
    """Rows of a full list missing from this poll."""
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _digest(sighting: Sighting, tags: str) -> int:
    """A checksum of what a source says of an indicator: a re-listed, unchanged entry is not rewritten."""
    return zlib.crc32(
        f"{sighting.verdict}\x1f{sighting.severity}\x1f{sighting.reputation}\x1f{sighting.confidence}"
        f"\x1f{sighting.indicator.dlp}\x1f{tags}\x1f{sighting.comment}".encode()
    )


def _key(kind: str, value: str) -> str:
    return f"{kind}\x00{value}"


def _unlisted(source: str, listed: dict[str, int]) -> Iterator[dict[str, object]]:
    for key in listed:
        kind, value = key.split("\x00", 1)
        yield {"type": kind, "value": value, "source": source}


def _batches(items: Iterable[dict[str, object]]) -> Iterator[list[dict[str, object]]]:
    iterator = iter(items)
    while batch := list(islice(iterator, BATCH)):
        yield batch


def _sorted_batches(items: Iterable[dict[str, object]]) -> Iterator[list[dict[str, object]]]:
    """Batches of ``items`` in key order within windows of :data:`SORT_WINDOW` rows."""
    iterator = iter(items)
    while window := list(islice(iterator, SORT_WINDOW)):
        window.sort(key=lambda row: (row["value"], row["type"]))
        for start in range(0, len(window), BATCH):
            yield window[start : start + BATCH]


class IocStore:
    """The threat tables of a :class:`~ce_daemon.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def ingest(
        self,
        source: str,
        sightings: Iterable[Sighting],
        *,
        full_list: bool,
        lifetime: Lifetime,
        rejected: int = 0,
        now: float | None = None,
        checkpoint: str | None = None,
        finished: bool = True,
        fence: Fence | None = None,
    ) -> IngestResult:
        """Store one poll of ``source``; for a full list, deactivate what it no longer lists.

        ``sightings`` is read once, in batches committed as they fill; when it raises (the source
        failed mid-poll) what was committed stays, and nothing is deactivated. ``rejected`` counts
        what normalisation and the guards refused in this poll (kept per source). ``checkpoint`` (an
        incremental source's cursor after these sightings) is stored in the last transaction, after
        every sighting: a restart resumes from it and reads nothing twice that it needs. An
        incremental poll stores each page with ``finished=False`` but the last, so that a poll counts
        once and its time is the end of the poll.
        """
        now = time.time() if now is None else now
        result = IngestResult(rejected=rejected)
        with collector_paused():
            listed = await self._listed(source) if full_list else {}
        upsert = _UPSERT.replace("{basis}", _BASIS[lifetime.basis])

        lives = {kind: lifetime.of(kind) for kind in IocType}
        no_tags = "[]"

        def rows() -> Iterator[dict[str, object]]:
            # The hot loop of a feed's ingest: what does not vary per row is computed once.
            for sighting in sightings:
                indicator = sighting.indicator
                kind, value = indicator.type, indicator.value
                tags = orjson.dumps(sorted(set(sighting.tags))).decode() if sighting.tags else no_tags
                digest = _digest(sighting, tags)
                if full_list and listed.pop(f"{kind}\x00{value}", None) == digest:
                    result.unchanged += 1
                    continue
                result.written += 1
                life = lives[kind]
                yield {
                    "value": value,
                    "type": kind.value,
                    "source": source,
                    "dlp": int(indicator.dlp),
                    "seen": sighting.seen,
                    "verdict": sighting.verdict.value,
                    "severity": sighting.severity.value,
                    "reputation": sighting.reputation,
                    "confidence": sighting.confidence,
                    "tags": tags,
                    "comment": sighting.comment,
                    "digest": digest,
                    "lifetime": life,
                    "expires": sighting.seen + life,
                }

        with collector_paused():  # the rows of a million-line feed: no use walking them for cycles
            for batch in _sorted_batches(rows()):
                async with self.store.transaction() as tx:
                    await tx.executemany(upsert, batch)
                    if fence is not None:
                        await fence.check(tx)
        async with self.store.transaction() as tx:
            if full_list:
                for batch in _batches(_unlisted(source, listed)):
                    await tx.executemany(
                        "UPDATE threat_iocs SET active = 0"
                        " WHERE value = :value AND type = :type AND source = :source",
                        batch,
                    )
                result.deactivated = len(listed)
            await tx.execute(
                "INSERT INTO threat_sources"
                " (source, full_list, basis, last_poll, polls, rejected, checkpoint, last_error)"
                " VALUES (:source, :full_list, :basis, :now, :polls, :rejected, :checkpoint, '')"
                " ON CONFLICT (source) DO UPDATE SET full_list = excluded.full_list, basis = excluded.basis,"
                " last_poll = CASE WHEN :finished = 1"
                " THEN excluded.last_poll ELSE threat_sources.last_poll END,"
                " polls = threat_sources.polls + excluded.polls,"
                " rejected = threat_sources.rejected + excluded.rejected,"
                " checkpoint = COALESCE(excluded.checkpoint, threat_sources.checkpoint),"
                " last_error = CASE WHEN :finished = 1 THEN '' ELSE threat_sources.last_error END",
                {
                    "source": source,
                    "full_list": int(full_list),
                    "basis": lifetime.basis,
                    "now": now,
                    "polls": int(finished),
                    "rejected": rejected,
                    "checkpoint": checkpoint,
                    "finished": int(finished),
                },
            )
            if fence is not None:
                await fence.check(tx)
        return result

    async def checkpoint(self, source: str) -> str | None:
        """Where ``source``'s next poll resumes (None: from the start)."""
        async with self.store.read() as tx:
            value = await tx.fetchval(
                "SELECT checkpoint FROM threat_sources WHERE source = :source", {"source": source}
            )
        return None if value is None else str(value)

    async def poll_failed(self, source: str, error: str, *, rejected: int = 0) -> None:
        """Record why ``source``'s poll failed (shown by ``iocs stats`` until a poll goes through)."""
        async with self.store.transaction() as tx:
            await tx.execute(
                "INSERT INTO threat_sources"
                " (source, full_list, basis, last_poll, polls, rejected, checkpoint, last_error)"
                " VALUES (:source, 0, 'last_seen', 0, 0, :rejected, NULL, :error)"
                " ON CONFLICT (source) DO UPDATE SET last_error = excluded.last_error,"
                " rejected = threat_sources.rejected + excluded.rejected",
                {"source": source, "error": error[:500], "rejected": rejected},
            )

    async def active_groups(
        self,
        *,
        types: Iterable[str] | None = None,
        sources: Iterable[str] | None = None,
        not_source: str | None = None,
        page: int = 20_000,
    ) -> AsyncIterator[list[list[StoredIoc]]]:
        """The active rows of ``types`` (all: None) and ``sources`` (all: None or empty), without
        ``not_source``'s, grouped per indicator, in value order: each group one indicator's rows.

        Read a page at a time by key (a million rows never sit in memory as one answer); a group is
        never split across pages. The rows are what :meth:`merged` shows, restricted to the filters.
        """
        where = ["i.active = 1"]
        params: dict[str, object] = {"limit": page}
        for name, values in (("type", types), ("source", sources)):
            listed = sorted(set(values or ()))
            if listed:
                marks = ", ".join(f":{name}{n}" for n in range(len(listed)))
                where.append(f"i.{name} IN ({marks})")
                params.update({f"{name}{n}": value for n, value in enumerate(listed)})
        if not_source is not None:
            where.append("i.source <> :not_source")
            params["not_source"] = not_source
        after = ("", "", "")
        carry: list[StoredIoc] = []
        while True:
            async with self.store.read() as tx:
                rows = await tx.fetch(
                    # a row-value comparison: both backends seek it in the primary key's index
                    f"{_SELECT} WHERE {' AND '.join(where)} AND (i.value, i.type, i.source) > (:v, :t, :s)"
                    " ORDER BY i.value, i.type, i.source LIMIT :limit",
                    {**params, "v": after[0], "t": after[1], "s": after[2]},
                )
            if not rows:
                break
            last = rows[-1]
            after = (str(last[0]), str(last[1]), str(last[2]))
            groups: list[list[StoredIoc]] = []
            current = carry
            for row in rows:
                stored = _stored(row)
                if current and (
                    current[0].indicator.value != stored.indicator.value
                    or current[0].indicator.type is not stored.indicator.type
                ):
                    groups.append(current)
                    current = []
                current.append(stored)
            carry = current  # the last group may go on in the next page
            if groups:
                yield groups
            if len(rows) < page:
                break
        if carry:
            yield [carry]

    async def active_merged(self) -> list[Merged]:
        """Every indicator some source lists as active, with its active rows merged (what sharing reads)."""
        async with self.store.read() as tx:
            rows = await tx.fetch(f"{_SELECT} WHERE i.active = 1")
        return _merge([_stored(row) for row in rows])

    async def _listed(self, source: str) -> dict[str, int]:
        """The active rows of ``source`` (type and value) with their digests."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT type, value, digest FROM threat_iocs WHERE source = :source AND active = 1",
                {"source": source},
            )
        return {_key(kind, value): digest for kind, value, digest in rows}

    async def expire(self, now: float | None = None, *, fence: Fence | None = None) -> int:
        """Deactivate every row past its lifetime; the number deactivated.

        A row still listed by a full-list source with a ``last_seen`` lifetime counts from the
        source's last successful poll (its true last sighting), not from when it was last written.
        """
        now = time.time() if now is None else now
        async with self.store.transaction() as tx:
            expired = await tx.execute(
                "UPDATE threat_iocs SET active = 0 WHERE active = 1 AND expires_at <= :now AND NOT EXISTS ("
                " SELECT 1 FROM threat_sources s WHERE s.source = threat_iocs.source AND s.full_list = 1"
                " AND s.basis = 'last_seen'"
                " AND threat_iocs.expires_at - threat_iocs.last_seen + s.last_poll > :now)",
                {"now": now},
            )
            if fence is not None:
                await fence.check(tx)
            return expired

    async def merged(self, value: str, kind: IocType | None = None) -> list[Merged]:
        """The merged view of ``value`` (one per type it is stored as), or none."""
        async with self.store.read() as tx:
            rows = await tx.fetch(f"{_SELECT} WHERE i.value = :value", {"value": value})
        return [m for m in _merge([_stored(row) for row in rows]) if kind is None or m.indicator.type is kind]

    async def search(
        self,
        *,
        contains: str | None = None,
        kind: IocType | None = None,
        source: str | None = None,
        active: bool | None = None,
        limit: int = 100,
    ) -> list[Merged]:
        """Indicators (the first ``limit`` values, in order) matching every filter given, merged.

        ``contains`` is a substring of the value; a merged indicator shows every source's row.
        """
        where: list[str] = []
        params: dict[str, object] = {"limit": limit}
        if kind is not None:
            where.append("type = :type")
            params["type"] = str(kind)
        if source is not None:
            where.append("source = :source")
            params["source"] = source
        if active is not None:
            where.append("active = :active")
            params["active"] = int(active)
        if contains:
            where.append("value LIKE :pattern")
            params["pattern"] = "%" + contains.replace("%", "").replace("_", "") + "%"
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                f"{_SELECT} WHERE i.value IN (SELECT value FROM threat_iocs{condition}"  # noqa: S608 - bound
                " GROUP BY value ORDER BY value LIMIT :limit)",
                params,
            )
        return [m for m in _merge([_stored(row) for row in rows]) if kind is None or m.indicator.type is kind]

    async def counts(self) -> list[tuple[str, str, bool, int]]:
        """``(type, source, active, rows)`` for every combination present."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT type, source, active, COUNT(*) FROM threat_iocs GROUP BY type, source, active"
                " ORDER BY type, source, active"
            )
        return [(str(kind), str(source), bool(active), int(n)) for kind, source, active, n in rows]

    async def sources(self) -> list[SourceRow]:
        """Every source that has polled, by name."""
        # a database the daemon has not migrated yet (read commands never migrate) lacks the newer columns
        newer = (
            "last_error, checkpoint"
            if "checkpoint" in await self.store.columns("threat_sources")
            else "'', NULL"
        )
        async with self.store.read() as tx:
            rows = await tx.fetch(
                f"SELECT source, full_list, last_poll, polls, rejected, {newer}"  # noqa: S608 - fixed text
                " FROM threat_sources ORDER BY source"
            )
        return [
            SourceRow(str(s), bool(f), float(p), int(n), int(r), str(e or ""), None if c is None else str(c))
            for s, f, p, n, r, e, c in rows
        ]


_TYPES: Final = {kind.value: kind for kind in IocType}
_VERDICTS: Final = {verdict.value: verdict for verdict in Verdict}
_SEVERITIES: Final = {severity.value: severity for severity in Severity}


def _stored(row: Row) -> StoredIoc:
    (
        value,
        kind,
        source,
        dlp,
        first,
        last,
        sightings,
        verdict,
        severity,
        rep,
        conf,
        tags,
        comment,
        exp,
        act,
    ) = row
    return StoredIoc(
        Indicator(_TYPES[kind], str(value), bool(dlp)),
        str(source),
        float(first),
        float(last),
        int(sightings),
        _VERDICTS[verdict],
        _SEVERITIES[severity],
        int(rep),
        int(conf),
        () if tags == "[]" else tuple(orjson.loads(str(tags))),
        str(comment),
        float(exp),
        bool(act),
    )


def _merge(rows: list[StoredIoc]) -> list[Merged]:
    by_indicator: dict[tuple[IocType, str], list[StoredIoc]] = {}
    for row in rows:
        by_indicator.setdefault((row.indicator.type, row.indicator.value), []).append(row)
    return [
        Merged(
            Indicator(kind, value, any(r.indicator.dlp for r in group)),
            tuple(sorted(group, key=lambda r: r.source)),
        )
        for (kind, value), group in sorted(by_indicator.items())
    ]
