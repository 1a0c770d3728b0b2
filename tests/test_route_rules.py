"""A route's rules end to end: its filter and its mute windows decide what ships, and both are counted."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from ce_daemon.netskope.records import RecordFactory
from ce_daemon.netskope.simulator import running_simulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.fakes.webhook import FakeWebhook

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

    async with running_simulator(
        tokens={TOKEN: None},
        seed=SEED,
        backlog=BACKLOG,
        arrival_rate=0,
        page_size=100,
        idle_wait_time=0.2,
        subtypes=["alerts/dlp"],
    ) as sim:
        webhook = FakeWebhook()
        async with webhook as url:
            assert sim.url is not None
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
                "sink": {"type": "webhook", "url": f"{url}/hook"},
            }
            config = {
                "version": 1,
                "state": {"path": str(tmp_path / "state" / "db.sqlite")},
                "health": {"syslog": {"enabled": False}},
                "tenants": [
                    {
                        "name": "sim",
                        "url": sim.url,
                        "token": {"$env": "SIM_TOKEN"},
                        "start": "2h",
                        "rate_limit": 20,
                    }
                ],
                "logs": {"routes": [route]},
            }
            path = write_pipeline(tmp_path / "pipeline.yaml", config)
            async with DaemonProcess(path, env={"SIM_TOKEN": TOKEN}) as daemon:
                await webhook.wait_until(lambda: expected <= {r["_id"] for r in webhook.records}, timeout=60)
                daemon.signal(signal.SIGTERM)
                assert await daemon.wait(30) == 0
            # with the daemon stopped, `status` answers from the snapshot it saved at the end
            status = subprocess.run(
                [sys.executable, "-m", "ce_daemon", "status", "-c", str(path), "--json"],
                capture_output=True,
                check=True,
                timeout=30,
            )
            assert {r["_id"] for r in webhook.records} == expected
            counters = next(
                c for c in orjson.loads(status.stdout)["components"] if c["name"] == "route:rules"
            )["counters"]
            assert counters["received"] == BACKLOG
            assert counters["filtered"] == BACKLOG - len(wanted)
            assert counters["muted"] == len(muted)
            assert counters["sent"] == len(expected)
