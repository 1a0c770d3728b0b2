"""The ticket tables: one row per ticket, an outbox of intents, and each rule's progress through its streams.

A rule's consumer commits, in one transaction per spool page, the tickets it opened, the duplicates it
folded in (their counts), the intents those need (``create``, ``update``) and how far through its
streams it got; only then is the page acknowledged. A page read again after a crash is skipped by its
progress, so a replay never counts an alert twice. The destination's dispatcher takes due intents,
calls the plugin, and marks an intent done only after the destination answered: a crash in between
sends it again, and a create tried before (``tried``) looks first (``find``) before re-creating.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ce_daemon.store import Fence, Migration, Store
from ce_daemon.store.base import Row, Transaction

__all__ = [
    "CLOSED",
    "TICKETS_MIGRATIONS",
    "Intent",
    "PageCommit",
    "StoredTicket",
    "TicketStore",
]

TICKETS_MIGRATIONS: Final = (
    Migration(
        "tickets",
        1,
        (
            """CREATE TABLE ticket_tickets (
                id {id},
                key {text} NOT NULL UNIQUE,
                rule {text} NOT NULL,
                destination {text} NOT NULL,
                queue {int} NOT NULL,
                grp {text},
                title {text} NOT NULL,
                external_id {text} NOT NULL,
                url {text} NOT NULL,
                state {text} NOT NULL,
                status {text} NOT NULL,
                raw_status {text} NOT NULL,
                approval {text} NOT NULL,
                dedup_count {int} NOT NULL,
                first_alert {real} NOT NULL,
                last_alert {real} NOT NULL,
                object_id {text} NOT NULL,
                created {real} NOT NULL,
                updated {real} NOT NULL,
                last_error {text} NOT NULL,
                attempts {int} NOT NULL
            )""",
            "CREATE INDEX ticket_tickets_rule ON ticket_tickets(rule, status, first_alert)",
            "CREATE INDEX ticket_tickets_destination ON ticket_tickets(destination, status)",
            """CREATE TABLE ticket_outbox (
                id {id},
                ticket {text} NOT NULL,
                destination {text} NOT NULL,
                intent {text} NOT NULL,
                payload {text} NOT NULL,
                attempts {int} NOT NULL,
                tried {int} NOT NULL,
                next_try {real} NOT NULL,
                state {text} NOT NULL,
                error {text} NOT NULL,
                created {real} NOT NULL
            )""",
            "CREATE INDEX ticket_outbox_due ON ticket_outbox(destination, state, next_try)",
            "CREATE INDEX ticket_outbox_ticket ON ticket_outbox(ticket, state)",
            """CREATE TABLE ticket_progress (
                rule {text} NOT NULL,
                stream {text} NOT NULL,
                seq {int} NOT NULL,
                PRIMARY KEY (rule, stream)
            ) {keyed}""",
            """CREATE TABLE ticket_status_changes (
                id {id},
                ticket {text} NOT NULL,
                old_status {text} NOT NULL,
                new_status {text} NOT NULL,
                raw {text} NOT NULL,
                at {real} NOT NULL,
                written_back {int} NOT NULL
            )""",
        ),
    ),
)
"""Tickets (``key`` is the dedup group's idempotency key), the outbox (intents ``create|update|resolve``,
states ``pending|held|done|failed``; ``held`` waits for approval), rules' progress, status changes."""

_CHUNK: Final = 500
"""Keys per ``IN (…)`` list."""
DEDUP_LOCK: Final = "ticket_dedup"
"""Serializes counting a page's duplicates with marking an intent tried (see :meth:`TicketStore.tried`)."""
CLOSED: Final = ("closed", "deleted", "failed", "declined")
"""Statuses of a ticket no duplicate joins (a new one opens instead, as CE re-creates)."""
_TICKET_COLUMNS: Final = (
    "id, key, rule, destination, queue, grp, title, external_id, url, state, status, raw_status, approval,"
    " dedup_count, first_alert, last_alert, object_id, created, updated, last_error, attempts"
)


