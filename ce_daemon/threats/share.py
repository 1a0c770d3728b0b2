"""Sharing: what each destination should hold, how that differs from what it holds, and the record of it.

A destination's list is the union of what its sharing rules select from the merged view, in rule
order. Per rule: the rows of the rule's sources (all sources when it names none) are merged and
decided by the trust policy (the allowlist always wins), then the rule's types, minimum
reputation, tags and filter apply, the survivors are ordered (``order``, most first) and cut at the
rule's cap. The destination's own caps (``max_entries``, ``max_bytes``) then cut the union. What was
cut is counted as dropped and reported, never silently lost.

A muted rule selects nothing new and retracts nothing: what it shared before stays as it is (the
allowlist still retracts). What the destination holds is kept in ``threat_shares`` and changed only
after the destination acknowledged a push, in one transaction under the unit's fence: a push whose
answer was lost is computed and sent again whole, and the destination looks before adding.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from ce_daemon.bulk import collector_paused
from ce_daemon.plugin import SharedIoc
from ce_daemon.store import Fence, Store
from ce_daemon.threats.model import Indicator, IocType, Severity, Verdict
from ce_daemon.threats.policy import Policy
from ce_daemon.threats.resolve import ResolvedRule
from ce_daemon.threats.store import IocStore, Merged, StoredIoc

__all__ = ["Held", "PushPlan", "PushRecord", "Selection", "ShareStore", "plan_push", "select"]

_SEVERITY_RANK: Final = {s: i for i, s in enumerate(Severity)}
BATCH: Final = 5000


@dataclass(slots=True)
class Selection:
    """What a destination should hold, in order, with who selected each and what the caps cut."""

    entries: dict[tuple[str, str], tuple[str, SharedIoc]] = field(default_factory=dict)
    """``(type, value)`` → (rule, entry), in the order the destination should keep them."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Entries cut per rule (its cap) and under ``"(destination)"`` (the destination's caps)."""


@dataclass(frozen=True, slots=True)
class Held:
    """One entry a destination holds (or refused), as ``threat_shares`` records it."""

    rule: str
    state: str
    """``shared`` or ``rejected``."""
    digest: int
    entry: SharedIoc


@dataclass(frozen=True, slots=True)
class PushPlan:
    """The difference between what a destination should hold and what it holds."""

    add: list[tuple[str, SharedIoc]]
    remove: list[SharedIoc]
    keep: list[tuple[str, SharedIoc]]
    full: list[SharedIoc]
    """The whole list in order (what a full-replace destination is sent)."""
    list_digest: str


@dataclass(frozen=True, slots=True)
class PushRecord:
    """A destination's last push, as ``threat_pushes`` records it."""

    destination: str
    runs: int
    last_run: float
    last_ok: float
    listed: int
    added: int
    removed: int
    dropped: int
    rejected: int
    error: str


def shared_ioc(indicator: Indicator, rows: Sequence[StoredIoc], winner: StoredIoc) -> SharedIoc:
    """The entry shared for ``indicator`` as decided by ``winner`` among its ``rows``."""
    if len(rows) == 1:  # most indicators: one source's word, taken as it is
        return SharedIoc(
            indicator.type.value, indicator.value, winner.severity.value, winner.reputation,
            winner.confidence, winner.tags, winner.comment, winner.first_seen, winner.last_seen,
            (winner.source,), indicator.dlp,
        )  # fmt: skip
    return SharedIoc(
        type=indicator.type.value,
        value=indicator.value,
        severity=winner.severity.value,
        reputation=winner.reputation,
        confidence=winner.confidence,
        tags=tuple(sorted({tag for row in rows for tag in row.tags})) if len(rows) > 1 else winner.tags,
        comment=winner.comment,
        first_seen=min(row.first_seen for row in rows),
        last_seen=max(row.last_seen for row in rows),
        sources=tuple(sorted({row.source for row in rows})),
        dlp=indicator.dlp,
    )


def _view(ioc: SharedIoc, sightings: int) -> dict[str, Any]:
    """What a rule's filter reads of an entry."""
    return {
        "type": ioc.type,
        "value": ioc.value,
        "severity": ioc.severity,
        "reputation": ioc.reputation,
        "confidence": ioc.confidence,
        "tags": list(ioc.tags),
        "sources": list(ioc.sources),
        "first_seen": ioc.first_seen,
        "last_seen": ioc.last_seen,
        "sightings": sightings,
        "dlp": ioc.dlp,
        "comment": ioc.comment,
    }


