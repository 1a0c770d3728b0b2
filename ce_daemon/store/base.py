"""What every state backend provides, and the fence that guards a unit's commits.

SQL given to a :class:`Transaction` is neutral: named ``:name`` placeholders (each backend turns them
into its own), no backend-only syntax. DDL in migrations uses the type words of
:data:`TYPE_WORDS`, which each backend maps to its own column types.

Each module owns its tables and brings them in as versioned :class:`Migration` steps given to
:func:`ce_daemon.store.open_store`; the store applies what is pending, in order, one transaction per
component, and refuses a database written by a newer ce-daemon instead of guessing at its schema.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Literal, Protocol, Self

from ce_daemon.errors import CeDaemonError

Params = Mapping[str, object]
Row = Sequence[Any]
Backend = Literal["sqlite", "postgresql"]


class StoreError(CeDaemonError):
    """The state store cannot be used: unreachable, corrupt, or written by a newer ce-daemon."""


class CommitUncertainError(StoreError):
    """A commit whose outcome is unknown (the connection was lost or the server did not answer in time):
    what it wrote may or may not have been applied."""


class LeaseLostError(StoreError):
    """This node no longer holds the lease of a unit: what it was about to commit was rolled back."""


TYPE_WORDS: Mapping[str, str] = {
    "id": "an integer primary key the database assigns, increasing and never reused",
    "int": "a 64-bit integer",
    "real": "a double-precision float",
    "text": "text of any length",
    "blob": "bytes of any length",
    "keyed": "after a table's closing parenthesis: store the rows in primary-key order (SQLite only)",
}
"""The words migration DDL writes in braces (``{id}``, ``{blob}`` …); each backend maps every one."""

_WORD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step of one component (``core``, ``spool``, ``logs`` …).

    Versions start at 1 and grow by one; ``statements`` run in order inside the component's
    migration transaction. A released migration is never edited: a change is a new version.
    Statements are neutral DDL with the type words of :data:`TYPE_WORDS`.
    """

    component: str
    version: int
    statements: tuple[str, ...]


CORE_MIGRATIONS: tuple[Migration, ...] = (
    Migration("core", 1, ("CREATE TABLE meta (key {text} PRIMARY KEY, value {text} NOT NULL) {keyed}",)),
)


def render_ddl(statement: str, words: Mapping[str, str]) -> str:
    """``statement`` with each ``{word}`` replaced by the backend's own text for it."""

    def word(match: re.Match[str]) -> str:
        try:
            return words[match.group(1)]
        except KeyError:
            raise ValueError(f"unknown type word {match.group(0)} in migration DDL: {statement}") from None

    return _WORD.sub(word, statement)


def plan_migrations(*groups: Sequence[Migration]) -> dict[str, list[Migration]]:
    """Group migrations by component, checking each component's versions run 1, 2, 3 …"""
    plan: dict[str, list[Migration]] = defaultdict(list)
    for group in groups:
        for step in group:
            plan[step.component].append(step)
    for component, steps in plan.items():
        steps.sort(key=lambda step: step.version)
        versions = [step.version for step in steps]
        if versions != list(range(1, len(steps) + 1)):
            raise ValueError(
                f"migrations of {component!r} must be numbered 1..n without gaps, got {versions}"
            )
    return dict(plan)


def newer_schema(
    place: str, setting: str, plan: Mapping[str, list[Migration]], recorded: Mapping[str, int]
) -> None:
    """Raise :class:`StoreError` when ``recorded`` holds a version newer than ``plan`` knows.

    ``setting`` is what the operator changes to use another database (``state.path``, ``state.url``).
    """
    for component, steps in plan.items():
        known = steps[-1].version
        current = recorded.get(component, 0)
        if current > known:
            raise StoreError(
                f"state database {place} was written by a newer ce-daemon "
                f"({component} schema {current}, this version knows {known}); "
                f"upgrade ce-daemon or point {setting} elsewhere"
            )


def id_columns(migrations: Iterable[Migration]) -> dict[str, str]:
    """``{table: column}`` of every ``{id}`` column the migrations create (their values survive a copy)."""
    found: dict[str, str] = {}
    for step in migrations:
        for statement in step.statements:
            table = re.match(r"\s*CREATE TABLE (?:IF NOT EXISTS )?(\w+)", statement, re.IGNORECASE)
            column = re.search(r"(\w+)\s+\{id\}", statement)
            if table and column:
                found[table.group(1)] = column.group(1)
    return found


def table_names(migrations: Iterable[Migration]) -> list[str]:
    """Every table the migrations create, in creation order (what ``state migrate`` copies)."""
    found: list[str] = []
    for step in migrations:
        for statement in step.statements:
            match = re.match(r"\s*CREATE TABLE (?:IF NOT EXISTS )?(\w+)", statement, re.IGNORECASE)
            if match and match.group(1) not in found:
                found.append(match.group(1))
    return found


