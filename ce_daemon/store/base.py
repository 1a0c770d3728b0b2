"""What every state backend provides, and the fence that guards a unit's commits.

SQL given to a :class:`Transaction` is neutral: named ``:name`` placeholders (each backend turns them
into its own), no backend-only syntax. DDL in migrations uses the type words of
:data:`TYPE_WORDS`, which each backend maps to its own column types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from ce_daemon.errors import CeDaemonError

Params = Mapping[str, object]
Row = Sequence[Any]
Backend = Literal["sqlite", "postgresql"]


class StoreError(CeDaemonError):
    """The state store cannot be used: unreachable, corrupt, or written by a newer ce-daemon."""


class LeaseLostError(StoreError):
    """This node no longer holds the lease of a unit: what it was about to commit was rolled back."""


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


class Store(Protocol):
    """An open state store, shared by every component of the process."""

    backend: Backend

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction: committed when the block ends, rolled back on any exception."""

    def read(self) -> AbstractAsyncContextManager[Transaction]:
        """Reads that see only committed data."""

    async def close(self) -> None:
        """Close the store; pending statements finish first."""


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
