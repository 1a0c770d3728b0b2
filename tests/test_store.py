"""The state store on either backend: migrations, meta, transactions, neutral SQL, a shared spool."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import ce_daemon
from ce_daemon.config.model import StateSettings
from ce_daemon.daemon import state_migrations
from ce_daemon.jobs import Jobs
from ce_daemon.logs.deadletter import DeadLetters
from ce_daemon.netskope.checkpoint import Checkpoints, IteratorMark
from ce_daemon.spool import Spool
from ce_daemon.store import (
    CommitUncertainError,
    Fence,
    LeaseLostError,
    Migration,
    StoreError,
    open_store,
    open_url,
    postgres,
    state_url,
)
from ce_daemon.store.postgres import POOL_SIZE, display_url
from ce_daemon.testing.state import open_test_store

WIDGETS_V1 = Migration("widgets", 1, ("CREATE TABLE widgets (id {id}, name {text} NOT NULL, data {blob})",))
WIDGETS_V2 = Migration("widgets", 2, ("ALTER TABLE widgets ADD COLUMN size {int}",))
STATE_MIGRATIONS = state_migrations(Jobs.discover())
"""The spool's and every installed job's migrations, as the daemon opens its state with."""

SOURCE_ROOTS = [Path(ce_daemon.__file__).parent, Path(ce_daemon.__file__).parents[1] / "plugins"]
SQLITE_ONLY = re.compile(
    r"aiosqlite|AUTOINCREMENT|WITHOUT ROWID|lastrowid|PRAGMA\b|\b(?:VALUES|WHERE|SET)\b[^\"\n]*\?"
)


async def test_migrations_apply_once_and_ids_are_assigned(tmp_path: Path) -> None:
    """Steps in type words apply once; a reopen finds them recorded; {id} assigns increasing ids."""
    async with await open_test_store(tmp_path / "s.db", [WIDGETS_V1]) as store:
        async with store.transaction() as tx:
            first = await tx.fetchval("INSERT INTO widgets (name) VALUES (:n) RETURNING id", {"n": "a"})
            second = await tx.fetchval("INSERT INTO widgets (name) VALUES (:n) RETURNING id", {"n": "b"})
        assert second > first
    with capture_logs() as logs:
        async with await open_test_store(tmp_path / "s.db", [WIDGETS_V2, WIDGETS_V1]) as store:
            cluster = {"cluster": 1} if store.backend == "postgresql" else {}  # its tables: PostgreSQL only
            assert await store.schema_versions() == {"core": 1, "widgets": 2, **cluster}
            async with store.read() as tx:
                assert [tuple(r) for r in await tx.fetch("SELECT name, size FROM widgets ORDER BY id")] == [
                    ("a", None),
                    ("b", None),
                ]
    assert [(e["component"], e["to_version"]) for e in logs if e["event"] == "state.migrated"] == [
        ("widgets", 2)
    ]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A state recording a version newer than this code knows is refused, saying what to change."""
    async with await open_test_store(tmp_path / "s.db", [WIDGETS_V1, WIDGETS_V2]):
        pass
    with pytest.raises(StoreError, match=r"newer ce-daemon \(widgets schema 2, this version knows 1\)"):
        await open_test_store(tmp_path / "s.db", [WIDGETS_V1])


async def test_blobs_meta_and_rollback(tmp_path: Path) -> None:
    """Bytes round-trip; meta is replaced in place; an exception undoes the transaction's writes."""
    async with await open_test_store(tmp_path / "s.db", [WIDGETS_V1]) as store:
        await store.set_meta("k", "one")
        await store.set_meta("k", "two")
        assert await store.get_meta("k") == "two"
        assert await store.get_meta("missing") is None

        async def failing() -> None:
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO widgets (name, data) VALUES ('lost', :d)", {"d": b"\0\1"})
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await failing()
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO widgets (name, data) VALUES ('kept', :d)", {"d": b"\0\1"})
        async with store.read() as tx:
            assert [tuple(r) for r in await tx.fetch("SELECT name, data FROM widgets")] == [("kept", b"\0\1")]


def test_no_sqlite_only_sql_outside_the_sqlite_backend() -> None:
    """aiosqlite, AUTOINCREMENT, WITHOUT ROWID, lastrowid, PRAGMA, ? placeholders: store/sqlite.py only."""
    found = []
    for root in SOURCE_ROOTS:
        for path in root.rglob("*.py"):
            if path.name == "sqlite.py" and path.parent.name == "store":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if SQLITE_ONLY.search(line):
                    found.append(f"{path}:{number}: {line.strip()}")
    assert found == []


