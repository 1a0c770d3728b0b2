"""Dead letters: what a target refuses for good is kept with the reason; `ce-daemon dlq list|replay|purge`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from ce_elastic.fake import FakeElasticsearch
from ce_webhook.fake import FakeWebhook

from ce_daemon.logs.deadletter import DEADLETTER_MIGRATIONS, DeadLetters
from ce_daemon.logs.formatter import RecordFormatter
from ce_daemon.logs.mapping import Mapping
from ce_daemon.simulator.records import RecordFactory
from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.spool import SPOOL_MIGRATIONS
from ce_daemon.store import open_url
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import (
    backlog_ids,
    backlog_simulator,
    pipeline_config,
    route_counters,
    run_cli,
)
from ce_daemon.testing.state import open_test_store

TOKEN = "dlq-token-0123456789"
ENV = {"SIM_TOKEN": TOKEN}
RATE = 20
_LISTED = re.compile(r"^\s*(\d+) \S+ (\S+) (\S+) id=(\S+) attempts=(\d+): (.*)$")


# -- helpers ----------------------------------------------------------------------------------------


def pipeline(tmp_path: Path, url: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    """A pipeline reading the simulator's backlog (``start: 2h``) into ``routes``."""
    logging = {"level": "info", "format": "json"}
    return pipeline_config(tmp_path, url, routes, rate_limit=RATE, logging=logging)


def webhook_route(name: str, url: str, **extra: Any) -> dict[str, Any]:
    """A CEF route on alerts/dlp to a webhook."""
    return {
        "name": name,
        "tenant": "sim",
        "alerts": ["dlp"],
        "format": "cef",
        "sink": {"type": "webhook", "url": url},
        **extra,
    }


async def cli(*args: str) -> tuple[int, str]:
    """Run ``python -m ce_daemon ARGS`` without blocking the event loop (the fakes live in it)."""
    return await run_cli(*args, env=ENV)


async def dlq_list(config: Path, *extra: str) -> list[dict[str, Any]]:
    """``ce-daemon dlq list`` parsed: one dict per dead letter; checks the total line agrees."""
    code, out = await cli("dlq", "list", "-c", str(config), "--limit", "100000", *extra)
    assert code == 0, out
    rows = []
    for line in out.splitlines():
        match = _LISTED.match(line)
        if match:
            number, route, stream, rid, attempts, reason = match.groups()
            rows.append(
                {
                    "id": int(number),
                    "route": route,
                    "stream": stream,
                    "record_id": rid,
                    "attempts": int(attempts),
                    "reason": reason,
                }
            )
    assert f"{len(rows)} dead letter(s)" in out, out
    return rows


def simulator(backlog: int, page_size: int) -> AbstractAsyncContextManager[TenantSimulator]:
    """The tenant: ``backlog`` alerts/dlp records, nothing arriving later."""
    return backlog_simulator(TOKEN, backlog, page_size=page_size, rate_limit=RATE)


@pytest.fixture
async def webhook() -> AsyncIterator[FakeWebhook]:
    fake = FakeWebhook()
    async with fake:
        yield fake


async def seed_dead_letters(config: Path, route: str, count: int, reason: str) -> list[dict[str, Any]]:
    """Store ``count`` refused alerts/dlp records of ``route`` as the route itself would (CEF formatted)."""
    factory = RecordFactory(7, "sim")
    formatter = RecordFormatter("cef", Mapping.builtin(), "sim")
    records = [factory.make("alerts", "dlp", seq, 1_700_000_000 + seq) for seq in range(count)]
    state = config.parent / "state" / "db.sqlite"
    async with await open_test_store(state, (*SPOOL_MIGRATIONS, *DEADLETTER_MIGRATIONS)) as store:
        dead = DeadLetters(store)
        for record in records:
            formatted = formatter.format(record, "alerts", "dlp")
            assert formatted is not None
            await dead.add(route, "sim/alerts/dlp", record, formatted, reason)
    return records


def offline_pipeline(tmp_path: Path, routes: list[dict[str, Any]]) -> Path:
    """A pipeline file for the `dlq` command alone (no daemon runs; the tenant is never asked)."""
    return write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, "http://127.0.0.1:9", routes))


# -- the daemon dead-letters what the target refuses ---------------------------------------------


async def test_refused_batches_are_dead_lettered_with_the_reason(
    tmp_path: Path, webhook: FakeWebhook
) -> None:
    """Batches a target refuses with 400 are dead-lettered with its answer; the route goes on shipping."""
    backlog, refused_requests = 200, 2
    # One page is one batch (50 and 50): the two refused requests are exactly the first 100 records.
    webhook.fail_next(refused_requests, 400, body=b'{"error": "field user is not allowed"}')
    async with simulator(backlog, page_size=50) as sim:
        assert sim.url is not None and webhook.url is not None
        route = webhook_route("hook", webhook.url + "/hook", batch={"max_records": 50, "max_wait": "5s"})
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, [route]))
        async with DaemonProcess(config, env=ENV) as daemon:
            await webhook.wait_until(lambda: len(webhook.records) >= backlog - 50 * refused_requests)
            counters = await route_counters(config, "hook", env=ENV)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

    ids = backlog_ids(sim, "alerts", "dlp", backlog)
    assert [r["id"] for r in webhook.records] == ids[100:]
    letters = await dlq_list(config)
    assert [row["record_id"] for row in letters] == ids[:100]
    assert {row["route"] for row in letters} == {"hook"}
    assert {row["stream"] for row in letters} == {"sim/alerts/dlp"}
    assert all(
        "HTTP 400" in row["reason"] and "field user is not allowed" in row["reason"] for row in letters
    )
    assert counters["dead_lettered"] == 100
    assert counters["sent"] == 100
    assert counters["received"] == 200


