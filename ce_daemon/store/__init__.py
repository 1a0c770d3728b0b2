"""The state store: one API over SQLite (embedded default) and PostgreSQL (scale-out).

Nothing outside this package names a driver: callers write neutral SQL with ``:name`` placeholders
(see :mod:`ce_daemon.store.base`) and each backend translates it. :func:`open_store` picks the backend
the pipeline's ``state:`` section names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ce_daemon.store.base import (
    CORE_MIGRATIONS,
    CommitUncertainError,
    Fence,
    LeaseLostError,
    Migration,
    Store,
    StoreError,
    Transaction,
)

if TYPE_CHECKING:
    from ce_daemon.config.model import StateSettings

__all__ = [
    "CORE_MIGRATIONS",
    "CommitUncertainError",
    "Fence",
    "LeaseLostError",
    "Migration",
    "Store",
    "StoreError",
    "Transaction",
    "exclusive",
    "open_store",
    "open_url",
    "state_url",
]

SCHEMES = ("sqlite", "postgresql", "postgres")


async def open_store(
    settings: StateSettings,
    migrations: Sequence[Migration] = (),
    *,
    connect_timeout: float = 10.0,
    migrate: bool = True,
) -> Store:
    """Open the state ``settings`` name (``url:`` when given, else the SQLite file at ``path:``).

    ``migrate=False`` reads a state as it is (``status``): nothing is created in it.
    """
    return await open_url(
        state_url(settings),
        migrations,
        connect_timeout=connect_timeout,
        command_timeout=settings.timeout,
        migrate=migrate,
    )


async def open_url(
    url: str,
    migrations: Sequence[Migration] = (),
    *,
    connect_timeout: float = 10.0,
    command_timeout: float | None = None,
    idle_in_transaction: float | None = None,
    migrate: bool = True,
) -> Store:
    """Open ``sqlite:///path`` or ``postgresql://user[:password]@host[:port]/db`` and migrate it.

    ``command_timeout`` bounds each statement, commit and wait for a connection of PostgreSQL (its
    default when None), ``idle_in_transaction`` how long PostgreSQL lets a transaction sit idle before
    it rolls it back; SQLite waits out another process's lock for its own busy timeout.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from ce_daemon.store.sqlite import SqliteStore

        return await SqliteStore.open(Path(parts.path), migrations, migrate=migrate)
    if parts.scheme in ("postgresql", "postgres"):
        from ce_daemon.store.postgres import COMMAND_TIMEOUT, IDLE_IN_TRANSACTION, PostgresStore

        return await PostgresStore.open(
            url,
            migrations,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout or COMMAND_TIMEOUT,
            idle_in_transaction=idle_in_transaction or IDLE_IN_TRANSACTION,
            migrate=migrate,
        )
    raise StoreError(f"unknown state URL scheme {parts.scheme!r}: use sqlite:///path or postgresql://host/db")


@contextlib.contextmanager
def exclusive(settings: StateSettings) -> Iterator[None]:
    """Keep a second daemon off a state meant for one; held before the store is opened.

    SQLite: a file lock beside the database (StoreError naming the pid holding it). PostgreSQL:
    nothing here, since nodes share it on purpose; each unit's lease keeps them apart.
    """
    if settings.url is not None:
        yield
        return
    from ce_daemon.store.sqlite import exclusive_lock

    with exclusive_lock(settings.path):
        yield


def state_url(settings: StateSettings) -> str:
    """The URL of the state ``settings`` name, with the password (resolved from its reference) put in."""
    if settings.url is None:
        return f"sqlite://{settings.path}"
    if settings.password is None:
        return settings.url
    from ce_daemon.store.postgres import with_user

    parts = urlsplit(settings.url)
    user = quote(unquote(parts.username or ""), safe="")
    secret = quote(settings.password.get_secret_value(), safe="")
    return urlunsplit(parts._replace(netloc=with_user(parts, f"{user}:{secret}")))
