"""`ce-daemon state migrate`: an installation moves from SQLite to PostgreSQL without re-shipping anything."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from ce_daemon.netskope.subtypes import DataKind
from ce_daemon.spool import SPOOL_MIGRATIONS
from ce_daemon.store import Migration, StoreError, open_url
from ce_daemon.store.sqlite import exclusive_lock
from ce_daemon.store.transfer import CHUNK_ROWS, Copied, copy_state
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_ids, backlog_simulator, pipeline_config, run_cli

TOKEN = "state-migrate-token-0123456789"
ENV = {"SIM_TOKEN": TOKEN}
STREAMS: tuple[tuple[DataKind, str], ...] = (("alerts", "dlp"), ("events", "page"))
BACKLOG = 1500  # per stream, pages of 100: the first run ships only part of it


def pipeline(tmp_path: Path, sim_url: str, state: dict[str, Any]) -> dict[str, Any]:
    """One JSON route of both streams into a file, at 10 requests/s, on ``state``."""
    route = {
        "name": "r",
        "tenant": "sim",
        "alerts": ["dlp"],
        "events": ["page"],
        "format": "json",
        "batch": {"max_records": 150, "max_wait": "0.2s"},
        "sink": {"type": "file", "path": "out/r.ndjson"},
    }
    logging = {"level": "debug", "format": "json"}
    config = pipeline_config(tmp_path, sim_url, [route], rate_limit=10, logging=logging)
    return {**config, "state": state}


def shipped(tmp_path: Path) -> Counter[str]:
    """How many times each ``_id`` reached the sink file."""
    lines = (tmp_path / "out" / "r.ndjson").read_bytes().splitlines()
    return Counter(orjson.loads(line)["_id"] for line in lines)


@pytest.mark.timeout(180)
async def test_a_move_to_postgresql_neither_reships_nor_skips(tmp_path: Path, postgres_url: str) -> None:
    """Run on SQLite until some pages shipped, stop, migrate, run on PostgreSQL: every `_id` exactly once."""
    database = tmp_path / "state" / "db.sqlite"
    config = tmp_path / "pipeline.yaml"
    async with backlog_simulator(TOKEN, BACKLOG, STREAMS, seed=3, page_size=100, rate_limit=10) as sim:
        assert sim.url is not None
        expected = {i for kind, subtype in STREAMS for i in backlog_ids(sim, kind, subtype, BACKLOG)}
        write_pipeline(config, pipeline(tmp_path, sim.url, {"path": str(database)}))
        async with DaemonProcess(config, env=ENV) as daemon:
            await daemon.wait_for_event("route.first_batch_shipped", timeout=40)
            await daemon.wait_for_event("poller.page_committed", timeout=40, count=4)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
        before = shipped(tmp_path)
        assert 0 < len(before) < len(expected)

        code, out = await run_cli(
            "state", "migrate", "--from", f"sqlite://{database}", "--to", postgres_url, env={}
        )
        assert code == 0, out
        assert "of spool_pages" in out and "of spool_offsets" in out and "of spool_iterators" in out

        write_pipeline(config, pipeline(tmp_path, sim.url, {"path": str(database), "url": postgres_url}))
        async with DaemonProcess(config, env=ENV, arguments=("--node-name", "after-move")) as daemon:
            async with asyncio.timeout(60):
                while set(shipped(tmp_path)) < expected:  # noqa: ASYNC110 - a file another process writes
                    await asyncio.sleep(0.2)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
        # It ran as a cluster node: the tenant and the route under leases of its own.
        held = {(line["node"], line["unit"]) for line in daemon.events("cluster.lease_acquired")}
        assert held == {("after-move", "tenant:sim"), ("after-move", "route:r")}, held
    counts = shipped(tmp_path)
    assert set(counts) == expected
    assert [i for i, n in counts.items() if n != 1] == []


async def test_a_target_holding_state_is_refused_unless_forced(tmp_path: Path, postgres_url: str) -> None:
    """A second migrate into the same database is refused naming what it holds; --force replaces it."""
    source = f"sqlite://{tmp_path / 'state.db'}"
    async with await open_url(source) as store:
        await store.set_meta("install", "x")
    code, out = await run_cli("state", "migrate", "--from", source, "--to", postgres_url, env={})
    assert code == 0, out
    code, out = await run_cli("state", "migrate", "--from", source, "--to", postgres_url, env={})
    assert code == 1 and "already holds state: meta (1); give --force to replace it" in out, out
    code, out = await run_cli("state", "migrate", "--from", source, "--to", postgres_url, "--force", env={})
    assert code == 0 and "copied         1 row(s) of meta" in out, out


async def test_a_source_in_use_or_missing_is_refused(tmp_path: Path, postgres_url: str) -> None:
    """No copy of a state a daemon holds (its lock), nor of a SQLite file that does not exist."""
    database = tmp_path / "state.db"
    code, out = await run_cli(
        "state", "migrate", "--from", f"sqlite://{database}", "--to", postgres_url, env={}
    )
    assert code == 1 and f"no state database at {database}" in out, out
    assert not database.exists()
    async with await open_url(f"sqlite://{database}"):
        pass
    with exclusive_lock(database):
        code, out = await run_cli(
            "state", "migrate", "--from", f"sqlite://{database}", "--to", postgres_url, env={}
        )
    assert code == 1 and "another ce-daemon" in out, out


THREATS = (Migration("threats", 1, ("CREATE TABLE threats (id {id}, value {text} NOT NULL)",)),)


async def sqlite_state(tmp_path: Path, migrations: tuple[Migration, ...] = SPOOL_MIGRATIONS) -> str:
    """The URL of a SQLite state with ``migrations`` applied."""
    url = f"sqlite://{tmp_path / 'source' / 'state.db'}"
    async with await open_url(url, migrations):
        pass
    return url


async def test_a_component_this_build_lacks_is_refused(tmp_path: Path, postgres_url: str) -> None:
    """A job's tables the running build cannot plan (job not installed) are never skipped silently."""
    source = await sqlite_state(tmp_path, (*SPOOL_MIGRATIONS, *THREATS))
    with pytest.raises(StoreError, match=r"threats \(schema 1\) is not known to this ce-daemon"):
        await copy_state(source, postgres_url, SPOOL_MIGRATIONS)


