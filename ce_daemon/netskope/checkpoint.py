"""Where each Netskope iterator stands: the checkpoint its poller commits with every page.

The poller records its intent to send ``operation=next`` *before* sending it; the page and the
cleared intent are committed in one transaction (:meth:`Checkpoints.page_commit`, run by
:meth:`ce_daemon.spool.Spool.append`). On restart with an intent recorded the poller asks ``resend``,
and :meth:`IteratorState.is_committed` recognises a resend of the page already spooled.

The rows live in the ``spool_iterators`` table (created by the spool's first migration, which never
changes). Every write takes the iterator's :class:`~ce_daemon.store.Fence` when the poller holds one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ce_daemon.netskope.rawpages import RecordTexts
from ce_daemon.spool import PageCommit
from ce_daemon.store import Fence, Store, Transaction

__all__ = ["Checkpoints", "IteratorMark", "IteratorState", "Pending", "page_marker"]

Pending = Literal["none", "next"]


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


def page_marker(records: list[dict[str, Any]] | RecordTexts) -> tuple[str | None, str | None, int]:
    """``(first_id, last_id, count)`` of a page, as :meth:`IteratorState.is_committed` compares them."""
    if not records:
        return None, None, 0
    if isinstance(records, RecordTexts):
        first, last = records.field(0, "_id"), records.field(-1, "_id")
    else:
        first, last = records[0].get("_id"), records[-1].get("_id")
    return _id_text(first), _id_text(last), len(records)


class Checkpoints:
    """The iterator checkpoints in the state store. Keys are the stream, or ``<stream>#history`` …"""

    def __init__(self, store: Store) -> None:
        self._store = store

    def page_commit(
        self, key: str, records: list[dict[str, Any]] | RecordTexts, mark: IteratorMark
    ) -> PageCommit:
        """What :meth:`~ce_daemon.spool.Spool.append` runs with the page: intent cleared, marker moved."""
        first_id, last_id, count = page_marker(records)

        async def commit(tx: Transaction) -> None:
            await tx.execute(
                "INSERT INTO spool_iterators (iterator_key, pending, first_id, last_id, count,"
                " first_pull_done, timestamp_hwm, progress, updated_at)"
                " VALUES (:key, 'none', :first_id, :last_id, :count, 1, :hwm,"
                " COALESCE(:progress, '{}'), :now)"
                " ON CONFLICT (iterator_key) DO UPDATE SET pending = 'none', first_id = :first_id,"
                " last_id = :last_id, count = :count, first_pull_done = 1,"
                " timestamp_hwm = COALESCE(:hwm, spool_iterators.timestamp_hwm),"
                " progress = COALESCE(:progress, spool_iterators.progress), updated_at = :now",
                {
                    "key": key,
                    "first_id": first_id,
                    "last_id": last_id,
                    "count": count,
                    "hwm": mark.timestamp_hwm,
                    "progress": _dump_progress(mark.progress),
                    "now": time.time(),
                },
            )

        return commit

    async def mark_empty_page(
        self,
        key: str,
        timestamp_hwm: int | None,
        *,
        progress: Mapping[str, Any] | None = None,
        fence: Fence | None = None,
    ) -> None:
        """Record an empty answer (or a resend of the page already committed): the intent is cleared,
        the first pull counts as done, hwm and progress are updated; nothing is spooled."""
        await self._upsert(
            key,
            "UPDATE spool_iterators SET pending = 'none', first_pull_done = 1,"
            " timestamp_hwm = COALESCE(:hwm, timestamp_hwm), progress = COALESCE(:progress, progress),"
            " updated_at = :now WHERE iterator_key = :key",
            fence,
            hwm=timestamp_hwm,
            progress=_dump_progress(progress),
        )

    async def record_intent(self, key: str, pending: Pending, *, fence: Fence | None = None) -> None:
        """Durably record the intent (``"next"``) before sending ``operation=next``, or clear it."""
        if pending not in ("none", "next"):
            raise ValueError(f"iterator intent must be 'none' or 'next', got {pending!r}")
        await self._upsert(
            key,
            "UPDATE spool_iterators SET pending = :pending, updated_at = :now WHERE iterator_key = :key",
            fence,
            pending=pending,
        )

    async def set_index(self, key: str, index: str, *, fence: Fence | None = None) -> None:
        """Persist the Netskope iterator ``index`` name the iterator uses."""
        await self._upsert(
            key,
            "UPDATE spool_iterators SET index_name = :index, updated_at = :now WHERE iterator_key = :key",
            fence,
            index=index,
        )

    async def state(self, key: str) -> IteratorState | None:
        """The iterator's committed state, or None if its poller never recorded anything."""
        async with self._store.read() as tx:
            row = await tx.fetchrow(
                "SELECT index_name, pending, first_id, last_id, count, first_pull_done, timestamp_hwm,"
                " progress FROM spool_iterators WHERE iterator_key = :key",
                {"key": key},
            )
        if row is None:
            return None
        index, pending, first_id, last_id, count, first_pull_done, hwm, progress = row
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

    async def _upsert(self, key: str, update: str, fence: Fence | None, **values: object) -> None:
        """Create the iterator's row if needed, then run ``update`` on it (named parameters)."""
        params = {"key": key, "now": time.time(), **values}
        async with self._store.transaction() as tx:
            if fence is not None:
                await fence.check(tx)
            await tx.execute(
                "INSERT INTO spool_iterators (iterator_key, updated_at) VALUES (:key, :now)"
                " ON CONFLICT (iterator_key) DO NOTHING",
                params,
            )
            await tx.execute(update, params)


def _id_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _dump_progress(progress: Mapping[str, Any] | None) -> str | None:
    return None if progress is None else orjson.dumps(dict(progress)).decode()
