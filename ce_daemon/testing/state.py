"""The state backend a test runs on: SQLite files under ``tmp_path``, or a fresh PostgreSQL database.

``pytest --state-backend=postgresql`` (see :mod:`ce_daemon.testing.pytest_plugin`) gives each test a
database of its own and names it in ``CE_TEST_STATE_URL``; every helper that writes a pipeline's
``state:`` section or opens a store goes through :func:`state_section`, so the whole suite runs on
the backend selected.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from ce_daemon.config.model import StateSettings
from ce_daemon.store import CORE_MIGRATIONS, Migration, Store, open_store
from ce_daemon.store.base import table_names

__all__ = [
    "POSTGRES_SERVER",
    "STATE_URL_VARIABLE",
    "PostgresUnreachableError",
    "create_database",
    "drop_database",
    "open_test_store",
    "postgres_database",
    "state_dump",
    "state_section",
]

STATE_URL_VARIABLE = "CE_TEST_STATE_URL"
POSTGRES_SERVER = os.environ.get("CE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
"""The PostgreSQL server tests make their databases on (without a database: its ``postgres`` one
administers them)."""


class PostgresUnreachableError(Exception):
    """:data:`POSTGRES_SERVER` cannot be reached: a test that needs it fails (it is never skipped)."""


async def create_database() -> str:
    """A new, empty database of its own on :data:`POSTGRES_SERVER`: its URL."""
    name = f"ce_t_{secrets.token_hex(6)}"
    await _admin(f"CREATE DATABASE {name}")
    return f"{POSTGRES_SERVER}/{name}"


async def drop_database(url: str) -> None:
    """Drop the database ``url`` names (made by :func:`create_database`), whoever is still connected."""
    await _admin(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A database of its own (its URL) for the block, dropped afterwards."""
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


async def _admin(statement: str) -> None:
    try:
        connection = await asyncpg.connect(f"{POSTGRES_SERVER}/postgres", timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise PostgresUnreachableError(
            f"PostgreSQL at {POSTGRES_SERVER} is unreachable ({exc}); start it (scripts/test.sh does) "
            "or run with --state-backend=sqlite"
        ) from exc
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def state_section(path: Path) -> dict[str, Any]:
    """A pipeline's ``state:`` section: the SQLite file ``path``, or the test's PostgreSQL database.

    With PostgreSQL ``path`` still names the data directory (its folder) and the control socket's place.
    """
    section: dict[str, Any] = {"path": str(path)}
    url = os.environ.get(STATE_URL_VARIABLE)
    if url:
        section["url"] = url
    return section


async def open_test_store(path: Path, migrations: Sequence[Migration] = ()) -> Store:
    """Open the test's state (see :func:`state_section`) with ``migrations`` applied."""
    return await open_store(StateSettings.model_validate(state_section(path)), migrations)


async def state_dump(path: Path, migrations: Sequence[Migration]) -> str:
    """Every row of every table ``migrations`` create (and the core's), as text: what a test searches for
    a value that must never be stored, whichever backend holds the state."""
    lines: list[str] = []
    async with await open_test_store(path, migrations) as store, store.read() as tx:
        for table in ("schema_migrations", *table_names((*CORE_MIGRATIONS, *migrations))):
            rows = await tx.fetch(f"SELECT * FROM {table}")  # noqa: S608 - names from migrations
            lines.extend(f"{table}: " + " | ".join(_text(value) for value in row) for row in rows)
    return "\n".join(lines)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