async def test_a_component_at_another_version_is_refused(tmp_path: Path, postgres_url: str) -> None:
    """A source whose component is at another schema version than this build's is refused, naming both."""
    source = await sqlite_state(tmp_path, (*SPOOL_MIGRATIONS, *THREATS))
    newer = (*THREATS, Migration("threats", 2, ("ALTER TABLE threats ADD COLUMN seen {int}",)))
    with pytest.raises(StoreError, match="threats is at schema 1 in the source, 2 here"):
        await copy_state(source, postgres_url, (*SPOOL_MIGRATIONS, *newer))


async def test_a_source_that_is_no_state_is_refused_untouched(tmp_path: Path, postgres_url: str) -> None:
    """A mistyped source (an empty database) is refused, and nothing is created in it."""
    target = f"sqlite://{tmp_path / 'target.db'}"
    with pytest.raises(StoreError, match="is not a ce-daemon state"):
        await copy_state(postgres_url, target, SPOOL_MIGRATIONS)
    async with await open_url(postgres_url, migrate=False) as source, source.read() as tx:
        assert await tx.fetchval("SELECT to_regclass('schema_migrations')") is None


async def test_ids_past_2_to_the_31_continue_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """A spool whose seqs passed 2^31 moves: the target's next seq follows the source's last one."""
    source = await sqlite_state(tmp_path)
    seq = 2**31 + 7
    async with await open_url(source, SPOOL_MIGRATIONS) as store, store.transaction() as tx:
        await tx.execute(
            "INSERT INTO spool_pages (seq, stream, count, bytes, created_at, codec, body)"
            " VALUES (:seq, 's', 1, 1, 0, 'c', :body)",
            {"seq": seq, "body": b"x"},
        )
    await copy_state(source, postgres_url, SPOOL_MIGRATIONS)
    async with await open_url(postgres_url, SPOOL_MIGRATIONS) as store, store.transaction() as tx:
        following = await tx.fetchval(
            "INSERT INTO spool_pages (stream, count, bytes, created_at, codec, body)"
            " VALUES ('s', 1, 1, 0, 'c', :body) RETURNING seq",
            {"body": b"y"},
        )
    assert following == seq + 1


