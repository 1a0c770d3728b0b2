"""The daemon's lifecycle as systemd and an operator see it: notify messages, reload, stop, syslog, status."""

from __future__ import annotations

import contextlib
import signal
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ce_webhook.fake import FakeWebhook

from ce_daemon.logs.deadletter import DEADLETTER_MIGRATIONS
from ce_daemon.simulator.tenant import TenantSimulator, running_simulator
from ce_daemon.spool import SPOOL_MIGRATIONS
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import daemon_status, pipeline_config, route_of, route_when, run_cli
from ce_daemon.testing.sinks import SilentListener, closed_port
from ce_daemon.testing.sockets import NotifySocket, SyslogReceiver
from ce_daemon.testing.state import state_dump

TOKEN = "lifecycle-token-0123456789"


@pytest.fixture
async def simulator() -> AsyncIterator[TenantSimulator]:
    async with running_simulator(
        tokens={TOKEN: None}, backlog=200, arrival_rate=2.0, idle_wait_time=0.2
    ) as sim:
        yield sim


def pipeline(tmp_path: Path, url: str, syslog: str) -> dict[str, Any]:
    """One CEF route to a file; the daemon's health messages go to ``syslog``."""
    route = {
        "name": "alerts",
        "tenant": "sim",
        "alerts": ["dlp", "malware"],
        "format": "cef",
        "sink": {"type": "file", "path": "out/alerts.cef"},
    }
    health = {"interval": "1h", "syslog": {"target": syslog, "format": "local"}}
    return pipeline_config(tmp_path, url, [route], health=health)