class Transaction(Protocol):
    """One open transaction (or a read snapshot) of the store."""

    async def execute(self, sql: str, params: Params | None = None) -> int:
        """Run one statement; the number of rows it changed."""

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement once per parameter set."""

    async def fetch(self, sql: str, params: Params | None = None) -> list[Row]:
        """Every row the query returns."""

    async def fetchrow(self, sql: str, params: Params | None = None) -> Row | None:
        """The first row, or None."""

    async def fetchval(self, sql: str, params: Params | None = None) -> Any:
        """The first column of the first row, or None."""

    async def serialize(self, name: str) -> None:
        """Make every other transaction that serializes on ``name`` wait until this one ends.

        Appends use it so that ids assigned by the database commit in the order they were assigned,
        whichever process appends (a reader past id n never misses an id below n committed later).
        """


class Store(Protocol):
    """An open state store, shared by every component of the process."""

    backend: Backend
    shared: bool
    """True when other processes may write the same state (readers must re-check, not only wait)."""
    display: str
    """Where the store lives, fit to print: a path, or a URL without its password."""

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction: committed when the block ends, rolled back on any exception."""

    def read(self) -> AbstractAsyncContextManager[Transaction]:
        """Reads that see only committed data."""

    async def close(self) -> None:
        """Close the store; pending statements finish first."""

    async def __aenter__(self) -> Store:
        """``async with await open_store(…) as store``: closed at the end of the block."""

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the store."""

    async def get_meta(self, key: str) -> str | None:
        """The value stored under ``key`` in the core ``meta`` table, or None."""

    async def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (replacing any previous value)."""

    async def schema_versions(self) -> dict[str, int]:
        """The schema version of each component, as recorded in ``schema_migrations``."""

    async def columns(self, table: str) -> list[str]:
        """The columns of ``table``, in order."""

    async def key_columns(self, tx: Transaction, table: str) -> list[str]:
        """The primary key's columns of ``table``, in key order (read in ``tx``)."""

    async def last_id(self, tx: Transaction, table: str, column: str) -> int:
        """The highest ``{id}`` ever assigned in ``table``, even if its row was deleted since (0: none)."""

    async def continue_ids(self, tx: Transaction, table: str, column: str, after: int) -> None:
        """In ``tx``, make the ``{id}`` values assigned next follow ``after`` (a :meth:`last_id`)."""


class MetaTable:
    """``get_meta``/``set_meta``/``schema_versions`` in neutral SQL, shared by both backends."""

    display: str

    async def close(self) -> None:
        raise NotImplementedError

    async def columns(self, table: str) -> list[str]:
        raise NotImplementedError

    async def refuse_newer_schema(self, plan: Mapping[str, list[Migration]], setting: str) -> None:
        """What migrating would refuse, without migrating: a schema written by a newer ce-daemon.

        A database without ``schema_migrations`` (nothing applied yet) passes.
        """
        if await self.columns("schema_migrations"):
            newer_schema(self.display, setting, plan, await self.schema_versions())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def read(self) -> AbstractAsyncContextManager[Transaction]:
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        raise NotImplementedError

    async def get_meta(self, key: str) -> str | None:
        """The value stored under ``key`` in the core ``meta`` table, or None."""
        async with self.read() as tx:
            value = await tx.fetchval("SELECT value FROM meta WHERE key = :key", {"key": key})
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (replacing any previous value)."""
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO meta (key, value) VALUES (:key, :value)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                {"key": key, "value": value},
            )

    async def schema_versions(self) -> dict[str, int]:
        """The schema version of each component, as recorded in ``schema_migrations``."""
        async with self.read() as tx:
            rows = await tx.fetch("SELECT component, MAX(version) FROM schema_migrations GROUP BY component")
        return {str(component): int(version) for component, version in rows}


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof that this node still holds the lease of ``unit`` with ``token``.

    A component that holds a unit passes its fence to every commit of that unit's work; the commit
    checks it inside the same transaction (:meth:`check`). Taking a lease over increments its token,
    so a node whose lease was taken can no longer commit: its transaction is rolled back with
    :class:`LeaseLostError`. The row lock (``FOR KEY SHARE``) keeps a takeover (which locks the row
    ``FOR UPDATE``) off until a commit that passed the check has ended, so the check and the commit are one
    atomic step; renewals of the lease (an ``UPDATE`` of no key column) do not wait for it. Run the check
    last, just before the commit: the lock is held until then.
    """

    unit: str
    node: str
    token: int

    CHECK: ClassVar[str] = (
        "SELECT 1 FROM ce_leases WHERE unit = :unit AND node = :node AND token = :token FOR KEY SHARE"
    )

    async def check(self, tx: Transaction) -> None:
        """Raise :class:`LeaseLostError` unless the lease is still ours (run it inside the commit)."""
        held = await tx.fetchval(self.CHECK, {"unit": self.unit, "node": self.node, "token": self.token})
        if held is None:
            raise LeaseLostError(f"lease of {self.unit} lost: token {self.token} of {self.node} is stale")


_NAME = re.compile(r"(?<![:\w]):(\w+)")


@lru_cache(maxsize=1024)
def number_placeholders(sql: str, mark: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` with each ``:name`` placeholder as ``<mark><n>`` (``$1`` for PostgreSQL, ``?1`` for SQLite;
    a name used twice is one parameter), quoted text left alone, and the names in parameter order."""
    names: list[str] = []
    parts = sql.split("'")
    for i in range(0, len(parts), 2):  # outside quotes

        def numbered(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"{mark}{names.index(name) + 1}"

        parts[i] = _NAME.sub(numbered, parts[i])
    return "'".join(parts), tuple(names)
