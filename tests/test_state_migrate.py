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
from ce_daemon.store import open_url
from ce_daemon.store.sqlite import exclusive_lock
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
