"""The look-back: a separate historical iterator from the start time until it passes the end."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import orjson

from ce_daemon.netskope.records import record_id
from ce_daemon.netskope.simulator import running_simulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.fakes.webhook import FakeWebhook

TOKEN = "lookback-token-0123456789"
SEED = 11
BACKLOG = 600


async def test_lookback_pulls_the_past_once_and_hands_over_to_the_live_iterator(tmp_path: Path) -> None:
    """A 2 h look-back ships the whole backlog, reports 100 %, ends; the live iterator only starts at now."""
    async with running_simulator(
        tokens={TOKEN: None},
        seed=SEED,
        backlog=BACKLOG,
        backlog_span=3600,
        arrival_rate=0,
        page_size=100,
        idle_wait_time=0.2,
        subtypes=["alerts/dlp"],
    ) as sim:
        webhook = FakeWebhook()
        async with webhook as url:
            assert sim.url is not None
            config = {
                "version": 1,
                "state": {"path": str(tmp_path / "state" / "db.sqlite")},
                "health": {"syslog": {"enabled": False}},
                "tenants": [
                    {
                        "name": "sim",
                        "url": sim.url,
                        "token": {"$env": "SIM_TOKEN"},
                        "rate_limit": 20,
                        "lookback": {"start": "2h"},
                    }
                ],
                "logs": {
                    "routes": [
                        {
                            "name": "past",
                            "tenant": "sim",
                            "alerts": ["dlp"],
                            "format": "json",
                            "batch": {"max_wait": "0.1s"},
                            "sink": {"type": "webhook", "url": f"{url}/hook"},
                        }
                    ]
                },
            }
            path = write_pipeline(tmp_path / "pipeline.yaml", config)
            expected = {record_id(SEED, "alerts", "dlp", seq) for seq in range(BACKLOG)}
            async with DaemonProcess(path, env={"SIM_TOKEN": TOKEN}) as daemon:
                done = await daemon.wait_for_event("history.complete", timeout=60)
                assert done["records"] == BACKLOG
                await webhook.wait_until(lambda: expected <= {r["_id"] for r in webhook.records}, timeout=60)
                status = subprocess.run(
                    [sys.executable, "-m", "ce_daemon", "status", "-c", str(path), "--json"],
                    capture_output=True,
                    check=True,
                    timeout=30,
                )
                components = {c["name"]: c for c in orjson.loads(status.stdout)["components"]}
                history = components["history:sim/alerts/dlp"]
                assert history["counters"]["percent"] == 100.0
                assert history["detail"] == "look-back complete"
                daemon.signal(signal.SIGTERM)
                assert await daemon.wait(30) == 0
            shipped = [r["_id"] for r in webhook.records]
            assert (
                len(shipped) == len(set(shipped)) == BACKLOG
            )  # the live iterator did not ship the past again
            operations = {(p.index.endswith("_history"), p.operation) for p in sim.served("alerts", "dlp")}
            assert (True, "next") in operations  # the look-back paged through with `next`
