"""Mutes added while the daemon runs (through the API or ``ce-daemon mute``), beside the YAML's windows.

A mute names a route, a window (start and end, UTC epoch seconds) and optionally a filter in the core
language: records of that route matching it are acknowledged and counted as ``muted``, not shipped.
It is stored in the state database (both backends), so every node of a cluster and every restart
sees it; a route re-reads its route's active mutes every ``REFRESH`` seconds. Expiring a mute ends
its window now; it stays listed, with who expired it. A filter is compiled when the mute is added:
a wrong one is refused with the compiler's words.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ce_daemon.filter import FilterError, compile_filter
from ce_daemon.logs.resolve import Mute
from ce_daemon.store import Migration, Store

__all__ = ["MUTE_MIGRATIONS", "REFRESH", "MuteError", "MuteStore", "StoredMute"]

REFRESH: Final = 5.0
"""How often a route re-reads its active mutes (seconds): how long a new mute may take to apply."""
LONGEST: Final = 90 * 86_400.0
"""The longest mute window accepted (a mute forgotten is a route silenced)."""
FILTER_MAX: Final = 4_000

MUTE_MIGRATIONS: Final = (
    Migration(
        "log_mutes",
        1,
        (
            """CREATE TABLE log_mutes (
                id {id},
                route {text} NOT NULL,
                name {text} NOT NULL,
                start_at {real} NOT NULL,
                end_at {real} NOT NULL,
                filter {text} NOT NULL,
                reason {text} NOT NULL,
                created {real} NOT NULL,
                created_by {text} NOT NULL,
                expired_by {text} NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX log_mutes_route ON log_mutes(route, end_at)",
        ),
    ),
)


class MuteError(ValueError):
    """A mute that cannot be added, with the reason."""


@dataclass(frozen=True, slots=True)
class StoredMute:
    """One mute as stored."""

    id: int
    route: str
    name: str
    start: float
    end: float
    filter: Any
    reason: str
    created: float
    created_by: str
    expired_by: str

    def active(self, now: float) -> bool:
        return self.start <= now < self.end

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        return {"id": self.id, "route": self.route, "name": self.name, "start": self.start, "end": self.end,
                "filter": self.filter, "reason": self.reason, "created": self.created,
                "created_by": self.created_by, "expired_by": self.expired_by,
                "active": self.active(time.time() if now is None else now)}  # fmt: skip

    def compiled(self) -> Mute:
        """As a route applies it."""
        return Mute(
            self.name,
            self.start,
            self.end,
            None if self.filter is None else compile_filter(self.filter),
            self.filter,
        )


_COLUMNS: Final = "id, route, name, start_at, end_at, filter, reason, created, created_by, expired_by"


_INSERT: Final = (
    "INSERT INTO log_mutes (route, name, start_at, end_at, filter, reason, created, created_by)"  # noqa: S608 - fixed
    f" VALUES (:route, :name, :start, :end, :filter, :reason, :now, :by) RETURNING {_COLUMNS}"
)


def _row(row: Any) -> StoredMute:
    i, route, name, start, end, spec, reason, created, by, expired = row
    parsed = orjson.loads(spec) if spec else None
    return StoredMute(
        int(i), str(route), str(name), float(start), float(end), parsed, str(reason), float(created), str(by),
        str(expired),
    )  # fmt: skip


class MuteStore:
    """The ``log_mutes`` table of a :class:`~ce_daemon.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(
        self,
        route: str,
        *,
        seconds: float,
        name: str = "mute",
        spec: Any = None,
        reason: str = "",
        by: str = "",
        start: float | None = None,
    ) -> StoredMute:
        """Mute ``route`` for ``seconds`` from ``start`` (now), where ``spec`` matches (everything: None)."""
        now = time.time()
        start = now if start is None else start
        if not 0 < seconds <= LONGEST:
            raise MuteError(
                f"a mute lasts more than 0 and at most {LONGEST / 86_400:g} days, not {seconds:g} s"
            )
        if start + seconds <= now:
            raise MuteError("the mute's window would already be over")
        text = "" if spec is None else orjson.dumps(spec).decode()
        if len(text) > FILTER_MAX:
            raise MuteError(f"the filter is longer than {FILTER_MAX} characters")
        if spec is not None:
            try:
                compile_filter(spec)
            except FilterError as exc:
                raise MuteError(f"the filter is wrong: {exc}") from exc
        async with self.store.transaction() as tx:
            row = await tx.fetchrow(
                _INSERT,
                {"route": route, "name": name[:100] or "mute", "start": start, "end": start + seconds,
                 "filter": text, "reason": reason[:500], "now": now, "by": by[:100]},
            )  # fmt: skip
        assert row is not None
        return _row(row)

    async def expire(self, mute: int, *, by: str = "") -> StoredMute | None:
        """End mute ``mute``'s window now (None: no such mute); one already over is left as it is."""
        now = time.time()
        async with self.store.transaction() as tx:
            await tx.execute(
                "UPDATE log_mutes SET end_at = :now, expired_by = :by WHERE id = :id AND end_at > :now",
                {"now": now, "by": by[:100] or "-", "id": mute},
            )
            row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM log_mutes WHERE id = :id", {"id": mute})  # noqa: S608
        return None if row is None else _row(row)

    async def listed(
        self, route: str | None = None, *, active_only: bool = False, limit: int = 1000
    ) -> list[StoredMute]:
        """Mutes, newest first (of ``route``; only those whose window is open now)."""
        where: list[str] = []
        params: dict[str, object] = {"limit": limit, "now": time.time()}
        if route is not None:
            where.append("route = :route")
            params["route"] = route
        if active_only:
            where.append("start_at <= :now AND end_at > :now")
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                f"SELECT {_COLUMNS} FROM log_mutes{condition} ORDER BY id DESC LIMIT :limit",  # noqa: S608 - fixed text
                params,
            )
        return [_row(r) for r in rows]

    async def upcoming(self, route: str) -> list[Mute]:
        """The route's mutes whose window has not ended, compiled (a filter that no longer compiles is
        left out: it was checked when added)."""
        async with self.store.read() as tx:
            rows = await tx.fetch(
                f"SELECT {_COLUMNS} FROM log_mutes WHERE route = :route AND end_at > :now ORDER BY id",  # noqa: S608
                {"route": route, "now": time.time()},
            )
        found = []
        for row in rows:
            try:
                found.append(_row(row).compiled())
            except (FilterError, orjson.JSONDecodeError):
                continue
        return found