async def test_records_refused_one_by_one_are_dead_lettered_alone(tmp_path: Path) -> None:
    """Items Elasticsearch refuses with 400 in a bulk answer are dead-lettered; the rest are indexed."""
    backlog = 300
    elastic = FakeElasticsearch()
    async with (
        simulator(backlog, page_size=100) as sim,
        elastic as elastic_url,
    ):
        assert sim.url is not None
        ids = backlog_ids(sim, "alerts", "dlp", backlog)
        refused = set(ids[5::30])  # ten records spread over every page
        elastic.reject_items(len(refused), 400, when=lambda _index, doc_id: doc_id in refused)
        route = {
            "name": "es",
            "tenant": "sim",
            "alerts": ["dlp"],
            "format": "json",
            "sink": {"type": "elasticsearch", "url": elastic_url},
        }
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, [route]))
        async with DaemonProcess(config, env=ENV) as daemon:
            await elastic.wait_until(lambda: len(elastic.all_documents) >= backlog - len(refused))
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

        assert set(elastic.all_documents) == set(ids) - refused
        letters = await dlq_list(config, "--route", "es")
        assert {row["record_id"] for row in letters} == refused
        assert len(letters) == len(refused)
        assert all("400" in row["reason"] for row in letters)


# -- the `dlq` command -----------------------------------------------------------------------------


async def test_replay_delivers_the_stored_lines_and_empties_the_table(
    tmp_path: Path, webhook: FakeWebhook
) -> None:
    """`dlq replay` sends each dead letter's formatted line, with its id and timestamp, then forgets it."""
    assert webhook.url is not None
    config = offline_pipeline(tmp_path, [webhook_route("hook", webhook.url + "/hook")])
    records = await seed_dead_letters(config, "hook", 30, "HTTP 400: bad field")
    formatter = RecordFormatter("cef", Mapping.builtin(), "sim")

    code, out = await cli("dlq", "replay", "-c", str(config))

    assert code == 0, out
    assert "hook: replayed 30 of 30" in out
    assert [item["id"] for item in webhook.records] == [r["_id"] for r in records]
    assert [item["timestamp"] for item in webhook.records] == [r["timestamp"] for r in records]
    expected = [formatter.format(r, "alerts", "dlp") for r in records]
    assert [item["message"].encode() for item in webhook.records] == expected
    assert await dlq_list(config) == []


async def test_replay_refused_again_keeps_the_letters_and_counts_the_attempt(
    tmp_path: Path, webhook: FakeWebhook
) -> None:
    """A replay the target refuses again exits 1, keeps every letter, and records the new reason."""
    assert webhook.url is not None
    config = offline_pipeline(tmp_path, [webhook_route("hook", webhook.url + "/hook")])
    await seed_dead_letters(config, "hook", 5, "first refusal")
    webhook.fail_next(1, 422, body=b'{"error": "still not acceptable"}')

    code, out = await cli("dlq", "replay", "-c", str(config))

    assert code == 1, out
    letters = await dlq_list(config)
    assert len(letters) == 5
    assert {row["attempts"] for row in letters} == {2}
    assert all(
        "replay failed" in row["reason"] and "still not acceptable" in row["reason"] for row in letters
    )
    assert webhook.records == []


async def test_replay_of_one_route_leaves_the_others(tmp_path: Path, webhook: FakeWebhook) -> None:
    """`dlq replay --route R` replays only R's letters."""
    assert webhook.url is not None
    routes = [webhook_route("one", webhook.url + "/hook"), webhook_route("two", webhook.url + "/hook")]
    config = offline_pipeline(tmp_path, routes)
    await seed_dead_letters(config, "one", 4, "refused")
    await seed_dead_letters(config, "two", 6, "refused")

    code, out = await cli("dlq", "replay", "-c", str(config), "--route", "one")

    assert code == 0, out
    assert len(webhook.records) == 4
    assert {row["route"] for row in await dlq_list(config)} == {"two"}