async def test_a_state_made_by_the_released_schema_opens_without_migrating(tmp_path: Path) -> None:
    """A SQLite state written by ce-daemon before the store protocol opens as it is, its rows readable."""
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(RELEASED_SCHEMA)
    with capture_logs() as logs:
        async with await open_store(StateSettings(path=path), STATE_MIGRATIONS) as store:
            spool = Spool(store, 1 << 30)
            await spool.load()
            page = await spool.next_page("route", timeout=0)
            state = await Checkpoints(store).state("t/alerts/dlp")
            letters = await DeadLetters(store).oldest()
            await spool.append("t/alerts/dlp", [{"_id": "3"}])
    released = {"core", "spool", "deadletters"}  # a job installed since then brings its own tables
    assert [e for e in logs if e["event"] == "state.migrated" and e["component"] in released] == []
    assert page is not None and page.seq == 7 and page.records == [{"_id": "1"}, {"_id": "2"}]
    assert state is not None and (state.index, state.last_id, state.count) == ("idx", "2", 2)
    assert [(r["id"], r["reason"]) for r in letters] == [(4, "refused")]


async def test_the_password_of_a_url_is_never_shown(postgres_url: str) -> None:
    """A password given apart goes into the URL used, and out of every message and display."""
    settings = StateSettings.model_validate({"url": postgres_url, "password": "s3cret-pw"})
    assert "s3cret-pw" in state_url(settings)
    assert "s3cret-pw" not in display_url(state_url(settings))
    unreachable = "postgresql://ce:s3cret-pw@127.0.0.1:1/nowhere"
    with pytest.raises(StoreError) as caught:
        await open_url(unreachable, connect_timeout=2)
    assert "127.0.0.1:1/nowhere" in str(caught.value) and "s3cret-pw" not in str(caught.value)


async def test_nodes_starting_at_once_migrate_once(postgres_url: str) -> None:
    """Three stores opening one PostgreSQL database at the same moment apply each step exactly once."""
    stores = await asyncio.gather(*(open_url(postgres_url, STATE_MIGRATIONS) for _ in range(3)))
    try:
        async with stores[0].read() as tx:
            rows = await tx.fetch("SELECT component, COUNT(*) FROM schema_migrations GROUP BY component")
    finally:
        for store in stores:
            await store.close()
    steps = Counter(migration.component for migration in STATE_MIGRATIONS)  # each job's, the spool's
    assert {str(component): int(count) for component, count in rows} == {
        "core": 1,
        "cluster": 1,  # on PostgreSQL the cluster's tables come with the core's
        **steps,
    }
    assert {"spool", "deadletters", "threats"} <= steps.keys()


async def test_a_stale_fence_cannot_commit(postgres_url: str) -> None:
    """A commit fenced by a token that was taken over is rolled back with LeaseLostError."""
    async with await open_url(postgres_url, STATE_MIGRATIONS) as store:  # the cluster's tables come along
        async with store.transaction() as tx:
            await tx.execute(
                "INSERT INTO ce_leases (unit, node, token, acquired_at, renewed_at, expires_at)"
                " VALUES ('t/alerts/dlp', 'a', 2, now(), now(), now() + interval '1 minute')"
            )
        spool = Spool(store, 1 << 30)
        await spool.load()
        checkpoints = Checkpoints(store)
        await checkpoints.record_intent("t/alerts/dlp", "next", fence=Fence("t/alerts/dlp", "a", 2))
        records = [{"_id": "1"}]
        commit = checkpoints.page_commit("t/alerts/dlp", records, IteratorMark())
        with pytest.raises(LeaseLostError, match="lease of t/alerts/dlp lost"):
            await spool.append("t/alerts/dlp", records, commit=commit, fence=Fence("t/alerts/dlp", "a", 1))
        assert (await spool.stats())["pages"] == 0
        state = await checkpoints.state("t/alerts/dlp")
        assert state is not None and state.pending == "next"


async def test_a_consumer_finds_pages_another_process_appended(postgres_url: str) -> None:
    """Two stores on one database: a waiting consumer of one gets the page the other appends, and a
    full producer resumes when the other acknowledges."""
    async with (
        await open_url(postgres_url, STATE_MIGRATIONS) as one,
        await open_url(postgres_url, STATE_MIGRATIONS) as two,
    ):
        producer, consumer = Spool(one, max_bytes=1), Spool(two, max_bytes=1 << 30)
        for spool in (producer, consumer):
            await spool.load()
            await spool.set_consumers({"c": {"s"}})
        waiting = asyncio.create_task(consumer.next_page("c", timeout=20))
        seq = await producer.append("s", [{"_id": "1"}])
        page = await waiting
        assert page is not None and page.seq == seq
        assert producer.full
        await consumer.ack("c", seq)
        async with asyncio.timeout(20):
            await producer.wait_for_space()
        assert producer.used_bytes == 0