_ORDER: Final[dict[str, Callable[[Sequence[StoredIoc], StoredIoc], float]]] = {
    "last_seen": lambda rows, _: max(r.last_seen for r in rows),
    "first_seen": lambda rows, _: min(r.first_seen for r in rows),
    "reputation": lambda _, winner: winner.reputation,
    "severity": lambda _, winner: _SEVERITY_RANK[winner.severity],
    "sightings": lambda rows, _: sum(r.sightings for r in rows),
}
"""What a rule's ``order`` sorts by (the highest first)."""

Candidate = tuple[float, str, str, Sequence[StoredIoc], StoredIoc]
"""(order key, value, type, the indicator's rows, the deciding row): an entry not built yet."""


async def _rule_entries(
    rule: ResolvedRule, iocs: IocStore, policy: Policy, takes: frozenset[str], echo_of: str | None
) -> list[Candidate]:
    """What ``rule`` selects from the active indicators, ordered (most first), before its cap.

    One pass over the rows of the rule's types and sources, a page at a time; an entry is only built
    for what a cap keeps (:func:`_cut`), so a million candidates cost tuples, not objects.
    """
    config = rule.config
    wanted = {str(t) for t in config.types} & takes if config.types else takes
    include, exclude = set(config.tags.include), set(config.tags.exclude)
    order = _ORDER[config.order]
    vetoes = policy.has_allowlist
    chosen: list[Candidate] = []
    async for groups in iocs.active_groups(types=wanted, sources=config.sources, not_source=echo_of):
        for rows in groups:
            first = rows[0]
            if len(rows) == 1:
                if first.verdict is not Verdict.MALICIOUS or (vetoes and policy.allowlisted(first.indicator)):
                    continue
                winner = first
            else:
                decision = policy.decide(Merged(first.indicator, tuple(rows)))
                if not decision.shareable or decision.decided_by is None:
                    continue
                winner = decision.decided_by
            if winner.reputation < config.min_reputation:
                continue
            if include or exclude:
                tags = {tag for row in rows for tag in row.tags}
                if (include and not tags & include) or tags & exclude:
                    continue
            if rule.predicate is not None:
                ioc = shared_ioc(first.indicator, rows, winner)
                if not rule.predicate(_view(ioc, sum(r.sightings for r in rows))):
                    continue
            chosen.append(
                (order(rows, winner), first.indicator.value, str(first.indicator.type), rows, winner)
            )
    chosen.sort(key=lambda c: (c[0], c[1]), reverse=True)
    return chosen


def _cut(
    entries: Sequence[tuple[str, Candidate | SharedIoc]],
    max_entries: int | None,
    max_bytes: int | None,
    size: Callable[[SharedIoc], int],
) -> tuple[list[tuple[str, SharedIoc]], int]:
    """The entries that fit the caps, in order (built as they are kept), and how many did not."""
    kept: list[tuple[str, SharedIoc]] = []
    used = 0
    for rule, item in entries:
        if max_entries is not None and len(kept) >= max_entries:
            break
        ioc = item if isinstance(item, SharedIoc) else shared_ioc(item[4].indicator, item[3], item[4])
        if max_bytes is not None:
            cost = size(ioc)
            if used + cost > max_bytes:
                continue  # a shorter entry further down may still fit
            used += cost
        kept.append((rule, ioc))
    return kept, len(entries) - len(kept)


def _key(item: Candidate | SharedIoc) -> tuple[str, str]:
    return (item.type, item.value) if isinstance(item, SharedIoc) else (item[2], item[1])


async def select(
    rules: Sequence[ResolvedRule],
    iocs: IocStore,
    policy: Policy,
    *,
    takes: frozenset[str],
    max_entries: int | None,
    max_bytes: int | None,
    size: Callable[[SharedIoc], int],
    held: dict[tuple[str, str], Held],
    echo_of: str | None = None,
    now: float | None = None,
) -> Selection:
    """What the destination fed by ``rules`` should hold, given what it ``held`` so far."""
    with collector_paused():  # a pass over every active row: millions of short-lived objects
        return await _select(rules, iocs, policy, takes, max_entries, max_bytes, size, held, echo_of, now)