async def test_list_filters_by_route_and_limits(tmp_path: Path) -> None:
    """`dlq list --route R --limit N` shows R's oldest N letters and R's total."""
    routes = [
        webhook_route("one", "http://127.0.0.1:9/hook"),
        webhook_route("two", "http://127.0.0.1:9/hook"),
    ]
    config = offline_pipeline(tmp_path, routes)
    first = await seed_dead_letters(config, "one", 3, "refused by one")
    await seed_dead_letters(config, "two", 2, "refused by two")

    code, out = await cli("dlq", "list", "-c", str(config), "--route", "one", "--limit", "2")

    assert code == 0, out
    listed = [m.groups() for m in map(_LISTED.match, out.splitlines()) if m]
    assert [(route, rid, reason) for _, route, _, rid, _, reason in listed] == [
        ("one", first[0]["_id"], "refused by one"),
        ("one", first[1]["_id"], "refused by one"),
    ]
    assert "3 dead letter(s)" in out
    assert len(await dlq_list(config)) == 5


async def test_purge_of_one_route_then_of_all(tmp_path: Path) -> None:
    """`dlq purge --route R` deletes R's letters only; `dlq purge` deletes the rest."""
    routes = [
        webhook_route("one", "http://127.0.0.1:9/hook"),
        webhook_route("two", "http://127.0.0.1:9/hook"),
    ]
    config = offline_pipeline(tmp_path, routes)
    await seed_dead_letters(config, "one", 3, "refused")
    await seed_dead_letters(config, "two", 2, "refused")

    code, out = await cli("dlq", "purge", "-c", str(config), "--route", "one")
    assert code == 0, out
    assert "purged 3 dead letter(s)" in out
    assert {row["route"] for row in await dlq_list(config)} == {"two"}

    code, out = await cli("dlq", "purge", "-c", str(config))
    assert code == 0, out
    assert "purged 2 dead letter(s)" in out
    assert await dlq_list(config) == []


async def test_list_and_purge_read_no_secret_but_replay_does(tmp_path: Path) -> None:
    """`dlq list|purge` work with no secret resolvable (state only); `replay`, which sends, needs them."""
    config = offline_pipeline(tmp_path, [webhook_route("one", "http://127.0.0.1:9/hook")])
    await seed_dead_letters(config, "one", 2, "refused")

    code, out = await run_cli("dlq", "list", "-c", str(config), env={})
    assert code == 0, out
    assert "2 dead letter(s)" in out
    code, out = await run_cli("dlq", "replay", "-c", str(config), env={})
    assert code == 78, out
    assert "environment variable SIM_TOKEN is not set" in out
    code, out = await run_cli("dlq", "purge", "-c", str(config), env={})
    assert code == 0, out
    assert "purged 2 dead letter(s)" in out


async def test_list_without_a_state_database_creates_none(tmp_path: Path) -> None:
    """`dlq list` before the daemon ever ran says there is nothing, and leaves no database behind."""
    config = offline_pipeline(tmp_path, [webhook_route("one", "http://127.0.0.1:9/hook")])
    code, out = await cli("dlq", "list", "-c", str(config))
    assert code == 0, out
    assert "0 dead letter(s)" in out
    assert os.listdir(tmp_path) == ["pipeline.yaml"]


@pytest.mark.parametrize("action", ["list", "replay"])
def test_a_file_that_does_not_load_is_told_on_stderr(tmp_path: Path, action: str) -> None:
    """What stands in the way of `dlq` is said on stderr, placed; stdout stays for what it lists."""
    config = offline_pipeline(tmp_path, [webhook_route("one", "http://127.0.0.1:9/hook")])
    config.write_text(config.read_text().replace("state:\n", "state:\n  bogus: 1\n", 1))
    result = subprocess.run(
        [sys.executable, "-m", "ce_daemon", "dlq", action, "-c", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        check=False,
    )
    assert result.returncode == 78
    assert result.stdout == ""
    assert f"{config}:3:3: state.bogus: unknown key 'bogus'" in result.stderr


async def test_a_postgresql_state_is_read_with_its_password_and_never_migrated(
    tmp_path: Path, postgres_url: str
) -> None:
    """`dlq list` resolves `state.password` alone, creates nothing in the database, and says why it fails."""
    config = offline_pipeline(tmp_path, [webhook_route("one", "http://127.0.0.1:9/hook")])
    state = f"state:\n  url: {postgres_url}\n  password: {{$env: PGPW}}\n"
    config.write_text(re.sub(r"state:\n(  .*\n)+", state, config.read_text()))
    code, out = await run_cli("dlq", "list", "-c", str(config), env={})
    assert code == 78 and "state.password" in out and "PGPW" in out, out
    code, out = await run_cli("dlq", "list", "-c", str(config), env={"PGPW": "pw"})
    assert code == 0 and "0 dead letter(s)" in out, out
    async with await open_url(postgres_url, migrate=False) as store:
        assert await store.columns("schema_migrations") == []
    unreachable = state.replace(postgres_url, "postgresql://ce@127.0.0.1:1/nowhere")
    config.write_text(config.read_text().replace(state, unreachable))
    code, out = await run_cli("dlq", "purge", "-c", str(config), env={"PGPW": "pw"})
    assert code == 1 and "dlq purge: cannot connect to the state database" in out, out
    assert "Traceback" not in out and "pw@" not in out
