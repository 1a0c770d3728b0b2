"""The state database: file safety, migrations, transactions."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ce_daemon.store import Migration, StoreError
from ce_daemon.store.base import Row
from ce_daemon.store.sqlite import SqliteStore

WIDGETS_V1 = Migration("widgets", 1, ("CREATE TABLE widgets (name TEXT PRIMARY KEY)",))
WIDGETS_V2 = Migration("widgets", 2, ("ALTER TABLE widgets ADD COLUMN colour TEXT",))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def plant_file(path: Path, content: bytes, mode: int = 0o644) -> None:
    """Put a file where the database will be opened, as an earlier install or a mistake would."""
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    path.chmod(mode)


def plant_directory(path: Path) -> None:
    path.mkdir(parents=True)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ce-daemon.db"


async def execute(store: SqliteStore, sql: str) -> None:
    """Run one statement in a transaction of its own."""
    async with store.transaction() as tx:
        await tx.execute(sql)


async def fetch(store: SqliteStore, sql: str) -> list[Row]:
    """The rows of one query, read from committed data."""
    async with store.read() as tx:
        return await tx.fetch(sql)


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    async with await SqliteStore.open(db_path, [WIDGETS_V1]) as opened:
        yield opened


async def test_creates_private_directory_and_files(db_path: Path) -> None:
    """A new database gets a 0700 directory and 0600 database, WAL and shared-memory files."""
    async with await SqliteStore.open(db_path) as store:
        await store.set_meta("probe", "1")
        wal = db_path.with_name(db_path.name + "-wal")
        shm = db_path.with_name(db_path.name + "-shm")
        assert mode_of(db_path.parent) == 0o700
        assert [mode_of(p) for p in (db_path, wal, shm)] == [0o600, 0o600, 0o600]


async def test_existing_loose_file_is_made_private(db_path: Path) -> None:
    """A database file left world-readable by an older install is tightened to 0600 at open."""
    plant_file(db_path, b"", 0o644)
    async with await SqliteStore.open(db_path):
        assert mode_of(db_path) == 0o600


async def test_loose_directory_of_our_own_is_made_private(db_path: Path) -> None:
    """A state directory others may read, holding only ce-daemon's files, is tightened to 0700 and logged."""
    plant_file(db_path, b"", 0o644)
    db_path.with_name(db_path.name + ".lock").write_text("")
    db_path.parent.chmod(0o755)
    with capture_logs() as logs:
        async with await SqliteStore.open(db_path):
            pass
    assert mode_of(db_path.parent) == 0o700
    assert mode_of(db_path.with_name(db_path.name + ".lock")) == 0o600
    events = {(e["event"], e.get("mode_was")) for e in logs}
    assert {("state.directory_tightened", "0755"), ("state.file_tightened", "0644")} <= events


async def test_directory_others_may_write_is_refused(db_path: Path) -> None:
    """A shared state directory (others may write, as in /tmp) is refused and left as it is."""
    plant_directory(db_path.parent)
    db_path.parent.chmod(0o1777)
    with pytest.raises(StoreError, match=r"is writable by other users \(mode 1777\)"):
        await SqliteStore.open(db_path)
    assert mode_of(db_path.parent) == 0o1777
    assert os.listdir(db_path.parent) == []


async def test_loose_directory_holding_other_files_is_refused(db_path: Path) -> None:
    """A readable directory that is not ce-daemon's alone (a home, /var/lib) is refused, not tightened."""
    plant_directory(db_path.parent)
    (db_path.parent / "notes.txt").write_text("someone else's")
    db_path.parent.chmod(0o755)
    with pytest.raises(StoreError, match=r"holds files that are not ce-daemon's \('notes.txt'\)"):
        await SqliteStore.open(db_path)
    assert mode_of(db_path.parent) == 0o755


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
async def test_loose_directory_of_another_user_is_refused(db_path: Path) -> None:
    """A readable directory owned by another user is refused with the command that fixes it."""
    plant_directory(db_path.parent)
    db_path.parent.chmod(0o755)
    os.chown(db_path.parent, 65534, 65534)
    with pytest.raises(StoreError, match=r"belongs to uid 65534, not to this user: make it private"):
        await SqliteStore.open(db_path)
    assert mode_of(db_path.parent) == 0o755