async def _select(
    rules: Sequence[ResolvedRule],
    iocs: IocStore,
    policy: Policy,
    takes: frozenset[str],
    max_entries: int | None,
    max_bytes: int | None,
    size: Callable[[SharedIoc], int],
    held: dict[tuple[str, str], Held],
    echo_of: str | None,
    now: float | None,
) -> Selection:
    now = time.time() if now is None else now
    selection = Selection()
    union: list[tuple[str, SharedIoc]] = []
    seen: set[tuple[str, str]] = set()
    for rule in rules:
        name = rule.config.name
        muted = rule.config.muted_until is not None and _epoch(rule.config.muted_until) > now
        picked: Sequence[Candidate | SharedIoc]
        if muted:  # keeps what it shared, as it was (the allowlist still retracts)
            picked = [
                h.entry
                for h in held.values()
                if h.rule == name and h.state == "shared" and not _vetoed(policy, h.entry)
            ]
        else:
            picked = await _rule_entries(rule, iocs, policy, takes, echo_of)
        capped, dropped = _cut(
            [(name, item) for item in picked if not seen or _key(item) not in seen],
            rule.config.cap.entries,
            rule.config.cap.bytes,
            size,
        )
        if dropped:
            selection.dropped[name] = dropped
        for entry in capped:
            seen.add((entry[1].type, entry[1].value))
        union.extend(capped)
    kept, dropped = _cut(union, max_entries, max_bytes, size)
    if dropped:
        selection.dropped["(destination)"] = dropped
    selection.entries = {(ioc.type, ioc.value): (rule, ioc) for rule, ioc in kept}
    return selection


def _vetoed(policy: Policy, entry: SharedIoc) -> bool:
    return policy.allowlisted(Indicator(IocType(entry.type), entry.value, entry.dlp))