@dataclass(frozen=True, slots=True)
class StoredTicket:
    """One ticket as stored."""

    id: int
    key: str
    rule: str
    destination: str
    queue: int
    group: str | None
    title: str
    external_id: str
    url: str
    state: dict[str, str]
    status: str
    raw_status: str
    approval: str
    dedup_count: int
    first_alert: float
    last_alert: float
    object_id: str
    created: float
    updated: float
    last_error: str
    attempts: int

    def as_dict(self) -> dict[str, Any]:
        """The ticket as JSON (``tickets list --json``)."""
        return {
            "id": self.id, "key": self.key, "rule": self.rule, "destination": self.destination,
            "group": self.group, "title": self.title, "external_id": self.external_id, "url": self.url,
            "status": self.status, "raw_status": self.raw_status, "approval": self.approval,
            "dedup_count": self.dedup_count, "first_alert": self.first_alert, "last_alert": self.last_alert,
            "created": self.created, "updated": self.updated, "last_error": self.last_error,
            "attempts": self.attempts,
        }  # fmt: skip


def _ticket(row: Row) -> StoredTicket:
    (i, key, rule, dest, queue, grp, title, ext, url, state, status, raw, approval, count, first, last,
     obj, created, updated, error, attempts) = row  # fmt: skip
    return StoredTicket(
        int(i), str(key), str(rule), str(dest), int(queue), None if grp is None else str(grp), str(title),
        str(ext), str(url), orjson.loads(str(state)), str(status), str(raw), str(approval), int(count),
        float(first), float(last), str(obj), float(created), float(updated), str(error), int(attempts),
    )  # fmt: skip


async def _ticket_of(tx: Transaction, key: str) -> StoredTicket | None:
    """The ticket of ``key`` as ``tx`` sees it."""
    row = await tx.fetchrow(
        f"SELECT {_TICKET_COLUMNS} FROM ticket_tickets WHERE key = :key",  # noqa: S608 - fixed names
        {"key": key},
    )
    return None if row is None else _ticket(row)


@dataclass(frozen=True, slots=True)
class Intent:
    """One outbox row: what to tell a destination about a ticket."""

    id: int
    ticket: str
    destination: str
    intent: str
    payload: dict[str, Any]
    attempts: int
    tried: bool


@dataclass
class PageCommit:
    """What one rule decided for one page: written in one transaction with the rule's progress."""

    rule: str
    tickets: list[dict[str, Any]] = field(default_factory=list)
    """New ticket rows (every column but ``id``)."""
    creates: list[dict[str, Any]] = field(default_factory=list)
    """Outbox rows for new tickets (``state`` pending, or held for approval)."""
    duplicates: dict[str, tuple[int, float, Callable[[], str], str]] = field(default_factory=dict)
    """Ticket key → (alerts folded in, latest alert time, the update's payload (made when one is needed),
    destination)."""
    progress: dict[str, int] = field(default_factory=dict)
    """Stream → the last spool page seq processed."""