async def test_connection_pragmas(store: SqliteStore) -> None:
    """The database runs in WAL mode, synchronous=NORMAL, foreign keys on, secure_delete=FAST."""
    pragmas = {}
    for name in ("journal_mode", "synchronous", "foreign_keys", "secure_delete"):
        pragmas[name] = await store.pragma(name)
    assert pragmas == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "secure_delete": 2}


async def test_migrations_are_applied_once_and_recorded(db_path: Path) -> None:
    """Reopening does not re-run applied migrations, and each applied step is recorded."""
    async with await SqliteStore.open(db_path, [WIDGETS_V1]) as store:
        await execute(store, "INSERT INTO widgets (name) VALUES ('kept')")
    async with await SqliteStore.open(db_path, [WIDGETS_V1]) as store:
        widgets = list(await fetch(store, "SELECT name FROM widgets"))
        recorded = list(
            await fetch(store, "SELECT component, version FROM schema_migrations ORDER BY component, version")
        )
    assert [tuple(row) for row in widgets] == [("kept",)]
    assert [tuple(row) for row in recorded] == [("core", 1), ("widgets", 1)]


async def test_pending_migrations_are_applied_in_order(db_path: Path) -> None:
    """A database at version 1 is brought to version 2 when the code knows version 2."""
    async with await SqliteStore.open(db_path, [WIDGETS_V1]):
        pass
    async with await SqliteStore.open(db_path, [WIDGETS_V2, WIDGETS_V1]) as store:
        await execute(store, "INSERT INTO widgets (name, colour) VALUES ('w', 'red')")
        rows = list(await fetch(store, "SELECT name, colour FROM widgets"))
    assert [tuple(row) for row in rows] == [("w", "red")]


async def test_failing_migration_is_rolled_back(db_path: Path) -> None:
    """A migration whose statement fails leaves neither its tables nor its record behind."""
    broken = Migration("widgets", 1, ("CREATE TABLE widgets (name TEXT)", "CREATE TABLE oops (("))
    with pytest.raises(StoreError, match="migration widgets 1 failed"):
        await SqliteStore.open(db_path, [broken])
    async with await SqliteStore.open(db_path, [WIDGETS_V1]) as store:
        rows = list(await fetch(store, "SELECT version FROM schema_migrations WHERE component = 'widgets'"))
    assert [tuple(row) for row in rows] == [(1,)]


async def test_database_from_newer_version_is_refused(db_path: Path) -> None:
    """A database recording a schema newer than this code knows raises a StoreError saying so."""
    async with await SqliteStore.open(db_path, [WIDGETS_V1, WIDGETS_V2]):
        pass
    with pytest.raises(StoreError) as caught:
        await SqliteStore.open(db_path, [WIDGETS_V1])
    message = str(caught.value)
    assert "written by a newer ce-daemon (widgets schema 2, this version knows 1)" in message
    assert "upgrade ce-daemon or point state.path elsewhere" in message


async def test_non_sqlite_file_is_refused(db_path: Path) -> None:
    """A file that is not SQLite raises a StoreError naming the file, not a sqlite3 traceback."""
    plant_file(db_path, b"this is a pipeline.yaml, not a database\n" * 200)
    with pytest.raises(StoreError, match=r"point state\.path elsewhere") as caught:
        await SqliteStore.open(db_path)
    assert str(db_path) in str(caught.value)


async def test_directory_in_place_of_file_is_refused(db_path: Path) -> None:
    """A directory where the database file should be raises a StoreError."""
    plant_directory(db_path)
    with pytest.raises(StoreError, match="cannot create state database"):
        await SqliteStore.open(db_path)


