"""The risk exchange's tables, on either backend (neutral SQL, the store's type words).

- ``risk_records``: each source's word on each entity (raw value or label, normalised score, when the
  source scored it, its attributes); a poll replaces the rows of the entities it lists, a failed poll
  touches nothing (the last good scores stay, and go stale by age). An entity a source stops listing
  keeps its last score from that source until it goes stale (residual risk, documented in Elastic's
  terms: no silent reset).
- ``risk_entities``: each entity's combined score, band and the per-source scores that made it.
- ``risk_history``: each entity's combined score every time it changed.
- ``risk_daily``: per entity type and UTC day, the average combined score and how many entities had
  one; written once when the day is over, never recomputed.
- ``risk_sources``: each source's polls, skipped values and last error.
- ``risk_rule_state``: per rule and entity, whether it matches, since when, when it last fired and
  whether its actions are applied (edge triggering and flap suppression).
- ``risk_actions``: the action log (an intent row ``running`` is written before a plugin is called and
  its outcome after: a crash in between is redone, the plugin's apply being idempotent).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ce_daemon.risk.normalise import PollScores
from ce_daemon.store import Fence, Migration, Store, Transaction

__all__ = ["RISK_MIGRATIONS", "ActionRow", "RiskStore", "RuleState", "SourceRow"]

RISK_MIGRATIONS: Final = (
    Migration(
        "risk",
        1,
        (
            """CREATE TABLE risk_records (
                type {text} NOT NULL,
                key {text} NOT NULL,
                source {text} NOT NULL,
                raw {real},
                label {text},
                score {real} NOT NULL,
                seen {real} NOT NULL,
                attributes {text} NOT NULL,
                PRIMARY KEY (type, key, source)
            ) {keyed}""",
            """CREATE TABLE risk_entities (
                type {text} NOT NULL,
                key {text} NOT NULL,
                score {real},
                band {text} NOT NULL,
                scores {text} NOT NULL,
                attributes {text} NOT NULL,
                updated {real} NOT NULL,
                PRIMARY KEY (type, key)
            ) {keyed}""",
            "CREATE INDEX risk_entities_band ON risk_entities(type, band)",
            """CREATE TABLE risk_history (
                type {text} NOT NULL,
                key {text} NOT NULL,
                at {real} NOT NULL,
                score {real},
                band {text} NOT NULL,
                PRIMARY KEY (type, key, at)
            ) {keyed}""",
            """CREATE TABLE risk_daily (
                type {text} NOT NULL,
                day {text} NOT NULL,
                average {real} NOT NULL,
                entities {int} NOT NULL,
                PRIMARY KEY (type, day)
            ) {keyed}""",
            """CREATE TABLE risk_sources (
                source {text} PRIMARY KEY,
                last_poll {real} NOT NULL,
                last_ok {real} NOT NULL,
                polls {int} NOT NULL,
                records {int} NOT NULL,
                skipped {int} NOT NULL,
                error {text} NOT NULL
            ) {keyed}""",
            """CREATE TABLE risk_rule_state (
                rule {text} NOT NULL,
                type {text} NOT NULL,
                key {text} NOT NULL,
                matching {int} NOT NULL,
                since {real} NOT NULL,
                fired {real} NOT NULL,
                applied {int} NOT NULL,
                PRIMARY KEY (rule, type, key)
            ) {keyed}""",
            """CREATE TABLE risk_actions (
                id {id},
                rule {text} NOT NULL,
                type {text} NOT NULL,
                key {text} NOT NULL,
                action {text} NOT NULL,
                kind {text} NOT NULL,
                outcome {text} NOT NULL,
                detail {text} NOT NULL,
                state {text} NOT NULL,
                score {real},
                band {text} NOT NULL,
                at {real} NOT NULL,
                done {real} NOT NULL
            )""",
            "CREATE INDEX risk_actions_outcome ON risk_actions(outcome)",
            "CREATE INDEX risk_actions_entity ON risk_actions(type, key, rule)",
        ),
    ),
)

BATCH: Final = 5000


@dataclass(frozen=True, slots=True)
class SourceRow:
    """A source's polls as ``risk_sources`` records them."""

    source: str
    last_poll: float
    last_ok: float
    polls: int
    records: int
    skipped: int
    error: str


@dataclass(slots=True)
class RuleState:
    """One rule's state for one entity."""

    matching: bool
    since: float
    fired: float
    applied: bool