def on_sqlite(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` on a SQLite state whatever the test run's backend: the single-daemon file lock guards
    SQLite, while nodes share a PostgreSQL state on purpose (each unit's lease keeps them apart)."""
    return {**config, "state": {"path": config["state"]["path"]}}


async def test_ready_reload_rejected_reload_and_stop(tmp_path: Path, simulator: TenantSimulator) -> None:
    """READY; HUP: RELOADING+MONOTONIC_USEC then READY; a broken file keeps gen 2; TERM: STOPPING, exit 0."""
    async with NotifySocket(tmp_path) as notify, SyslogReceiver("udp") as syslog:
        assert simulator.url is not None
        config = pipeline(tmp_path, simulator.url, syslog.target)
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        env = {**notify.env, "SIM_TOKEN": TOKEN}
        async with DaemonProcess(path, env=env) as daemon:
            # 1. start: READY=1 with a STATUS line naming the generation
            ready = await notify.wait_for("READY=1", timeout=30)
            assert "STATUS=running gen=1" in ready
            await syslog.wait_for("event=daemon.started", timeout=10)

            # 2. a good reload: a new route is added, the existing one keeps running
            config["logs"]["routes"].append(
                {
                    "name": "audit",
                    "tenant": "sim",
                    "events": ["audit"],
                    "format": "json",
                    "sink": {"type": "file", "path": "out/audit.ndjson"},
                }
            )
            write_pipeline(path, config)
            daemon.signal(signal.SIGHUP)
            reloading = await notify.wait_for("RELOADING=1", timeout=10)
            assert "MONOTONIC_USEC=" in reloading  # in the same datagram, as Type=notify-reload requires
            ready2 = await notify.wait_for("STATUS=running gen=2", timeout=30)
            assert "READY=1" in ready2
            applied = await daemon.wait_for_event("daemon.reload_applied")
            assert applied["kept"] >= 2 and applied["started"] >= 2  # route + poller for the audit stream
            await syslog.wait_for("event=daemon.reload_applied", timeout=10)

            # 3. a broken file: rejected, gen 2 keeps running, the reason is in the log, STATUS and syslog
            path.write_text(path.read_text() + "\nbogus_section: 1\n")
            daemon.signal(signal.SIGHUP)
            rejected_status = await notify.wait_for("reload rejected", timeout=10)
            assert "still gen=2" in rejected_status
            rejected = await daemon.wait_for_event("daemon.reload_rejected")
            assert "bogus_section" in rejected["errors"]
            assert "pipeline.yaml:" in rejected["errors"]
            await syslog.wait_for("event=daemon.reload_rejected", timeout=10)

            # 4. stop: STOPPING=1, exit 0
            daemon.signal(signal.SIGTERM)
            await notify.wait_for("STOPPING=1", timeout=10)
            assert await daemon.wait(30) == 0
            await syslog.wait_for("event=daemon.stopping", timeout=10)


async def test_restart_only_setting_is_refused_on_reload(tmp_path: Path, simulator: TenantSimulator) -> None:
    """Changing the state path by reload is refused with a 'restart needed' message."""
    async with NotifySocket(tmp_path) as notify:
        assert simulator.url is not None
        config = pipeline(tmp_path, simulator.url, "udp://127.0.0.1:9")
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={**notify.env, "SIM_TOKEN": TOKEN}) as daemon:
            await notify.wait_for("READY=1", timeout=30)
            config["state"] = {"path": str(tmp_path / "elsewhere" / "db.sqlite")}
            write_pipeline(path, config)
            daemon.signal(signal.SIGHUP)
            rejected = await daemon.wait_for_event("daemon.reload_rejected")
            assert "restart needed" in rejected["reason"] and "state" in rejected["reason"]
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0


async def test_bad_config_at_start_exits_78(tmp_path: Path) -> None:
    """A daemon started on an invalid file exits 78 (EX_CONFIG) and says why."""
    path = tmp_path / "pipeline.yaml"
    path.write_text("tenants: 5\n")
    daemon = DaemonProcess(path)
    await daemon.start()
    assert await daemon.wait(30) == 78
    assert daemon.events("daemon.config_invalid")


async def test_secret_appears_nowhere(tmp_path: Path) -> None:
    """A token given with $env is absent from stdout, syslog, `status` and the state database."""
    secret = "zz-very-secret-token-zz"
    async with (
        running_simulator(tokens={secret: None}, backlog=50, arrival_rate=1.0, idle_wait_time=0.2) as sim,
        NotifySocket(tmp_path) as notify,
        SyslogReceiver("udp") as syslog,
    ):
        assert sim.url is not None
        config = pipeline(tmp_path, sim.url, syslog.target)
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={**notify.env, "SIM_TOKEN": secret}) as daemon:
            await notify.wait_for("READY=1", timeout=30)
            await daemon.wait_for_event("route.first_batch_shipped", timeout=30)
            # awaited, not blocking: the simulator the daemon pulls from runs in this event loop
            code, status = await run_cli("status", "-c", str(path), "--json", env={})  # needs no secret
            assert code == 0, status
            assert '"generation": 1' in status
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
        assert secret not in status
        assert not [line for line in daemon.raw if secret in line]
        assert not [m for m in syslog.messages if secret in m]
        db = tmp_path / "state" / "db.sqlite"
        for file in db.parent.iterdir():
            assert secret.encode() not in file.read_bytes()
        dump = await state_dump(db, (*SPOOL_MIGRATIONS, *DEADLETTER_MIGRATIONS))
        assert secret not in dump


async def test_second_daemon_on_the_same_state_is_refused(tmp_path: Path, simulator: TenantSimulator) -> None:
    """A second daemon on a state database in use exits 1 naming the holder; the first keeps running."""
    async with NotifySocket(tmp_path) as notify:
        assert simulator.url is not None
        path = write_pipeline(
            tmp_path / "pipeline.yaml", on_sqlite(pipeline(tmp_path, simulator.url, "udp://127.0.0.1:9"))
        )
        async with DaemonProcess(path, env={**notify.env, "SIM_TOKEN": TOKEN}) as first:
            await notify.wait_for("READY=1", timeout=30)
            second = DaemonProcess(path, env={"SIM_TOKEN": TOKEN})
            await second.start()
            assert await second.wait(30) == 1
            refused = second.events("daemon.state_unusable")
            assert refused and "another ce-daemon" in refused[0]["error"]
            assert first.process is not None and first.process.returncode is None
            first.signal(signal.SIGTERM)
            assert await first.wait(30) == 0


async def test_reload_moves_the_health_channel(tmp_path: Path, simulator: TenantSimulator) -> None:
    """A reload that changes health.syslog sends the reload message (and later ones) to the new target."""
    async with (
        NotifySocket(tmp_path) as notify,
        SyslogReceiver("udp") as first,
        SyslogReceiver("udp") as second,
    ):
        assert simulator.url is not None
        config = pipeline(tmp_path, simulator.url, first.target)
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={**notify.env, "SIM_TOKEN": TOKEN}) as daemon:
            await first.wait_for("event=daemon.started", timeout=30)
            config["health"]["syslog"]["target"] = second.target
            write_pipeline(path, config)
            daemon.signal(signal.SIGHUP)
            await second.wait_for("event=daemon.reload_applied", timeout=30)
            daemon.signal(signal.SIGTERM)
            await second.wait_for("event=daemon.stopping", timeout=30)
            assert await daemon.wait(30) == 0
        assert not [m for m in first.messages if "reload_applied" in m]


async def test_reload_to_a_syslog_target_no_channel_can_reach_is_rejected(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """A reload naming a malformed syslog target is rejected at its place; the old channel reports it."""
    async with NotifySocket(tmp_path) as notify, SyslogReceiver("udp") as syslog:
        assert simulator.url is not None
        config = pipeline(tmp_path, simulator.url, syslog.target)
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={**notify.env, "SIM_TOKEN": TOKEN}) as daemon:
            await syslog.wait_for("event=daemon.started", timeout=30)
            config["health"]["syslog"]["target"] = "udp://127.0.0.1:99999"
            write_pipeline(path, config)
            daemon.signal(signal.SIGHUP)
            rejected = await daemon.wait_for_event("daemon.reload_rejected")
            await syslog.wait_for("event=daemon.reload_rejected", timeout=10)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    assert "health.syslog.target: syslog target 'udp://127.0.0.1:99999' needs a port" in rejected["errors"]
    assert f"{path}:" in rejected["errors"]
    assert not daemon.events("daemon.failed")


async def test_a_fresh_state_directory_starts_without_a_file_to_tighten(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """Every file the daemon creates beside its database is 0600 from the start: no tightening warning."""
    assert simulator.url is not None
    path = write_pipeline(
        tmp_path / "pipeline.yaml", on_sqlite(pipeline(tmp_path, simulator.url, "udp://127.0.0.1:9"))
    )
    async with DaemonProcess(path, env={"SIM_TOKEN": TOKEN}) as daemon:
        await daemon.wait_for_event("daemon.ready")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
    assert daemon.events("state.file_tightened") == []
    lock = tmp_path / "state" / "db.sqlite.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


# -- a reload is not stricter than a start ------------------------------------------------------------


def with_route(config: dict[str, Any], name: str, port: int, **extra: Any) -> dict[str, Any]:
    """``config`` plus a JSON route of dlp alerts to a webhook on ``port`` of loopback."""
    sink = {"type": "webhook", "url": f"http://127.0.0.1:{port}/hook", "timeout": 2}
    route = {"name": name, "tenant": "sim", "alerts": ["dlp"], "format": "json", "sink": sink, **extra}
    return {**config, "logs": {"routes": [*config["logs"]["routes"], route]}}


async def test_reload_adding_a_route_whose_sink_is_down_applies_with_that_route_degraded(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """The reload is applied; the new route runs degraded ("start failed"); the running route is untouched."""
    async with NotifySocket(tmp_path) as notify, SyslogReceiver("udp") as syslog:
        assert simulator.url is not None
        config = pipeline(tmp_path, simulator.url, syslog.target)
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={**notify.env, "SIM_TOKEN": TOKEN}) as daemon:
            await notify.wait_for("READY=1", timeout=30)
            before = route_of(await daemon_status(path, env={}), "alerts")
            write_pipeline(path, with_route(config, "nowhere", closed_port()))
            daemon.signal(signal.SIGHUP)
            applied = await daemon.wait_for_event("daemon.reload_applied")
            degraded = await syslog.wait_for("event=component.degraded component=route:nowhere", timeout=10)
            after = await daemon_status(path, env={})
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    assert applied["generation"] == 2 and applied["started"] == 1 and applied["degraded"] == ["route:nowhere"]
    assert 'reason="start failed:' in degraded
    assert route_of(after, "nowhere")["state"] == "degraded"  # retrying what it reads meanwhile
    kept = route_of(after, "alerts")
    assert kept["state"] == "ok" and kept["since"] == before["since"] and kept["restarts"] == 0
    assert after["last_reload"]["outcome"] == "applied"


async def test_reload_adding_a_require_healthy_route_whose_sink_is_down_is_rejected(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """With `require_healthy: true` the reload is rejected, naming file:line; generation 1 runs on."""
    async with NotifySocket(tmp_path) as notify:
        assert simulator.url is not None
        config = pipeline(tmp_path, simulator.url, "udp://127.0.0.1:9")
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={**notify.env, "SIM_TOKEN": TOKEN}) as daemon:
            await notify.wait_for("READY=1", timeout=30)
            write_pipeline(path, with_route(config, "nowhere", closed_port(), require_healthy=True))
            daemon.signal(signal.SIGHUP)
            rejected = await daemon.wait_for_event("daemon.reload_rejected")
            assert "still gen=1" in await notify.wait_for("reload rejected", timeout=10)
            status = await daemon_status(path, env={})
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    assert f"{path}:" in rejected["reason"] and "route:nowhere" in rejected["reason"]
    assert "require_healthy" in rejected["reason"]
    assert status["generation"] == 1
    assert [c["name"] for c in status["components"] if c["name"].startswith("route:")] == ["route:alerts"]


@contextlib.asynccontextmanager
async def added_while_down(
    tmp_path: Path, simulator: TenantSimulator, name: str, **extra: Any
) -> AsyncIterator[tuple[Path, FakeWebhook]]:
    """A reload added route ``name`` while its webhook was down (it runs degraded); then the webhook comes up.

    Yields the pipeline file and the webhook; the daemon is stopped (exit 0) afterwards.
    """
    port = closed_port()
    hook = FakeWebhook()
    async with NotifySocket(tmp_path) as notify:
        assert simulator.url is not None
        config = pipeline(tmp_path, simulator.url, "udp://127.0.0.1:9")
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={**notify.env, "SIM_TOKEN": TOKEN}) as daemon:
            await notify.wait_for("READY=1", timeout=30)
            # Malsite alerts, which no other route reads: their poller starts with the reload, and the new
            # route reads that stream from its first page, the simulator's whole backlog of it, however
            # fast the running route ships (a route new to a stream others read starts at its end).
            write_pipeline(path, with_route(config, name, port, **{"alerts": ["malsite"], **extra}))
            daemon.signal(signal.SIGHUP)
            await daemon.wait_for_event("daemon.reload_applied")
            await route_when(path, name, lambda r: r["state"] == "degraded")
            await hook.start(port=port)
            try:
                yield path, hook
            finally:
                await hook.stop()
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0


async def test_a_route_added_while_its_sink_was_down_delivers_once_it_is_up(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """The sink comes up after the reload: the route ships what waited and is ok again."""
    async with added_while_down(tmp_path, simulator, "late", retry_max_delay="0.2s") as (path, hook):
        await hook.wait_until(lambda: len(hook.records) >= 200)  # the simulator's whole backlog
        recovered = await route_when(path, "late", lambda r: r["state"] == "ok")
    assert recovered["counters"]["sent"] >= 200


async def test_an_idle_route_whose_sink_comes_up_is_ok_again(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """With nothing to send, a route whose start check failed checks its sink again and turns ok."""
    quiet = {"filter": {"_id": "no such record"}, "retry_max_delay": "0.5s"}
    async with added_while_down(tmp_path, simulator, "idle", **quiet) as (path, hook):
        recovered = await route_when(path, "idle", lambda r: r["state"] == "ok")
    assert recovered["counters"]["sent"] == 0 and hook.records == []


# -- start checks: at once, within a bound, abandoned on a stop ----------------------------------------


def with_silent_routes(config: dict[str, Any], port: int, names: list[str]) -> dict[str, Any]:
    """``config`` plus a JSON route per name to a webhook on ``port`` that waits 120 s for an answer."""
    sink = {"type": "webhook", "url": f"http://127.0.0.1:{port}/hook", "timeout": 120}
    routes = [{"name": n, "tenant": "sim", "alerts": ["dlp"], "format": "json", "sink": sink} for n in names]
    return {**config, "logs": {"routes": [*config["logs"]["routes"], *routes]}}


@contextlib.asynccontextmanager
async def reloading_to_silent_sinks(
    tmp_path: Path, simulator: TenantSimulator, names: list[str]
) -> AsyncIterator[tuple[DaemonProcess, SilentListener, Path]]:
    """The daemon, ready, then reloading a file that adds routes ``names`` to sinks that never answer.

    Yields the daemon (signalled SIGHUP), the silent listener and the pipeline file.
    """
    async with SilentListener() as silent, NotifySocket(tmp_path) as notify:
        assert simulator.url is not None
        config = pipeline(tmp_path, simulator.url, "udp://127.0.0.1:9")
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={**notify.env, "SIM_TOKEN": TOKEN}) as daemon:
            await notify.wait_for("READY=1", timeout=30)
            write_pipeline(path, with_silent_routes(config, silent.port, names))
            daemon.signal(signal.SIGHUP)
            yield daemon, silent, path


async def test_a_reload_start_checks_its_new_sinks_at_once(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """Three routes added to sinks that never answer: their three start checks are under way together."""
    async with reloading_to_silent_sinks(tmp_path, simulator, ["a", "b", "c"]) as (daemon, silent, _):
        await silent.wait_for_connections(3, timeout=20)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0


async def test_a_stop_during_a_reload_abandons_it_at_once(tmp_path: Path, simulator: TenantSimulator) -> None:
    """SIGTERM while new sinks are checked (120 s each): the reload is abandoned, gen 1 stops, exit 0."""
    async with reloading_to_silent_sinks(tmp_path, simulator, ["a", "b"]) as (daemon, silent, path):
        await silent.wait_for_connections(1, timeout=20)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0  # the checks alone would take 120 s
    saved = await daemon_status(path, env={})
    abandoned = daemon.events("daemon.reload_abandoned")
    assert abandoned and abandoned[0]["generation"] == 1
    assert not daemon.events("daemon.reload_applied")
    assert daemon.events("daemon.stopped")[0]["generation"] == 1
    assert saved["live"] is False and saved["last_reload"]["outcome"] == "abandoned"
    assert [c["name"] for c in saved["components"] if c["name"].startswith("route:")] == ["route:alerts"]


async def test_a_stop_during_the_first_start_checks_ends_the_start_at_once(
    tmp_path: Path, simulator: TenantSimulator
) -> None:
    """SIGTERM while the sinks of the first generation are checked (120 s each): never ready, exit 0."""
    async with SilentListener() as silent, NotifySocket(tmp_path) as notify:
        assert simulator.url is not None
        config = with_silent_routes(
            pipeline(tmp_path, simulator.url, "udp://127.0.0.1:9"), silent.port, ["a"]
        )
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={**notify.env, "SIM_TOKEN": TOKEN}) as daemon:
            await silent.wait_for_connections(1, timeout=30)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    assert daemon.events("daemon.start_abandoned") and daemon.events("daemon.stopped")
    assert not daemon.events("daemon.ready")
    assert not [m for m in notify.messages if "READY=1" in m]