async def test_migration_numbering_must_be_contiguous(db_path: Path) -> None:
    """Migrations with a gap in their versions are a programming error caught before opening."""
    with pytest.raises(ValueError, match="without gaps"):
        await SqliteStore.open(db_path, [WIDGETS_V2])


async def test_meta_round_trip(store: SqliteStore) -> None:
    """get_meta returns None for a missing key and the latest value once set."""
    assert await store.get_meta("instance") is None
    await store.set_meta("instance", "a")
    await store.set_meta("instance", "b")
    assert await store.get_meta("instance") == "b"


async def test_transaction_rolls_back_on_error(store: SqliteStore) -> None:
    """An exception inside a transaction undoes its writes and propagates."""

    async def failing_write() -> None:
        async with store.transaction() as db:
            await db.execute("INSERT INTO widgets (name) VALUES ('lost')")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await failing_write()
    rows = list(await fetch(store, "SELECT name FROM widgets"))
    assert rows == []


async def test_failed_commit_rolls_back_and_frees_the_store(db_path: Path) -> None:
    """A COMMIT refused by SQLite (a deferred foreign key) is rolled back; the next transaction works."""
    orders = Migration(
        "orders",
        1,
        (
            "CREATE TABLE customers (id INTEGER PRIMARY KEY)",
            (
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER"
                " REFERENCES customers (id) DEFERRABLE INITIALLY DEFERRED)"
            ),
        ),
    )
    async with await SqliteStore.open(db_path, [orders]) as store:

        async def orphan_order() -> None:
            async with store.transaction() as db:
                await db.execute("INSERT INTO orders (id, customer) VALUES (1, 42)")

        with pytest.raises(StoreError, match="FOREIGN KEY"):
            await orphan_order()
        async with store.transaction() as db:
            await db.execute("INSERT INTO customers (id) VALUES (7)")
            await db.execute("INSERT INTO orders (id, customer) VALUES (2, 7)")
        rows = list(await fetch(store, "SELECT id FROM orders"))
    assert [tuple(row) for row in rows] == [(2,)]


async def test_cancelled_transaction_rolls_back_and_frees_the_store(store: SqliteStore) -> None:
    """Cancelling a task inside a transaction rolls it back and lets the next transaction run."""
    inside = asyncio.Event()
    never = asyncio.Event()

    async def writer() -> None:
        async with store.transaction() as db:
            await db.execute("INSERT INTO widgets (name) VALUES ('lost')")
            inside.set()
            await never.wait()

    task = asyncio.create_task(writer())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with store.transaction() as db:
        await db.execute("INSERT INTO widgets (name) VALUES ('kept')")
    rows = list(await fetch(store, "SELECT name FROM widgets"))
    assert [tuple(row) for row in rows] == [("kept",)]


async def test_concurrent_transactions_do_not_interleave(store: SqliteStore) -> None:
    """A second task's transaction starts only after the first one has committed."""
    order: list[str] = []
    second_waiting = asyncio.Event()

    async def first() -> None:
        async with store.transaction() as db:
            order.append("first-begin")
            await second_waiting.wait()
            await db.execute("INSERT INTO widgets (name) VALUES ('one')")
            order.append("first-end")

    async def second() -> None:
        second_waiting.set()
        async with store.transaction() as db:
            order.append("second-begin")
            await db.execute("INSERT INTO widgets (name) VALUES ('two')")
            order.append("second-end")

    first_task = asyncio.create_task(first())
    await asyncio.gather(first_task, second())
    assert order == ["first-begin", "first-end", "second-begin", "second-end"]


async def test_committed_writes_survive_reopen(db_path: Path) -> None:
    """Whatever a transaction committed is there after close and reopen."""
    async with await SqliteStore.open(db_path) as store:
        await store.set_meta("instance", "kept")
    async with await SqliteStore.open(db_path) as store:
        assert await store.get_meta("instance") == "kept"
