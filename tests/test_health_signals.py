"""What an operator relies on beyond start/reload/stop: the watchdog, the heartbeat, a forced exit, and
route health that tells the truth (dead letters, a sink down, a sink that never delivered)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from ce_webhook.fake import FakeWebhook

from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_simulator, pipeline_config, route_when
from ce_daemon.testing.sockets import NotifySocket, SyslogReceiver

TOKEN = "health-token-0123456789"


@pytest.fixture
async def simulator() -> AsyncIterator[TenantSimulator]:
    async with backlog_simulator(TOKEN, 200) as sim:
        yield sim


def pipeline(tmp_path: Path, url: str, sink: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """One JSON route of dlp alerts into ``sink``; a stop may drain 30 s (the forced-exit test needs it)."""
    route = {"name": "r", "tenant": "sim", "alerts": ["dlp"], "format": "json", "sink": sink}
    return pipeline_config(tmp_path, url, [route], **{"shutdown_grace": "30s", **overrides})


async def test_watchdog_pings_while_components_make_progress(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """With WATCHDOG_USEC set, the daemon sends WATCHDOG=1 at half the interval once READY."""
    assert simulator.url is not None
    config = pipeline(tmp_path, simulator.url, {"type": "file", "path": "out.ndjson"})
    path = write_pipeline(tmp_path / "pipeline.yaml", config)
    async with NotifySocket(tmp_path) as notify:
        env = {**notify.env, "WATCHDOG_USEC": "400000", "SIM_TOKEN": TOKEN}
        async with DaemonProcess(path, env=env) as daemon:
            await notify.wait_for("READY=1", timeout=30)
            await notify.wait_for("WATCHDOG=1", timeout=10)
            await notify.wait_for("WATCHDOG=1", timeout=10)  # and again: it keeps pinging
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0


async def test_heartbeat_goes_to_syslog_every_interval(tmp_path: Path, simulator: TenantSimulator) -> None:
    """Every health.interval a heartbeat with the generation and component counts reaches syslog."""
    assert simulator.url is not None
    async with SyslogReceiver("udp") as syslog:
        health = {"interval": "1s", "syslog": {"target": syslog.target}}
        config = pipeline(tmp_path, simulator.url, {"type": "file", "path": "out.ndjson"}, health=health)
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={"SIM_TOKEN": TOKEN}) as daemon:
            beat = await syslog.wait_for("event=health.heartbeat", timeout=30)
            assert "gen=1" in beat and "components_ok=" in beat
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0


async def test_second_sigterm_forces_exit_while_draining(tmp_path: Path, simulator: TenantSimulator) -> None:
    """A drain stuck on a sink that never answers ends at once, exit 1, on a second SIGTERM."""
    assert simulator.url is not None
    webhook = FakeWebhook()
    async with webhook as url:
        webhook.hold_next(1000)  # the sink accepts connections but never answers
        config = pipeline(tmp_path, simulator.url, {"type": "webhook", "url": f"{url}/hook", "timeout": 600})
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        env = {"SIM_TOKEN": TOKEN}
        async with NotifySocket(tmp_path) as notify, DaemonProcess(path, env={**notify.env, **env}) as d:
            await notify.wait_for("READY=1", timeout=30)
            await webhook.wait_until(lambda: webhook.held > 0, timeout=30)
            d.signal(signal.SIGTERM)
            await notify.wait_for("STOPPING=1", timeout=10)
            d.signal(signal.SIGTERM)
            assert await d.wait(15) == 1  # well inside the 30 s grace: forced, not drained
            assert d.events("daemon.forced_exit")
        webhook.release_held()


# -- health that tells the truth ----------------------------------------------------------------------


class RefusingWebhook(FakeWebhook):
    """A webhook receiver that refuses every delivery for good (400) while ``refusing``."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing = True
        self.refused = 0

    async def intercept(self, request: web.Request) -> web.Response | None:
        if not self.refusing:
            return await super().intercept(request)
        self.refused += 1
        await self.record(request, b"", 400)
        return web.Response(status=400, text='{"error": "schema mismatch"}', content_type="application/json")


@contextlib.asynccontextmanager
async def shipping_to(tmp_path: Path, hook: FakeWebhook) -> AsyncIterator[Path]:
    """The daemon, ready, shipping route `r` to ``hook``; its pipeline file. Stopped (exit 0) afterwards.

    The tenant's dlp alerts keep arriving (a backlog of 40, then 20 a second); the route sends batches
    of at most 10 records and retries a failed one every 50 ms.
    """
    async with backlog_simulator(TOKEN, 40, arrival_rate=20) as sim, hook as url:
        assert sim.url is not None
        config = pipeline(tmp_path, sim.url, {"type": "webhook", "url": f"{url}/hook"})
        config["logs"]["routes"][0].update(
            batch={"max_records": 10, "max_wait": "0.2s"}, retry_max_delay="0.05s"
        )
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={"SIM_TOKEN": TOKEN}) as daemon:
            await daemon.wait_for_event("daemon.ready")
            yield path
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0


async def test_a_route_whose_batches_are_all_refused_is_degraded_until_they_deliver(tmp_path: Path) -> None:
    """Every batch dead-lettered: degraded, saying so and why; the sink accepting again: ok."""
    hook = RefusingWebhook()
    async with shipping_to(tmp_path, hook) as path:
        await hook.wait_until(lambda: hook.refused >= 3)
        refused = await route_when(path, "r", lambda r: r["state"] == "degraded")
        hook.refusing = False
        recovered = await route_when(path, "r", lambda r: r["state"] == "ok")
    assert refused["counters"]["sent"] == 0 and refused["counters"]["dead_lettered"] > 0
    assert "dead-lettered, none delivered yet" in refused["detail"]
    assert "schema mismatch" in refused["detail"]  # the sink's own reason
    assert recovered["counters"]["sent"] > 0


async def test_lag_keeps_growing_while_the_sink_is_down(tmp_path: Path) -> None:
    """Once the sink fails a batch for good and all, `lag_s` read from `status` still rises."""
    hook = FakeWebhook()
    async with shipping_to(tmp_path, hook) as path:
        await hook.wait_until(lambda: len(hook.records) >= 40)
        hook.fail_next(1_000_000, 503)
        down = await route_when(path, "r", lambda r: r["state"] == "degraded")
        later = await route_when(path, "r", lambda r: r["counters"]["lag_s"] > down["counters"]["lag_s"])
    assert later["state"] == "degraded"
    assert later["counters"]["sent"] == down["counters"]["sent"]  # nothing went through meanwhile


async def test_a_sink_that_never_delivered_says_so(tmp_path: Path) -> None:
    """A sink failing from the first batch: degraded, 'nothing delivered yet', lag from the oldest record."""
    hook = FakeWebhook()
    hook.fail_next(1_000_000, 503)
    async with shipping_to(tmp_path, hook) as path:
        stuck = await route_when(path, "r", lambda r: r["state"] == "degraded")
    assert "nothing delivered yet" in stuck["detail"]
    assert stuck["counters"]["sent"] == 0
    assert stuck["counters"]["lag_s"] > 0  # the backlog starts two hours back
