"""What an operator relies on beyond start/reload/stop: the watchdog, the heartbeat, a forced exit."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ce_daemon.netskope.simulator import TenantSimulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.fakes.webhook import FakeWebhook
from ce_daemon.testing.pipelines import backlog_simulator, pipeline_config
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
        health = {"interval": "300ms", "syslog": {"target": syslog.target}}
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