@dataclass(frozen=True, slots=True)
class ActionRow:
    """One entry of the action log."""

    id: int
    rule: str
    type: str
    key: str
    action: str
    kind: str
    """``apply`` or ``revert``."""
    outcome: str
    """``running success failed muted suppressed deferred pending_approval approved declined cancelled``."""
    detail: str
    state: dict[str, str]
    score: float | None
    band: str
    at: float
    done: float


_ACTION_COLUMNS: Final = "id, rule, type, key, action, kind, outcome, detail, state, score, band, at, done"


def _action(row: Sequence[Any]) -> ActionRow:
    i, rule, kind_, key, action, kind, outcome, detail, state, score, band, at, done = row
    return ActionRow(
        int(i), str(rule), str(kind_), str(key), str(action), str(kind), str(outcome), str(detail),
        dict(orjson.loads(str(state))) if state and state != "{}" else {},
        None if score is None else float(score), str(band), float(at), float(done),
    )  # fmt: skip


async def _batched(tx: Transaction, sql: str, rows: Sequence[dict[str, object]]) -> None:
    for start in range(0, len(rows), BATCH):
        await tx.executemany(sql, rows[start : start + BATCH])


class RiskStore:
    """The risk tables of a :class:`~ce_daemon.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- sources ---------------------------------------------------------------------------

    async def store_poll(
        self, source: str, poll: PollScores, *, now: float | None = None, fence: Fence | None = None
    ) -> int:
        """Store one whole poll of ``source`` (its records replace the ones it gave before)."""
        now = time.time() if now is None else now
        rows: list[dict[str, object]] = [
            {
                "type": r.entity, "key": r.key, "source": source, "raw": r.raw, "label": r.label,
                "score": r.score, "seen": now if r.seen is None else min(r.seen, now),
                "attributes": orjson.dumps(r.attributes).decode() if r.attributes else "{}",
            }
            for r in poll.records
        ]  # fmt: skip
        rows.sort(key=lambda r: (str(r["type"]), str(r["key"])))
        async with self.store.transaction() as tx:
            await _batched(tx, _UPSERT_RECORD, rows)
            await self._polled(
                tx, source, now, ok=True, records=len(rows), skipped=sum(poll.skipped.values())
            )
            if fence is not None:
                await fence.check(tx)
        return len(rows)

    async def store_records(
        self, source: str, poll: PollScores, *, now: float | None = None, fence: Fence | None = None
    ) -> int:
        """Store some records of an incremental source (Netskope's alerts): the newer word wins."""
        now = time.time() if now is None else now
        latest: dict[tuple[str, str], dict[str, object]] = {}
        for r in poll.records:
            seen = now if r.seen is None else min(r.seen, now)
            was = latest.get((r.entity, r.key))
            if was is not None and float(was["seen"]) > seen:  # type: ignore[arg-type]
                continue
            latest[(r.entity, r.key)] = {
                "type": r.entity, "key": r.key, "source": source, "raw": r.raw, "label": r.label,
                "score": r.score, "seen": seen,
                "attributes": orjson.dumps(r.attributes).decode() if r.attributes else "{}",
            }  # fmt: skip
        rows = [latest[k] for k in sorted(latest)]
        async with self.store.transaction() as tx:
            await _batched(tx, _UPSERT_RECORD + _NEWER, rows)
            await self._polled(
                tx, source, now, ok=True, records=len(rows), skipped=sum(poll.skipped.values())
            )
            if fence is not None:
                await fence.check(tx)
        return len(rows)

    @staticmethod
    async def _polled(
        tx: Transaction, source: str, now: float, *, ok: bool, records: int, skipped: int, error: str = ""
    ) -> None:
        await tx.execute(
            "INSERT INTO risk_sources (source, last_poll, last_ok, polls, records, skipped, error)"
            " VALUES (:source, :now, :ok_at, 1, :records, :skipped, :error)"
            " ON CONFLICT (source) DO UPDATE SET last_poll = excluded.last_poll,"
            " last_ok = CASE WHEN :ok = 1 THEN excluded.last_ok ELSE risk_sources.last_ok END,"
            " polls = risk_sources.polls + 1,"
            " records = CASE WHEN :ok = 1 THEN excluded.records ELSE risk_sources.records END,"
            " skipped = risk_sources.skipped + excluded.skipped, error = excluded.error",
            {"source": source, "now": now, "ok_at": now if ok else 0.0, "records": records,
             "skipped": skipped, "error": error[:500], "ok": int(ok)},
        )  # fmt: skip

    async def poll_failed(
        self, source: str, error: str, *, skipped: int = 0, now: float | None = None
    ) -> None:
        """Record why ``source``'s poll failed (its stored scores stay as they were)."""
        async with self.store.transaction() as tx:
            await self._polled(
                tx, source, time.time() if now is None else now, ok=False, records=0, skipped=skipped,
                error=error or "failed",
            )  # fmt: skip

    async def sources(self) -> list[SourceRow]:
        """Every source that polled, by name."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT source, last_poll, last_ok, polls, records, skipped, error FROM risk_sources"
                " ORDER BY source"
            )
        return [
            SourceRow(str(s), float(p), float(o), int(n), int(r), int(k), str(e))
            for s, p, o, n, r, k, e in rows
        ]

    async def source_freshness(self) -> dict[str, float]:
        """The newest score time of each source's records."""
        async with self.store.read() as tx:
            rows = await tx.fetch("SELECT source, MAX(seen) FROM risk_records GROUP BY source")
        return {str(s): float(m) for s, m in rows if m is not None}

    # -- records and entities -----------------------------------------------------------------

    async def records(self, kind: str | None = None, key: str | None = None) -> list[tuple[Any, ...]]:
        """``(type, key, source, raw, label, score, seen, attributes)`` in (type, key) order."""
        where, params = _where(kind, key)
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT type, key, source, raw, label, score, seen, attributes FROM risk_records"  # noqa: S608 - bound
                f"{where} ORDER BY type, key, source",
                params,
            )
        return [tuple(r) for r in rows]

    async def keys(self, kind: str, limit: int) -> list[str]:
        """The keys of the ``kind`` entities any source scored, sorted, at most ``limit``."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT DISTINCT key FROM risk_records WHERE type = :type ORDER BY key LIMIT :limit",
                {"type": kind, "limit": limit},
            )
        return [str(key) for (key,) in rows]

    async def scores(self) -> list[tuple[Any, ...]]:
        """``(type, key, source, score, seen, attributes)`` of every record, in (type, key) order: what a
        recompute reads."""
        async with self.store.read() as tx:
            return await tx.fetch(
                "SELECT type, key, source, score, seen, attributes FROM risk_records"
                " ORDER BY type, key, source"
            )  # type: ignore[return-value]

    async def entities(self, kind: str | None = None, key: str | None = None) -> list[tuple[Any, ...]]:
        """``(type, key, score, band, scores json, attributes json, updated)`` in (type, key) order."""
        where, params = _where(kind, key)
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT type, key, score, band, scores, attributes, updated FROM risk_entities"  # noqa: S608 - bound
                f"{where} ORDER BY type, key",
                params,
            )
        return [tuple(r) for r in rows]

    async def write_entities(
        self, rows: Sequence[dict[str, object]], history: Sequence[dict[str, object]], *, fence: Fence | None
    ) -> None:
        """Upsert changed entities and append their history."""
        async with self.store.transaction() as tx:
            await _batched(
                tx,
                "INSERT INTO risk_entities (type, key, score, band, scores, attributes, updated)"
                " VALUES (:type, :key, :score, :band, :scores, :attributes, :updated)"
                " ON CONFLICT (type, key) DO UPDATE SET score = excluded.score, band = excluded.band,"
                " scores = excluded.scores, attributes = excluded.attributes, updated = excluded.updated",
                rows,
            )
            await _batched(
                tx,
                "INSERT INTO risk_history (type, key, at, score, band)"
                " VALUES (:type, :key, :at, :score, :band)"
                " ON CONFLICT (type, key, at) DO UPDATE SET score = excluded.score, band = excluded.band",
                history,
            )
            if fence is not None:
                await fence.check(tx)

    async def history(self, kind: str, key: str, limit: int = 100) -> list[tuple[float, float | None, str]]:
        """``(at, score, band)`` of one entity, newest first."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT at, score, band FROM risk_history WHERE type = :type AND key = :key"
                " ORDER BY at DESC LIMIT :limit",
                {"type": kind, "key": key, "limit": limit},
            )
        return [(float(a), None if s is None else float(s), str(b)) for a, s, b in rows]

    async def band_counts(self) -> list[tuple[str, str, int, float | None]]:
        """``(type, band, entities, average score)`` for each present combination."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT type, band, COUNT(*), AVG(score) FROM risk_entities"
                " GROUP BY type, band ORDER BY type, band"
            )
        return [(str(t), str(b), int(n), None if a is None else float(a)) for t, b, n, a in rows]

    # -- daily snapshots ----------------------------------------------------------------------

    async def snapshot(
        self, day: str, averages: Iterable[tuple[str, float, int]], *, fence: Fence | None
    ) -> None:
        """Write ``day``'s averages per type once (a day already written is left as it is)."""
        async with self.store.transaction() as tx:
            await tx.executemany(
                "INSERT INTO risk_daily (type, day, average, entities) VALUES (:type, :day, :average, :n)"
                " ON CONFLICT (type, day) DO NOTHING",
                [{"type": t, "day": day, "average": a, "n": n} for t, a, n in averages],
            )
            await tx.execute(
                "INSERT INTO risk_daily (type, day, average, entities) VALUES ('-', :day, 0, 0)"
                " ON CONFLICT (type, day) DO NOTHING",
                {"day": day},
            )
            if fence is not None:
                await fence.check(tx)

    async def last_snapshot(self) -> str | None:
        """The latest day snapshotted (``YYYY-MM-DD``)."""
        async with self.store.read() as tx:
            value = await tx.fetchval("SELECT MAX(day) FROM risk_daily")
        return None if value is None else str(value)

    async def daily(self, since: str) -> list[tuple[str, str, float, int]]:
        """``(type, day, average, entities)`` from ``since`` on, by type and day."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT type, day, average, entities FROM risk_daily WHERE day >= :since AND type <> '-'"
                " ORDER BY type, day",
                {"since": since},
            )
        return [(str(t), str(d), float(a), int(n)) for t, d, a, n in rows]

    # -- rules -------------------------------------------------------------------------------

    async def rule_states(self) -> dict[tuple[str, str, str], RuleState]:
        """Every rule state kept, by (rule, type, key)."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT rule, type, key, matching, since, fired, applied FROM risk_rule_state"
            )
        return {
            (str(r), str(t), str(k)): RuleState(bool(m), float(s), float(f), bool(a))
            for r, t, k, m, s, f, a in rows
        }

    async def write_states(
        self,
        states: dict[tuple[str, str, str], RuleState | None],
        *,
        fence: Fence | None,
        tx: Transaction | None = None,
    ) -> None:
        """Upsert (or, for None, delete) rule states."""
        upserts: list[dict[str, object]] = [
            {"rule": r, "type": t, "key": k, "matching": int(s.matching), "since": s.since, "fired": s.fired,
             "applied": int(s.applied)}
            for (r, t, k), s in states.items() if s is not None
        ]  # fmt: skip
        gone: list[dict[str, object]] = [
            {"rule": r, "type": t, "key": k} for (r, t, k), s in states.items() if s is None
        ]
        if tx is not None:
            await self._states(tx, upserts, gone)
            return
        async with self.store.transaction() as own:
            await self._states(own, upserts, gone)
            if fence is not None:
                await fence.check(own)

    @staticmethod
    async def _states(
        tx: Transaction, upserts: list[dict[str, object]], gone: list[dict[str, object]]
    ) -> None:
        await _batched(
            tx,
            "INSERT INTO risk_rule_state (rule, type, key, matching, since, fired, applied)"
            " VALUES (:rule, :type, :key, :matching, :since, :fired, :applied)"
            " ON CONFLICT (rule, type, key) DO UPDATE SET matching = excluded.matching,"
            " since = excluded.since, fired = excluded.fired, applied = excluded.applied",
            upserts,
        )
        await _batched(
            tx, "DELETE FROM risk_rule_state WHERE rule = :rule AND type = :type AND key = :key", gone
        )

    # -- action log --------------------------------------------------------------------------

    async def decide(
        self,
        states: Mapping[tuple[str, str, str], RuleState | None],
        entries: Sequence[Mapping[str, object]] = (),
        *,
        outcomes: Sequence[tuple[int, str, str]] = (),
        now: float | None = None,
        fence: Fence | None = None,
    ) -> list[int]:
        """In one transaction: rule states written (None: deleted), new action-log ``entries`` appended
        (their ids returned, in order) and existing entries given an outcome (``(id, outcome, detail)``).

        An edge's decision and the intent of each call it makes commit together: after a crash either
        both are there (the ``running`` calls are redone) or neither (the edge is seen again)."""
        now = time.time() if now is None else now
        ids: list[int] = []
        async with self.store.transaction() as tx:
            await self.write_states(dict(states), fence=None, tx=tx)
            for entry in entries:
                outcome = str(entry["outcome"])
                value = await tx.fetchval(
                    "INSERT INTO risk_actions (rule, type, key, action, kind, outcome, detail, state, score,"
                    " band, at, done) VALUES (:rule, :type, :key, :action, :kind, :outcome, :detail, '{}',"
                    " :score, :band, :now, :done) RETURNING id",
                    {**entry, "detail": str(entry.get("detail", ""))[:1000], "now": now,
                     "done": 0.0 if outcome == "running" else now},
                )  # fmt: skip
                ids.append(int(value))
            for ident, outcome, detail in outcomes:
                await tx.execute(
                    "UPDATE risk_actions SET outcome = :outcome, detail = :detail, done = :done"
                    " WHERE id = :id",
                    {"id": ident, "outcome": outcome, "detail": detail[:1000],
                     "done": 0.0 if outcome == "running" else now},
                )  # fmt: skip
            if fence is not None:
                await fence.check(tx)
        return ids

    async def finish_action(
        self,
        ident: int,
        outcome: str,
        *,
        detail: str = "",
        state: dict[str, str] | None = None,
        now: float | None = None,
        fence: Fence | None = None,
        only_from: Sequence[str] = (),
    ) -> bool:
        """Set an entry's outcome (only when its outcome is one of ``only_from``, when given)."""
        now = time.time() if now is None else now
        condition = ""
        params: dict[str, object] = {
            "id": ident, "outcome": outcome, "detail": detail[:1000], "now": now,
            "state": None if state is None else orjson.dumps(state).decode(),
        }  # fmt: skip
        if only_from:
            marks = ", ".join(f":from{n}" for n in range(len(only_from)))
            condition = f" AND outcome IN ({marks})"
            params.update({f"from{n}": value for n, value in enumerate(only_from)})
        async with self.store.transaction() as tx:
            changed = await tx.execute(
                "UPDATE risk_actions SET outcome = :outcome, detail = :detail, done = :now,"  # noqa: S608 - bound
                f" state = COALESCE(:state, state) WHERE id = :id{condition}",
                params,
            )
            if fence is not None:
                await fence.check(tx)
        return changed > 0

    async def actions(
        self,
        *,
        outcomes: Sequence[str] = (),
        rule: str | None = None,
        kind_: str | None = None,
        key: str | None = None,
        ident: int | None = None,
        limit: int = 1000,
    ) -> list[ActionRow]:
        """Entries of the action log, newest first."""
        where: list[str] = []
        params: dict[str, object] = {"limit": limit}
        if outcomes:
            marks = ", ".join(f":o{n}" for n in range(len(outcomes)))
            where.append(f"outcome IN ({marks})")
            params.update({f"o{n}": value for n, value in enumerate(outcomes)})
        for column, value in (("rule", rule), ("type", kind_), ("key", key), ("id", ident)):
            if value is not None:
                where.append(f"{column} = :{column}")
                params[column] = value
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                f"SELECT {_ACTION_COLUMNS} FROM risk_actions{condition} ORDER BY id DESC LIMIT :limit",  # noqa: S608 - bound
                params,
            )
        return [_action(r) for r in rows]

    async def outcome_counts(self) -> list[tuple[str, str, int]]:
        """``(kind, outcome, entries)`` of the action log."""
        async with self.store.read() as tx:
            rows = await tx.fetch("SELECT kind, outcome, COUNT(*) FROM risk_actions GROUP BY kind, outcome")
        return [(str(k), str(o), int(n)) for k, o, n in rows]

    async def forget(self, before: float, *, fence: Fence | None = None) -> None:
        """Delete history and finished action-log entries older than ``before``."""
        async with self.store.transaction() as tx:
            await tx.execute("DELETE FROM risk_history WHERE at < :before", {"before": before})
            await tx.execute(
                "DELETE FROM risk_actions WHERE at < :before AND outcome NOT IN"
                " ('running', 'deferred', 'pending_approval', 'approved')",
                {"before": before},
            )
            if fence is not None:
                await fence.check(tx)


_UPSERT_RECORD: Final = (
    "INSERT INTO risk_records (type, key, source, raw, label, score, seen, attributes)"
    " VALUES (:type, :key, :source, :raw, :label, :score, :seen, :attributes)"
    " ON CONFLICT (type, key, source) DO UPDATE SET raw = excluded.raw, label = excluded.label,"
    " score = excluded.score, seen = excluded.seen, attributes = excluded.attributes"
)
_NEWER: Final = " WHERE excluded.seen >= risk_records.seen"
"""An incremental source's older word never replaces a newer one."""


def _where(kind: str | None, key: str | None) -> tuple[str, dict[str, object]]:
    where: list[str] = []
    params: dict[str, object] = {}
    if kind is not None:
        where.append("type = :type")
        params["type"] = kind
    if key is not None:
        where.append("key = :key")
        params["key"] = key
    return (f" WHERE {' AND '.join(where)}" if where else ""), params