def _epoch(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def entry_digest(entry: SharedIoc) -> int:
    """A checksum of an entry: a refused one is offered again only once it changed."""
    return zlib.crc32(_dump(entry))


def _dump(entry: SharedIoc) -> bytes:
    return orjson.dumps(
        [entry.type, entry.value, entry.severity, entry.reputation, entry.confidence, list(entry.tags),
         entry.comment, entry.first_seen, entry.last_seen, list(entry.sources), entry.dlp]
    )  # fmt: skip


def _load(text: str) -> SharedIoc:
    kind, value, severity, rep, conf, tags, comment, first, last, sources, dlp = orjson.loads(text)
    return SharedIoc(kind, value, severity, rep, conf, tuple(tags), comment, first, last, tuple(sources), dlp)


def plan_push(selection: Selection, held: dict[tuple[str, str], Held]) -> PushPlan:
    """What to add and remove so that the destination holds ``selection`` (refused entries apart)."""
    add: list[tuple[str, SharedIoc]] = []
    keep: list[tuple[str, SharedIoc]] = []
    for key, (rule, ioc) in selection.entries.items():
        was = held.get(key)
        if was is None or (was.state == "rejected" and was.digest != entry_digest(ioc)):
            add.append((rule, ioc))
        elif was.state == "shared":
            keep.append((rule, ioc))
    remove = [h.entry for key, h in held.items() if h.state == "shared" and key not in selection.entries]
    full = [ioc for rule, ioc in selection.entries.values() if not _refused(held, ioc)]
    digest = hashlib.sha256("\n".join(f"{i.type}\t{i.value}" for i in full).encode()).hexdigest()[:16]
    return PushPlan(add, remove, keep, full, digest)


def _refused(held: dict[tuple[str, str], Held], ioc: SharedIoc) -> bool:
    was = held.get((ioc.type, ioc.value))
    return was is not None and was.state == "rejected" and was.digest == entry_digest(ioc)


class ShareStore:
    """``threat_shares`` and ``threat_pushes``: what each destination holds, and its pushes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def held(self, destination: str) -> dict[tuple[str, str], Held]:
        """Every entry ``destination`` holds or refused."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT type, value, rule, state, digest, entry FROM threat_shares"
                " WHERE destination = :destination",
                {"destination": destination},
            )
        return {
            (str(kind), str(value)): Held(str(rule), str(state), int(digest), _load(str(entry)))
            for kind, value, rule, state, digest, entry in rows
        }

    async def record(
        self,
        destination: str,
        plan: PushPlan,
        rejected: dict[tuple[str, str], str],
        *,
        dropped: int,
        fence: Fence | None,
        now: float | None = None,
    ) -> None:
        """After the destination acknowledged ``plan``: what it now holds, and the push's figures."""
        now = time.time() if now is None else now
        added = [(rule, ioc) for rule, ioc in plan.add if (ioc.type, ioc.value) not in rejected]
        refused = [(rule, ioc) for rule, ioc in plan.add + plan.keep if (ioc.type, ioc.value) in rejected]
        upserts = [
            {
                "destination": destination, "type": ioc.type, "value": ioc.value, "rule": rule,
                "state": state, "reason": rejected.get((ioc.type, ioc.value), "")[:500],
                "digest": entry_digest(ioc), "entry": _dump(ioc).decode(), "now": now,
            }
            for state, entries in (("shared", added), ("rejected", refused))
            for rule, ioc in entries
        ]  # fmt: skip
        gone = [{"destination": destination, "type": i.type, "value": i.value} for i in plan.remove]
        async with self.store.transaction() as tx:
            for start in range(0, len(upserts), BATCH):
                await tx.executemany(
                    "INSERT INTO threat_shares"
                    " (destination, type, value, rule, state, reason, digest, entry, shared_at)"
                    " VALUES (:destination, :type, :value, :rule, :state, :reason, :digest, :entry, :now)"
                    " ON CONFLICT (destination, type, value) DO UPDATE SET rule = excluded.rule,"
                    " state = excluded.state, reason = excluded.reason, digest = excluded.digest,"
                    " entry = excluded.entry, shared_at = excluded.shared_at",
                    upserts[start : start + BATCH],
                )
            for start in range(0, len(gone), BATCH):
                await tx.executemany(
                    "DELETE FROM threat_shares WHERE destination = :destination AND type = :type"
                    " AND value = :value",
                    gone[start : start + BATCH],
                )
            await self._run(
                tx,
                destination,
                ok=True,
                listed=len(plan.full) - len(refused),
                added=len(added),
                removed=len(plan.remove),
                dropped=dropped,
                rejected=len(refused),
                digest=plan.list_digest,
                error="",
                now=now,
            )
            if fence is not None:
                await fence.check(tx)

    async def failed(self, destination: str, error: str, *, dropped: int, fence: Fence | None) -> None:
        """A push that did not go through: counted, with why (what the destination holds is unchanged)."""
        async with self.store.transaction() as tx:
            await self._run(
                tx, destination, ok=False, listed=None, added=0, removed=0, dropped=dropped, rejected=0,
                digest=None, error=error[:500], now=time.time(),
            )  # fmt: skip
            if fence is not None:
                await fence.check(tx)

    @staticmethod
    async def _run(
        tx: Any,
        destination: str,
        *,
        ok: bool,
        listed: int | None,
        added: int,
        removed: int,
        dropped: int,
        rejected: int,
        digest: str | None,
        error: str,
        now: float,
    ) -> None:
        await tx.execute(
            "INSERT INTO threat_pushes (destination, runs, last_run, last_ok, listed, added, removed,"
            " dropped, rejected, list_digest, error) VALUES (:destination, 1, :now, :ok_at, :listed, :added,"
            " :removed, :dropped, :rejected, :digest, :error)"
            " ON CONFLICT (destination) DO UPDATE SET runs = threat_pushes.runs + 1,"
            " last_run = excluded.last_run,"
            " last_ok = CASE WHEN :ok = 1 THEN excluded.last_ok ELSE threat_pushes.last_ok END,"
            " listed = CASE WHEN :ok = 1 THEN excluded.listed ELSE threat_pushes.listed END,"
            " added = excluded.added, removed = excluded.removed, dropped = excluded.dropped,"
            " rejected = CASE WHEN :ok = 1 THEN excluded.rejected ELSE threat_pushes.rejected END,"
            " list_digest = CASE WHEN :ok = 1 THEN excluded.list_digest ELSE threat_pushes.list_digest END,"
            " error = excluded.error",
            {
                "destination": destination, "now": now, "ok_at": now if ok else 0.0, "ok": int(ok),
                "listed": listed or 0, "added": added, "removed": removed, "dropped": dropped,
                "rejected": rejected, "digest": digest or "", "error": error,
            },
        )  # fmt: skip

    async def last_digest(self, destination: str) -> str | None:
        """The digest of the list last acknowledged by ``destination``."""
        async with self.store.read() as tx:
            value = await tx.fetchval(
                "SELECT list_digest FROM threat_pushes WHERE destination = :destination AND last_ok > 0",
                {"destination": destination},
            )
        return None if value is None else str(value)

    async def pushes(self) -> list[PushRecord]:
        """Every destination's last push, by name."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT destination, runs, last_run, last_ok, listed, added, removed, dropped, rejected,"
                " error FROM threat_pushes ORDER BY destination"
            )
        return [
            PushRecord(str(d), int(n), float(r), float(o), int(li), int(a), int(rm), int(dr), int(rj), str(e))
            for d, n, r, o, li, a, rm, dr, rj, e in rows
        ]

    async def where_shared(self, kind: str, value: str) -> list[tuple[str, str, str, str]]:
        """``(destination, rule, state, reason)`` for every destination holding or refusing the value."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT destination, rule, state, reason FROM threat_shares"
                " WHERE type = :type AND value = :value ORDER BY destination",
                {"type": kind, "value": value},
            )
        return [(str(d), str(r), str(s), str(why)) for d, r, s, why in rows]
