"""The state backend a test runs on: SQLite files under ``tmp_path``, or a fresh PostgreSQL database.

``pytest --state-backend=postgresql`` (see :mod:`ce_daemon.testing.pytest_plugin`) gives each test a
database of its own and names it in ``CE_TEST_STATE_URL``; every helper that writes a pipeline's
``state:`` section or opens a store goes through :func:`state_section`, so the whole suite runs on
the backend selected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ce_daemon.config.model import StateSettings
from ce_daemon.store import CORE_MIGRATIONS, Migration, Store, open_store
from ce_daemon.store.base import table_names

__all__ = ["STATE_URL_VARIABLE", "open_test_store", "state_dump", "state_section"]

STATE_URL_VARIABLE = "CE_TEST_STATE_URL"


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