# The schema ce-daemon wrote before the store protocol (spool, core and dead letters version 1), with
# one page, an offset, an iterator checkpoint and a dead letter in it.
RELEASED_SCHEMA = """
CREATE TABLE schema_migrations (
    component TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,
    PRIMARY KEY (component, version)
) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE spool_pages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, count INTEGER NOT NULL,
    first_id TEXT, last_id TEXT, bytes INTEGER NOT NULL, created_at REAL NOT NULL,
    codec TEXT NOT NULL, body BLOB NOT NULL
);
CREATE INDEX spool_pages_by_stream ON spool_pages (stream, seq);
CREATE TABLE spool_offsets (
    consumer TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (consumer, stream)
) WITHOUT ROWID;
CREATE INDEX spool_offsets_by_stream ON spool_offsets (stream, seq);
CREATE TABLE spool_streams (stream TEXT PRIMARY KEY, first_subscribed_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE spool_iterators (
    iterator_key TEXT PRIMARY KEY, index_name TEXT,
    pending TEXT NOT NULL DEFAULT 'none' CHECK (pending IN ('none', 'next')),
    first_id TEXT, last_id TEXT, count INTEGER NOT NULL DEFAULT 0,
    first_pull_done INTEGER NOT NULL DEFAULT 0, timestamp_hwm INTEGER,
    progress TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY, route TEXT NOT NULL, stream TEXT NOT NULL, record_id TEXT NOT NULL,
    reason TEXT NOT NULL, formatted BLOB NOT NULL, record BLOB NOT NULL, created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX dead_letters_route ON dead_letters(route, id);
INSERT INTO schema_migrations VALUES ('core', 1, 0), ('spool', 1, 0), ('deadletters', 1, 0);
INSERT INTO spool_pages VALUES (7, 't/alerts/dlp', 2, '1', '2', 26, 0, 'orjson-zlib1-frames',
    X'78018bae568acf4c51b2523254aad581b18d946a63015e5f0714');
INSERT INTO spool_offsets VALUES ('route', 't/alerts/dlp', 7, 0);
INSERT INTO spool_streams VALUES ('t/alerts/dlp', 0);
INSERT INTO spool_iterators VALUES ('t/alerts/dlp', 'idx', 'none', '1', '2', 2, 1, NULL, '{}', 0);
INSERT INTO dead_letters VALUES (4, 'route', 't/alerts/dlp', '9', 'refused', X'00', X'7b7d', 0, 1);
"""


async def test_a_hung_statement_ends_in_an_error(postgres_url: str) -> None:
    """A statement the server does not answer within the command timeout raises, it does not hang."""
    async with await open_url(postgres_url, command_timeout=0.5) as store:
        with pytest.raises(StoreError, match="no answer in time"):
            async with store.read() as tx:
                await tx.fetchval("SELECT pg_sleep(30)")
        assert await store.get_meta("x") is None  # the pool recovers


async def test_waiting_for_a_pooled_connection_is_bounded(postgres_url: str) -> None:
    """With every pooled connection held, one more transaction raises after the timeout."""
    async with await open_url(postgres_url, command_timeout=0.5) as store:
        held = [store.read() for _ in range(POOL_SIZE)]
        for reader in held:
            await reader.__aenter__()
        try:
            with pytest.raises(StoreError, match="no answer in time"):
                async with store.transaction():
                    pass
        finally:
            for reader in held:
                await reader.__aexit__(None, None, None)


async def test_a_held_migration_lock_is_waited_for_a_bounded_time(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node stuck holding the migration lock makes the others fail with a message, not hang."""
    monkeypatch.setattr(postgres, "MIGRATION_LOCK_WAIT", 1.0)
    async with await open_url(postgres_url, migrate=False) as holder, holder.read() as tx:
        await tx.fetchval("SELECT pg_advisory_lock(:key)", {"key": postgres._MIGRATION_LOCK})
        with pytest.raises(StoreError, match="held the schema migration lock"):
            await open_url(postgres_url)
        await tx.fetchval("SELECT pg_advisory_unlock(:key)", {"key": postgres._MIGRATION_LOCK})


async def test_a_commit_whose_connection_is_lost_may_have_been_applied(postgres_url: str) -> None:
    """A COMMIT that gets no answer raises CommitUncertainError, and the store goes on afterwards."""
    async with await open_url(postgres_url) as store, await open_url(postgres_url, migrate=False) as admin:
        with pytest.raises(CommitUncertainError, match="may have been applied"):  # noqa: PT012 - the commit is the subject
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
                backend = await tx.fetchval("SELECT pg_backend_pid()")
                async with admin.transaction() as other:
                    await other.fetchval("SELECT pg_terminate_backend(:pid)", {"pid": backend})
        await store.set_meta("after", "yes")
        assert await store.get_meta("after") == "yes"
