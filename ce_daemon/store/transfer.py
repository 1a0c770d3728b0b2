"""``ce-daemon state migrate``: copy an installation's state from one store to another.

Every table of every component the source records is copied (the spool's pages and offsets, the
iterator checkpoints, dead letters, meta, and whatever a later job's migrations created), generic over
the tables the migrations create: nothing here names a table. Ids are copied as they are, so
consumer offsets keep pointing at the same pages: nothing is shipped twice or skipped after the move.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ce_daemon.store import open_url
from ce_daemon.store.base import (
    CORE_MIGRATIONS,
    Migration,
    Store,
    StoreError,
    id_columns,
    plan_migrations,
    table_names,
)
from ce_daemon.store.postgres import display_url

__all__ = ["Copied", "add_state_command", "copy_state"]

CHUNK_ROWS = 200  # spool pages are up to a few MB each: this bounds what one step holds in memory


@dataclass(frozen=True, slots=True)
class Copied:
    """One table copied: its name and how many rows it holds on both sides."""

    table: str
    rows: int


def add_state_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``state migrate --from URL --to URL [--force]`` to the CLI."""
    state = sub.add_parser("state", help="manage the state store", description="Manage the state store.")
    actions = state.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate = actions.add_parser(
        "migrate",
        help="copy the state to another store",
        description="Copy every table of the state to another store (e.g. SQLite to PostgreSQL), "
        "ids and offsets unchanged. Give a PostgreSQL password in PGPASSWORD, not in the URL.",
    )
    migrate.add_argument(
        "--from", dest="source", required=True, help="sqlite:///path/state.db or postgresql://…"
    )
    migrate.add_argument(
        "--to", dest="target", required=True, help="postgresql://user@host:5432/db or sqlite:///…"
    )
    migrate.add_argument("--force", action="store_true", help="replace what the target already holds")


async def migrate_command(args: argparse.Namespace, migrations: Sequence[Migration]) -> int:
    """Run ``state migrate``: 0 when copied and counted, 1 when refused or failed (saying why)."""
    try:
        copied = await copy_state(args.source, args.target, migrations, force=args.force)
    except StoreError as exc:
        print(f"state migrate: {exc}", file=sys.stderr)
        return 1
    for item in copied:
        print(f"copied {item.rows:>9} row(s) of {item.table}")
    print(
        f"copied {sum(item.rows for item in copied)} row(s) in {len(copied)} table(s) "
        f"from {display_url(args.source)} to {display_url(args.target)}"
    )
    return 0


async def copy_state(
    source_url: str, target_url: str, migrations: Sequence[Migration], *, force: bool = False
) -> list[Copied]:
    """Copy every table of the components ``source_url`` records into ``target_url``, in one transaction.

    Refuses (StoreError) a source SQLite file that is missing or that a daemon holds (its lock is held
    for the whole copy, so none starts meanwhile), a target that already holds state unless ``force``,
    and any difference in row counts afterwards.
    """
    with ExitStack() as stack:
        source_path = _sqlite_path(source_url)
        if source_path is not None:
            if not source_path.exists():
                raise StoreError(f"no state database at {source_path}")
            from ce_daemon.store.sqlite import exclusive_lock

            stack.enter_context(exclusive_lock(source_path))
        async with await open_url(source_url, migrations) as source:
            present = await source.schema_versions()
            plan = plan_migrations(CORE_MIGRATIONS, migrations)
            steps = [step for component in present for step in plan.get(component, [])]
            tables = table_names(steps)
            async with await open_url(target_url, migrations) as target:
                await _make_room(target, tables, force)
                copied = await _copy(source, target, tables)
                # Ids continue where the source's were, even past deleted rows: a consumer's offset
                # may point beyond every page left, and a reused seq below it would be skipped.
                for table, column in id_columns(steps).items():
                    await target.continue_ids(table, column, await source.last_id(table, column))
                await _compare(source, target, copied)
    return copied


def _sqlite_path(url: str) -> Path | None:
    parts = urlsplit(url)
    return Path(parts.path) if parts.scheme == "sqlite" else None


async def _make_room(target: Store, tables: list[str], force: bool) -> None:
    counts = await _counts(target, tables)
    held = {table: rows for table, rows in counts.items() if rows}
    if held and not force:
        listed = ", ".join(f"{table} ({rows})" for table, rows in held.items())
        raise StoreError(
            f"the target {target.display} already holds state: {listed}; give --force to replace it"
        )
    if held:
        async with target.transaction() as tx:
            for table in reversed(tables):
                await tx.execute(f"DELETE FROM {table}")  # noqa: S608 - names from migrations


async def _copy(source: Store, target: Store, tables: list[str]) -> list[Copied]:
    copied = []
    async with target.transaction() as tx:
        for table in tables:
            columns = await source.columns(table)
            names = ", ".join(columns)
            order = ", ".join(str(i) for i in range(1, len(columns) + 1))
            insert = f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + c for c in columns)})"  # noqa: S608
            rows = 0
            while True:
                async with source.read() as read:
                    chunk = await read.fetch(
                        f"SELECT {names} FROM {table} ORDER BY {order} LIMIT :limit OFFSET :offset",  # noqa: S608
                        {"limit": CHUNK_ROWS, "offset": rows},
                    )
                if not chunk:
                    break
                await tx.executemany(insert, [dict(zip(columns, row, strict=True)) for row in chunk])
                rows += len(chunk)
            copied.append(Copied(table, rows))
    return copied


async def _compare(source: Store, target: Store, copied: list[Copied]) -> None:
    tables = [item.table for item in copied]
    theirs, ours = await _counts(source, tables), await _counts(target, tables)
    wrong = [
        f"{table}: {theirs[table]} in the source, {ours[table]} in the target"
        for table in tables
        if theirs[table] != ours[table]
    ]
    if wrong:
        raise StoreError("the copy does not match its source: " + "; ".join(wrong))


async def _counts(store: Store, tables: list[str]) -> dict[str, int]:
    async with store.read() as tx:
        return {
            table: int(await tx.fetchval(f"SELECT COUNT(*) FROM {table}"))  # noqa: S608 - names from migrations
            for table in tables
        }