async def test_a_failed_copy_leaves_the_target_as_it_was(tmp_path: Path, postgres_url: str) -> None:
    """Delete, copy and count are one transaction: a row the target refuses undoes the --force delete."""
    source = await sqlite_state(tmp_path)
    async with await open_url(postgres_url, SPOOL_MIGRATIONS) as target:
        await target.set_meta("install", "before")
    async with await open_url(source, SPOOL_MIGRATIONS) as store, store.transaction() as tx:
        # SQLite stores text in an INTEGER column; PostgreSQL refuses it.
        await tx.execute(
            "INSERT INTO spool_offsets (consumer, stream, seq, position) VALUES ('c', 's', 'x', 0)"
        )
    with pytest.raises(StoreError):
        await copy_state(source, postgres_url, SPOOL_MIGRATIONS, force=True)
    async with await open_url(postgres_url, SPOOL_MIGRATIONS) as target:
        assert await target.get_meta("install") == "before"


async def test_a_postgresql_state_with_a_live_node_is_refused(tmp_path: Path, postgres_url: str) -> None:
    """No copy out of (or into) a PostgreSQL state a node is running on."""
    async with await open_url(postgres_url, SPOOL_MIGRATIONS) as store, store.transaction() as tx:
        await tx.execute(
            "INSERT INTO ce_nodes (node, host, pid, version, expires_at)"
            " VALUES ('node-a', 'h', 1, '0', now() + interval '1 minute')"
        )
    target = f"sqlite://{tmp_path / 'target.db'}"
    with pytest.raises(StoreError, match="in use by live node"):
        await copy_state(postgres_url, target, SPOOL_MIGRATIONS)
    with pytest.raises(StoreError, match="in use by live node"):
        await copy_state(await sqlite_state(tmp_path), postgres_url, SPOOL_MIGRATIONS, force=True)


async def test_a_sqlite_target_a_daemon_holds_is_refused(tmp_path: Path, postgres_url: str) -> None:
    """--force never deletes rows under a daemon running on the target SQLite file."""
    source = await sqlite_state(tmp_path)
    target = tmp_path / "target" / "state.db"
    with exclusive_lock(target), pytest.raises(StoreError, match="another ce-daemon"):
        await copy_state(source, f"sqlite://{target}", SPOOL_MIGRATIONS, force=True)


async def test_a_postgresql_source_is_copied_page_by_page(tmp_path: Path, postgres_url: str) -> None:
    """More rows than one chunk, keyed on several columns, arrive once each (keyset pages)."""
    async with await open_url(postgres_url, SPOOL_MIGRATIONS) as store, store.transaction() as tx:
        await tx.executemany(
            "INSERT INTO spool_offsets (consumer, stream, seq, position) VALUES (:c, :s, 1, 0)",
            [{"c": f"c{i % 7}", "s": f"s{i}"} for i in range(CHUNK_ROWS * 2 + 3)],
        )
    copied = await copy_state(postgres_url, f"sqlite://{tmp_path / 'target.db'}", SPOOL_MIGRATIONS)
    assert Copied("spool_offsets", CHUNK_ROWS * 2 + 3) in copied
