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
from contextlib import AbstractAsyncContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ce_daemon.store import open_url
from ce_daemon.store.base import (
    CORE_MIGRATIONS,
    CommitUncertainError,
    Migration,
    Store,
    StoreError,
    Transaction,
    id_columns,
    plan_migrations,
    table_names,
)
from ce_daemon.store.postgres import display_url
from ce_daemon.store.sqlite import exclusive_lock

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
    except CommitUncertainError as exc:
        print(
            f"state migrate: {exc}; the copy may have been applied: run again with --force", file=sys.stderr
        )
        return 1
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

    The source is read as it is (nothing is created in it) in one consistent snapshot; the target's
    delete, copy, id continuation and count check are one transaction, so a failure leaves it as it was.
    Refuses (StoreError) a source that is missing or not a ce-daemon state, one whose components or
    schema versions differ from this build's, a SQLite file (either end) a daemon holds (its lock is
    held for the whole copy, so none starts meanwhile), a PostgreSQL state a live node uses, and a
    target that already holds state unless ``force``.
    """
    plan = plan_migrations(CORE_MIGRATIONS, migrations)
    with ExitStack() as stack:
        for url, side in ((source_url, "source"), (target_url, "target")):
            path = _sqlite_path(url)
            if path is None:
                continue
            if side == "source" and not path.exists():
                raise StoreError(f"no state database at {path}")
            stack.enter_context(exclusive_lock(path))
        async with await open_url(source_url, migrations, migrate=False) as source:
            present = await _recorded(source)
            _same_components(source, present, plan)
            await _no_live_node(source)
            steps = [step for component in present for step in plan[component]]
            tables = table_names(steps)
            columns = {table: await source.columns(table) for table in tables}
            async with await open_url(target_url, migrations) as target:
                await _no_live_node(target)
                async with _snapshot(source) as read, target.transaction() as write:
                    await _make_room(target, write, tables, force)
                    copied = await _copy(source, read, write, columns)
                    # Ids continue where the source's were, even past deleted rows: a consumer's offset
                    # may point beyond every page left, and a reused seq below it would be skipped.
                    for table, column in id_columns(steps).items():
                        await target.continue_ids(
                            write, table, column, await source.last_id(read, table, column)
                        )
                    await _compare(read, write, copied)
    return copied


RUNTIME_ONLY = "cluster"
"""The component whose tables ``state migrate`` leaves behind (leases and nodes of the source's cluster)."""


def _sqlite_path(url: str) -> Path | None:
    parts = urlsplit(url)
    return Path(parts.path) if parts.scheme == "sqlite" else None


async def _recorded(source: Store) -> dict[str, int]:
    """The components and schema versions ``source`` records; refused when it is no ce-daemon state."""
    if not await source.columns("schema_migrations"):
        raise StoreError(
            f"{source.display} is not a ce-daemon state (it has no schema_migrations table): "
            "check the --from URL"
        )
    recorded = await source.schema_versions()
    # The cluster's tables say which node holds what right now: runtime state of the source's nodes,
    # not the installation's. A PostgreSQL target has its own (its store creates them); never copied.
    return {component: version for component, version in recorded.items() if component != RUNTIME_ONLY}


def _same_components(source: Store, present: dict[str, int], plan: dict[str, list[Migration]]) -> None:
    """Refuse a source whose components or versions this build's migrations do not match exactly.

    A table left out because its job is not installed (or failed to import) would be lost silently;
    a table of another schema version would be copied into columns that do not match.
    """
    problems = []
    for component, version in sorted(present.items()):
        steps = plan.get(component)
        if steps is None:
            problems.append(
                f"{component} (schema {version}) is not known to this ce-daemon: install the job that "
                "provides it, or fix what keeps it from loading (see `ce-daemon check`)"
            )
        elif steps[-1].version != version:
            known = steps[-1].version
            fix = "upgrade ce-daemon" if version > known else "run this ce-daemon on the source once first"
            problems.append(f"{component} is at schema {version} in the source, {known} here: {fix}")
    if problems:
        raise StoreError(f"the source {source.display} cannot be copied whole: " + "; ".join(problems))


async def _no_live_node(store: Store) -> None:
    """Refuse a PostgreSQL state that a node (whose heartbeat has not expired) is using."""
    if store.backend != "postgresql":
        return  # a SQLite state's daemon holds its lock file, taken above
    async with store.read() as tx:
        if await tx.fetchval("SELECT to_regclass('ce_nodes')") is None:
            return  # never ran a cluster node
        live = await tx.fetch("SELECT node FROM ce_nodes WHERE expires_at > now() ORDER BY node")
    if live:
        nodes = ", ".join(str(node) for (node,) in live)
        raise StoreError(f"{store.display} is in use by live node(s) {nodes}: stop them first")


def _snapshot(source: Store) -> AbstractAsyncContextManager[Transaction]:
    """One consistent view of the whole source for the copy.

    PostgreSQL: a REPEATABLE READ read-only transaction. SQLite: its ``read()`` is not one transaction,
    so a write transaction (``BEGIN IMMEDIATE``, never committed with changes) keeps every other
    writer of the file (a ``dlq purge``) out until the copy ends.
    """
    return source.read() if source.backend == "postgresql" else source.transaction()


async def _make_room(target: Store, tx: Transaction, tables: list[str], force: bool) -> None:
    counts = await _counts(tx, tables)
    held = {table: rows for table, rows in counts.items() if rows}
    if held and not force:
        listed = ", ".join(f"{table} ({rows})" for table, rows in held.items())
        raise StoreError(
            f"the target {target.display} already holds state: {listed}; give --force to replace it"
        )
    for table in reversed(tables):
        if held.get(table):
            await tx.execute(f"DELETE FROM {table}")  # noqa: S608 - names from migrations


async def _copy(
    source: Store, read: Transaction, write: Transaction, columns: dict[str, list[str]]
) -> list[Copied]:
    """Copy each table in chunks, paged by its primary key (keyset: no row read twice or missed)."""
    copied = []
    for table, names in columns.items():
        listed = ", ".join(names)
        key = await source.key_columns(read, table)
        if not key:
            raise StoreError(f"table {table} of {source.display} has no primary key: it cannot be paged")
        order = ", ".join(key)
        marks = ", ".join(f":k{i}" for i in range(len(key)))
        insert = f"INSERT INTO {table} ({listed}) VALUES ({', '.join(':' + c for c in names)})"  # noqa: S608
        first = f"SELECT {listed} FROM {table} ORDER BY {order} LIMIT :limit"  # noqa: S608
        after = f"SELECT {listed} FROM {table} WHERE ({order}) > ({marks}) ORDER BY {order} LIMIT :limit"  # noqa: S608
        at = [names.index(column) for column in key]
        rows = 0
        chunk = await read.fetch(first, {"limit": CHUNK_ROWS})
        while chunk:
            await write.executemany(insert, [dict(zip(names, row, strict=True)) for row in chunk])
            rows += len(chunk)
            last = {f"k{i}": chunk[-1][position] for i, position in enumerate(at)}
            chunk = await read.fetch(after, {"limit": CHUNK_ROWS, **last})
        copied.append(Copied(table, rows))
    return copied


async def _compare(read: Transaction, write: Transaction, copied: list[Copied]) -> None:
    tables = [item.table for item in copied]
    theirs, ours = await _counts(read, tables), await _counts(write, tables)
    wrong = [
        f"{table}: {theirs[table]} in the source, {ours[table]} in the target"
        for table in tables
        if theirs[table] != ours[table]
    ]
    if wrong:
        raise StoreError("the copy does not match its source (nothing was written): " + "; ".join(wrong))


async def _counts(tx: Transaction, tables: list[str]) -> dict[str, int]:
    return {
        table: int(await tx.fetchval(f"SELECT COUNT(*) FROM {table}"))  # noqa: S608 - names from migrations
        for table in tables
    }
