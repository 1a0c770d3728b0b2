"""The look-back: a separate historical iterator from the start time until it passes the end."""

from __future__ import annotations

import signal
from pathlib import Path

from ce_webhook.fake import FakeWebhook

from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_ids, backlog_simulator, daemon_status, pipeline_config

TOKEN = "lookback-token-0123456789"
BACKLOG = 600


async def test_lookback_pulls_the_past_once_and_hands_over_to_the_live_iterator(tmp_path: Path) -> None:
    """A 2 h look-back ships the whole backlog, reports 100 %, ends; the live iterator only starts at now."""
    async with backlog_simulator(TOKEN, BACKLOG, page_size=100, rate_limit=20) as sim:
        webhook = FakeWebhook()
        async with webhook as url:
            assert sim.url is not None
            route = {
                "name": "past",
                "tenant": "sim",
                "alerts": ["dlp"],
                "format": "json",
                "batch": {"max_wait": "0.1s"},
                "sink": {"type": "webhook", "url": f"{url}/hook"},
            }
            config = pipeline_config(tmp_path, sim.url, [route], rate_limit=20)
            del config["tenants"][0]["start"]  # the live iterator starts now; the past is the look-back's
            config["tenants"][0]["lookback"] = {"start": "2h"}
            path = write_pipeline(tmp_path / "pipeline.yaml", config)
            expected = set(backlog_ids(sim, "alerts", "dlp", BACKLOG))
            async with DaemonProcess(path, env={"SIM_TOKEN": TOKEN}) as daemon:
                done = await daemon.wait_for_event("history.complete", timeout=60)
                assert done["records"] == BACKLOG
                await webhook.wait_until(lambda: expected <= {r["_id"] for r in webhook.records}, timeout=60)
                components = {c["name"]: c for c in (await daemon_status(path, env={}))["components"]}
                history = components["history:sim/alerts/dlp"]
                assert history["counters"]["percent"] == 100.0
                assert (history["state"], history["detail"]) == ("stopped", "look-back complete")
                daemon.signal(signal.SIGTERM)
                assert await daemon.wait(30) == 0
            shipped = [r["_id"] for r in webhook.records]
            assert (
                len(shipped) == len(set(shipped)) == BACKLOG
            )  # the live iterator did not ship the past again
            operations = {(p.index.endswith("_history"), p.operation) for p in sim.served("alerts", "dlp")}
            assert (True, "next") in operations  # the look-back paged through with `next`