class TicketStore:
    """The ticket tables of a :class:`~ce_daemon.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- rules ------------------------------------------------------------------------------------

    async def open_tickets(self, rule: str, since: float) -> list[tuple[str, int, str, float]]:
        """``(key, queue, group, first_alert)`` of ``rule``'s open grouped tickets alerted since ``since``."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT key, queue, grp, first_alert FROM ticket_tickets WHERE rule = :rule"
                " AND grp IS NOT NULL AND first_alert >= :since"
                " AND status NOT IN ('closed', 'deleted', 'failed', 'declined') ORDER BY id",
                {"rule": rule, "since": since},
            )
        return [(str(k), int(q), str(g), float(f)) for k, q, g, f in rows]

    async def progress(self, rule: str) -> dict[str, int]:
        """Stream → the last spool page ``rule`` committed."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT stream, seq FROM ticket_progress WHERE rule = :rule", {"rule": rule}
            )
        return {str(s): int(q) for s, q in rows}

    async def commit(self, page: PageCommit, *, now: float | None = None, fence: Fence | None = None) -> None:
        """Write ``page``'s tickets, counts, intents and progress in one transaction."""
        now = time.time() if now is None else now
        async with self.store.transaction() as tx:
            if page.tickets:
                await tx.executemany(
                    "INSERT INTO ticket_tickets (key, rule, destination, queue, grp, title, external_id,"
                    " url, state, status, raw_status, approval, dedup_count, first_alert, last_alert,"
                    " object_id, created, updated, last_error, attempts) VALUES (:key, :rule, :destination,"
                    " :queue, :grp, :title, '', '', '{}', :status, '', :approval, :dedup_count, :first_alert,"
                    " :last_alert, :object_id, :now, :now, '', 0) ON CONFLICT (key) DO NOTHING",
                    [{**t, "now": now} for t in page.tickets],
                )
            if page.creates:
                await tx.executemany(
                    "INSERT INTO ticket_outbox (ticket, destination, intent, payload, attempts, tried,"
                    " next_try, state, error, created) VALUES (:ticket, :destination, 'create', :payload,"
                    " 0, 0, 0, :state, '', :now)",
                    [{**c, "now": now} for c in page.creates],
                )
            if page.duplicates:
                await tx.serialize(DEDUP_LOCK)  # against a dispatcher marking an intent tried (`tried`)
                await tx.executemany(
                    "UPDATE ticket_tickets SET dedup_count = dedup_count + :n, updated = :now,"
                    " last_alert = CASE WHEN last_alert < :last THEN :last ELSE last_alert END"
                    " WHERE key = :key",
                    [{"key": key, "n": n, "last": last, "now": now}
                     for key, (n, last, _, _) in page.duplicates.items()],
                )  # fmt: skip
                waiting = await self._waiting(tx, list(page.duplicates))
                rows = [
                    {"key": key, "destination": dest, "payload": payload(), "now": now}
                    for key, (_, _, payload, dest) in page.duplicates.items()
                    if key not in waiting
                ]
                # one update waits per ticket: an intent not yet sent carries the count current when it goes
                if rows:
                    await tx.executemany(
                        "INSERT INTO ticket_outbox (ticket, destination, intent, payload, attempts, tried,"
                        " next_try, state, error, created) VALUES (:key, :destination, 'update', :payload,"
                        " 0, 0, 0, 'pending', '', :now)",
                        rows,
                    )
            if page.progress:
                await tx.executemany(
                    "INSERT INTO ticket_progress (rule, stream, seq) VALUES (:rule, :stream, :seq)"
                    " ON CONFLICT (rule, stream) DO UPDATE SET seq = excluded.seq",
                    [{"rule": page.rule, "stream": s, "seq": q} for s, q in page.progress.items()],
                )
            if fence is not None:
                await fence.check(tx)

    @staticmethod
    async def _waiting(tx: Transaction, keys: list[str]) -> set[str]:
        """The tickets of ``keys`` with an intent not yet sent (it will carry the count as it is then)."""
        found: set[str] = set()
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ", ".join(f":k{i}" for i in range(len(chunk)))
            rows = await tx.fetch(
                f"SELECT DISTINCT ticket FROM ticket_outbox WHERE ticket IN ({marks})"  # noqa: S608 - placeholders
                " AND state IN ('pending', 'held') AND tried = 0",
                {f"k{i}": key for i, key in enumerate(chunk)},
            )
            found.update(str(t) for (t,) in rows)
        return found

    # -- dispatch ---------------------------------------------------------------------------------

    async def due(self, destination: str, now: float, limit: int = 100) -> list[Intent]:
        """The pending intents of ``destination`` due at ``now``, oldest first."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT id, ticket, destination, intent, payload, attempts, tried FROM ticket_outbox"
                " WHERE destination = :destination AND state = 'pending' AND next_try <= :now"
                # a ticket's intents go in order: none while an older one waits (or failed, or is held)
                " AND NOT EXISTS (SELECT 1 FROM ticket_outbox o WHERE o.ticket = ticket_outbox.ticket"
                " AND o.id < ticket_outbox.id AND o.state IN ('pending', 'held', 'failed'))"
                " ORDER BY id LIMIT :limit",
                {"destination": destination, "now": now, "limit": limit},
            )
        return [
            Intent(int(i), str(t), str(d), str(k), orjson.loads(str(p)), int(a), bool(tr))
            for i, t, d, k, p, a, tr in rows
        ]

    async def ticket(self, key: str) -> StoredTicket | None:
        """The ticket of ``key``."""
        async with self.store.read() as tx:
            return await _ticket_of(tx, key)

    async def tried(self, intent: Intent, *, fence: Fence | None = None) -> StoredTicket | None:
        """Mark ``intent`` as sent once (its answer may be lost: the next try looks before creating);
        its ticket as it is now, which the call carries.

        Page commits that count duplicates serialize with this (``DEDUP_LOCK``): each either comes
        before, and its count is in the ticket read here, or after, and it sees the intent tried and
        queues an update of its own. Neither can see the other half done."""
        async with self.store.transaction() as tx:
            await tx.serialize(DEDUP_LOCK)
            await tx.execute("UPDATE ticket_outbox SET tried = 1 WHERE id = :id", {"id": intent.id})
            stored = await _ticket_of(tx, intent.ticket)
            if fence is not None:
                await fence.check(tx)
        return stored

    async def done(
        self,
        intent: Intent,
        *,
        external_id: str,
        url: str,
        state: Mapping[str, str],
        status: str | None,
        now: float | None = None,
        fence: Fence | None = None,
    ) -> None:
        """The destination answered ``intent``: record where the ticket is and mark the intent done."""
        now = time.time() if now is None else now
        async with self.store.transaction() as tx:
            await tx.execute(
                "UPDATE ticket_tickets SET external_id = :ext, url = :url, state = :state,"
                " status = COALESCE(:status, status), updated = :now, last_error = '',"
                " attempts = attempts + 1 WHERE key = :key",
                {"ext": external_id, "url": url, "state": orjson.dumps(dict(state)).decode(),
                 "status": status, "now": now, "key": intent.ticket},
            )  # fmt: skip
            await tx.execute(
                "UPDATE ticket_outbox SET state = 'done', attempts = attempts + 1, error = '' WHERE id = :id",
                {"id": intent.id},
            )
            if fence is not None:
                await fence.check(tx)

    async def later(
        self,
        intent: Intent,
        error: str,
        next_try: float,
        *,
        now: float | None = None,
        fence: Fence | None = None,
    ) -> None:
        """A try failed for now: ``next_try`` is when the next one goes."""
        now = time.time() if now is None else now
        async with self.store.transaction() as tx:
            await tx.execute(
                "UPDATE ticket_outbox SET attempts = attempts + 1, next_try = :next, error = :error"
                " WHERE id = :id",
                {"id": intent.id, "next": next_try, "error": error[:500]},
            )
            await tx.execute(
                "UPDATE ticket_tickets SET last_error = :error, attempts = attempts + 1, updated = :now"
                " WHERE key = :key",
                {"key": intent.ticket, "error": error[:500], "now": now},
            )
            if fence is not None:
                await fence.check(tx)

    async def failed(
        self, intent: Intent, error: str, *, now: float | None = None, fence: Fence | None = None
    ) -> None:
        """Refused for good: the ticket fails (``tickets retry`` sends it again)."""
        now = time.time() if now is None else now
        async with self.store.transaction() as tx:
            await tx.execute(
                "UPDATE ticket_outbox SET state = 'failed', attempts = attempts + 1, error = :error"
                " WHERE id = :id",
                {"id": intent.id, "error": error[:500]},
            )
            if intent.intent == "create":
                await tx.execute(
                    "UPDATE ticket_tickets SET status = 'failed', last_error = :error,"
                    " attempts = attempts + 1, updated = :now WHERE key = :key",
                    {"key": intent.ticket, "error": error[:500], "now": now},
                )
            else:
                await tx.execute(
                    "UPDATE ticket_tickets SET last_error = :error, attempts = attempts + 1, updated = :now"
                    " WHERE key = :key",
                    {"key": intent.ticket, "error": error[:500], "now": now},
                )
            if fence is not None:
                await fence.check(tx)

    # -- status sync ------------------------------------------------------------------------------

    async def tracked(self, destination: str, after: int, limit: int) -> list[StoredTicket]:
        """Open tickets of ``destination`` that exist there, by id after ``after``."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                f"SELECT {_TICKET_COLUMNS} FROM ticket_tickets WHERE destination = :destination"  # noqa: S608
                " AND external_id != '' AND status NOT IN ('closed', 'deleted', 'failed', 'declined')"
                " AND id > :after ORDER BY id LIMIT :limit",
                {"destination": destination, "after": after, "limit": limit},
            )
        return [_ticket(r) for r in rows]

    async def statuses_changed(
        self,
        changes: Sequence[tuple[StoredTicket, str, str]],
        *,
        now: float | None = None,
        fence: Fence | None = None,
    ) -> None:
        """Record each ``(ticket, new status, raw status)``."""
        now = time.time() if now is None else now
        if not changes:
            return
        async with self.store.transaction() as tx:
            for ticket, status, raw in changes:
                await tx.execute(
                    "UPDATE ticket_tickets SET status = :status, raw_status = :raw, updated = :now"
                    " WHERE key = :key",
                    {"status": status, "raw": raw, "now": now, "key": ticket.key},
                )
                await tx.execute(
                    "INSERT INTO ticket_status_changes"
                    " (ticket, old_status, new_status, raw, at, written_back)"
                    " VALUES (:key, :old, :new, :raw, :now, 0)",
                    {"key": ticket.key, "old": ticket.status, "new": status, "raw": raw, "now": now},
                )
            if fence is not None:
                await fence.check(tx)

    async def written_back(self, key: str) -> None:
        """The ticket's status changes reached the Netskope incident."""
        async with self.store.transaction() as tx:
            await tx.execute(
                "UPDATE ticket_status_changes SET written_back = 1 WHERE ticket = :key", {"key": key}
            )

    # -- the operator -----------------------------------------------------------------------------

    async def find(self, ref: str) -> StoredTicket | None:
        """A ticket by id or key."""
        column = "id" if ref.isdigit() else "key"
        async with self.store.read() as tx:
            row = await tx.fetchrow(
                f"SELECT {_TICKET_COLUMNS} FROM ticket_tickets WHERE {column} = :ref",  # noqa: S608 - fixed names
                {"ref": int(ref) if ref.isdigit() else ref},
            )
        return None if row is None else _ticket(row)

    async def search(
        self,
        *,
        rule: str | None = None,
        destination: str | None = None,
        status: str | None = None,
        since: float | None = None,
        sort: str = "created",
        limit: int = 100,
    ) -> list[StoredTicket]:
        """Tickets matching every filter given, newest first by ``sort`` (rule, destination, status: A-Z)."""
        where: list[str] = []
        params: dict[str, object] = {"limit": limit}
        for column, value in (("rule", rule), ("destination", destination), ("status", status)):
            if value is not None:
                where.append(f"{column} = :{column}")
                params[column] = value
        if since is not None:
            where.append("updated >= :since")
            params["since"] = since
        order = {
            "created": "created DESC, id DESC",
            "updated": "updated DESC, id DESC",
            "status": "status, id",
            "rule": "rule, id",
            "destination": "destination, id",
        }[sort]
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                f"SELECT {_TICKET_COLUMNS} FROM ticket_tickets{condition} ORDER BY {order} LIMIT :limit",  # noqa: S608
                params,
            )
        return [_ticket(r) for r in rows]

    async def intents(self, key: str) -> list[dict[str, Any]]:
        """The outbox rows of ticket ``key``, oldest first."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT id, intent, state, attempts, tried, next_try, error, created FROM ticket_outbox"
                " WHERE ticket = :key ORDER BY id",
                {"key": key},
            )
        return [
            {"id": int(i), "intent": str(k), "state": str(s), "attempts": int(a), "tried": bool(t),
             "next_try": float(n), "error": str(e), "created": float(c)}
            for i, k, s, a, t, n, e, c in rows
        ]  # fmt: skip

    async def retry(self, key: str, *, now: float | None = None) -> bool:
        """Send a failed ticket's intents again (the running daemon's dispatcher picks them up)."""
        now = time.time() if now is None else now
        async with self.store.transaction() as tx:
            changed = await tx.execute(
                "UPDATE ticket_outbox SET state = 'pending', next_try = 0, attempts = 0, error = ''"
                " WHERE ticket = :key AND state = 'failed'",
                {"key": key},
            )
            if changed:
                await tx.execute(
                    "UPDATE ticket_tickets SET status = CASE WHEN external_id = '' THEN 'pending'"
                    " ELSE status END, last_error = '', updated = :now"
                    " WHERE key = :key AND status = 'failed'",
                    {"key": key, "now": now},
                )
            return changed > 0

    async def decide(self, key: str, approve: bool, *, now: float | None = None) -> bool:
        """Approve (its create goes out) or decline a ticket waiting for approval."""
        now = time.time() if now is None else now
        async with self.store.transaction() as tx:
            changed = await tx.execute(
                "UPDATE ticket_tickets SET approval = :approval, status = :status, updated = :now"
                " WHERE key = :key AND approval = 'pending'",
                {"key": key, "now": now, "approval": "approved" if approve else "declined",
                 "status": "pending" if approve else "declined"},
            )  # fmt: skip
            if changed:
                await tx.execute(
                    "UPDATE ticket_outbox SET state = :state, next_try = 0"
                    " WHERE ticket = :key AND state = 'held'",
                    {"key": key, "state": "pending" if approve else "done"},
                )
            return changed > 0

    # -- counts -----------------------------------------------------------------------------------

    async def counts(self) -> list[tuple[str, str, int]]:
        """``(destination, status, tickets)``."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT destination, status, COUNT(*) FROM ticket_tickets GROUP BY destination, status"
                " ORDER BY destination, status"
            )
        return [(str(d), str(s), int(n)) for d, s, n in rows]

    async def outbox(self) -> list[tuple[str, str, int]]:
        """``(destination, state, intents)`` of the intents not done."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                "SELECT destination, state, COUNT(*) FROM ticket_outbox WHERE state != 'done'"
                " GROUP BY destination, state ORDER BY destination, state"
            )
        return [(str(d), str(s), int(n)) for d, s, n in rows]
