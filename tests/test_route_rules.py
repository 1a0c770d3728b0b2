"""A route's rules end to end: its filter and its mute windows decide what ships, and both are counted."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ce_webhook.fake import FakeWebhook

from ce_daemon.simulator.records import RecordFactory
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_simulator, pipeline_config, route_counters

TOKEN = "rules-token-0123456789"
SEED = 5
BACKLOG = 400


async def test_filter_and_active_mute_decide_what_ships(tmp_path: Path) -> None:
    """Only records matching the filter and outside an active mute ship; an expired mute changes nothing."""
    now = datetime.now(UTC)
    factory = RecordFactory(SEED)
    records = [factory.make("alerts", "dlp", seq, 0) for seq in range(BACKLOG)]
    wanted = [r for r in records if r.get("severity") in ("high", "critical")]
    muted = [r for r in wanted if str(r.get("user", "")).startswith(("a", "e"))]
    expected = {r["_id"] for r in wanted} - {r["_id"] for r in muted}
    assert expected and muted and len(wanted) < BACKLOG  # the data exercises all three outcomes
    route = {
        "name": "rules",
        "tenant": "sim",
        "alerts": ["dlp"],
        "format": "json",
        "filter": {"severity": {"$in": ["high", "critical"]}},
        "mute": [
            {
                "name": "change-window",
                "start": (now - timedelta(hours=1)).isoformat(),
                "end": (now + timedelta(hours=1)).isoformat(),
                "filter": {"user": {"$regex": "^[ae]"}},
            },
            {
                "name": "last-week",
                "start": (now - timedelta(days=8)).isoformat(),
                "end": (now - timedelta(days=7)).isoformat(),
            },
        ],
        "batch": {"max_wait": "0.1s"},
    }
    async with backlog_simulator(TOKEN, BACKLOG, seed=SEED, page_size=100, rate_limit=20) as sim:
        webhook = FakeWebhook()
        async with webhook as url:
            assert sim.url is not None
            route["sink"] = {"type": "webhook", "url": f"{url}/hook"}
            path = write_pipeline(
                tmp_path / "pipeline.yaml", pipeline_config(tmp_path, sim.url, [route], rate_limit=20)
            )
            async with DaemonProcess(path, env={"SIM_TOKEN": TOKEN}) as daemon:
                await webhook.wait_until(lambda: expected <= {r["_id"] for r in webhook.records}, timeout=60)
                daemon.signal(signal.SIGTERM)
                assert await daemon.wait(30) == 0
    assert {r["_id"] for r in webhook.records} == expected
    # the daemon is stopped: `status` answers from the snapshot it saved at the end, with final counters
    counters = await route_counters(path, "rules", env={})
    assert counters["received"] == BACKLOG
    assert counters["filtered"] == BACKLOG - len(wanted)
    assert counters["muted"] == len(muted)
    assert counters["sent"] == len(expected)


async def test_json_route_sends_the_selected_and_renamed_fields(tmp_path: Path) -> None:
    """`fields` on a JSON route sends just those fields, renamed where asked."""
    route = {
        "name": "slim",
        "tenant": "sim",
        "alerts": ["dlp"],
        "format": "json",
        "batch": {"max_wait": "0.1s"},
        "fields": ["_id", {"name": "who", "mapping_field": "user"}, "severity"],
    }
    factory = RecordFactory(SEED)
    expected = {
        r["_id"]: {
            k: v
            for k, v in {"_id": r["_id"], "who": r.get("user"), "severity": r.get("severity")}.items()
            if v is not None
        }
        for r in (factory.make("alerts", "dlp", seq, 0) for seq in range(50))
    }
    async with backlog_simulator(TOKEN, 50, seed=SEED, rate_limit=20) as sim:
        webhook = FakeWebhook()
        async with webhook as url:
            assert sim.url is not None
            route["sink"] = {"type": "webhook", "url": f"{url}/hook"}
            path = write_pipeline(
                tmp_path / "pipeline.yaml", pipeline_config(tmp_path, sim.url, [route], rate_limit=20)
            )
            async with DaemonProcess(path, env={"SIM_TOKEN": TOKEN}) as daemon:
                await webhook.wait_until(lambda: len(webhook.records) >= len(expected), timeout=60)
                daemon.signal(signal.SIGTERM)
                assert await daemon.wait(30) == 0
    assert {r["_id"]: r for r in webhook.records} == expected
