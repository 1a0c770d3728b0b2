"""The HTTP listener: its address in the pipeline file; /metrics, /healthz and /readyz on a live daemon."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from ce_webhook.fake import FakeWebhook
from prometheus_client.parser import text_string_to_metric_families

from ce_daemon.config.load import load_pipeline
from ce_daemon.config.model import HttpSettings
from ce_daemon.errors import ConfigError
from ce_daemon.registry import Registry
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import SIM_TOKEN, backlog_simulator, pipeline_config

ENV = {"SIM_TOKEN": SIM_TOKEN}
BASE = "version: 1\nstate: {path: ./state/db.sqlite}\n"
PROBES = ["/metrics", "/readyz"]
"""Opened to callers without a token: these tests are about the endpoints, test_auth about credentials."""
Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


# -- the address in the pipeline file ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("::1:9464", "an IPv6 address goes in brackets: [::1]:9464"),
        ("[nope]:9464", "'nope' is not an IPv6 address"),
        ("127.0.0.1", "an address to listen on is host:port"),
        ("127.0.0.1:http", "an address to listen on is host:port"),
        ("127.0.0.1:65536", "port 65536 is out of range (0-65535"),
        (":9464", "give the address or host name to listen on"),
        ("bad host:9464", "give the address or host name to listen on"),
    ],
)
def test_a_bad_listen_address_is_refused_with_its_place(tmp_path: Path, listen: str, message: str) -> None:
    """`check` refuses an address it cannot parse, naming the line, the key and what is wrong."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(BASE + f'http:\n  listen: "{listen}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, Registry.discover(), environ={})
    [problem] = caught.value.problems
    assert problem.render().startswith(f"{path}:4:11: http.listen: "), problem.render()
    assert message in problem.message


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9464", "127.0.0.1", 9464),
        ("0.0.0.0:9464", "0.0.0.0", 9464),
        ("[::1]:9464", "::1", 9464),
        ("localhost:0", "localhost", 0),
    ],
)
def test_a_listen_address_gives_the_host_and_port_to_bind(listen: str, host: str, port: int) -> None:
    """An IPv4 address, a bracketed IPv6 address or a host name, and a port (0: the system picks)."""
    settings = HttpSettings(listen=listen)
    assert (settings.host, settings.port) == (host, port)


def test_without_an_http_section_there_is_no_listener(tmp_path: Path) -> None:
    """The listener is off unless the file asks for it; `http: {}` listens on the default address."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(BASE, encoding="utf-8")
    assert load_pipeline(path, Registry.discover(), environ={}).config.http is None
    path.write_text(BASE + "http: {}\n", encoding="utf-8")
    settings = load_pipeline(path, Registry.discover(), environ={}).config.http
    assert settings is not None and settings.listen == "127.0.0.1:9464"


# -- on a running daemon ----------------------------------------------------------------------------


@dataclass
class Running:
    """A daemon shipping a simulated tenant's alerts/dlp backlog to a webhook, with its pipeline file."""

    daemon: DaemonProcess
    hook: FakeWebhook
    config: Path
    sim_url: str

    async def url(self, count: int = 1) -> str:
        """The listener's base URL, as the ``count``-th ``http.listening`` says."""
        return str((await self.daemon.wait_for_event("http.listening", count=count))["url"])

    def rewrite(self, http: dict[str, Any] | None, **route: Any) -> None:
        """Write the pipeline file again with this ``http`` section (None: none) and ``route`` settings."""
        overrides = {"http": http} if http is not None else {}
        hook = {"type": "webhook", "url": self.hook.url + "/hook"}
        routes = [{"name": "to-hook", "tenant": "sim", "alerts": ["dlp"], "format": "json", "sink": hook}]
        routes[0].update({"batch": {"max_wait": "200ms"}, **route})
        tmp_path = self.config.parent
        write_pipeline(self.config, pipeline_config(tmp_path, self.sim_url, routes, **overrides))


@asynccontextmanager
async def running(
    tmp_path: Path, backlog: int, http: dict[str, Any] | None, env: dict[str, str] = ENV
) -> AsyncIterator[Running]:
    """The daemon at work on ``backlog`` records; stopped with SIGTERM at the end (exit code 0)."""
    hook = FakeWebhook()
    async with backlog_simulator(SIM_TOKEN, backlog) as sim, hook:
        assert sim.url is not None
        run = Running(
            DaemonProcess(tmp_path / "pipeline.yaml", env=env), hook, tmp_path / "pipeline.yaml", sim.url
        )
        run.rewrite(http)
        async with run.daemon as daemon:
            yield run
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0


def cluster_components(state_backend: str) -> int:
    """Health components beyond the pipeline's: a node on a PostgreSQL state reports its ``cluster``."""
    return 1 if state_backend == "postgresql" else 0


async def get(url: str) -> tuple[int, str, str]:
    """GET ``url``: status, content type and body."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def scrape(url: str) -> Samples:
    """Every sample of ``url``/metrics, by name then label set."""
    status, _, body = await get(url + "metrics")
    assert status == 200, body
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


async def scrape_when(url: str, check: Callable[[Samples], bool], timeout: float = 30.0) -> Samples:
    """Scrape until ``check`` holds: the daemon is another process and announces no counter change."""
    async with asyncio.timeout(timeout):
        while not check(samples := await scrape(url)):  # noqa: ASYNC110 - another process: no event
            await asyncio.sleep(0.1)
        return samples


def route_value(samples: Samples, name: str) -> float | None:
    """The value of the route's series ``name`` in a scrape."""
    return samples.get(name, {}).get(frozenset({"route": "to-hook", "sink": "webhook"}.items()))


def sent(samples: Samples) -> float | None:
    """The route's sent counter in a scrape."""
    return route_value(samples, "ce_daemon_route_sent_records_total")


async def test_metrics_healthz_and_readyz_answer_without_secrets_or_records(
    tmp_path: Path, state_backend: str
) -> None:
    """/metrics in text format; /healthz and /readyz 200 once all components are ok; no token, no record."""
    components = 2 + cluster_components(state_backend)
    async with running(tmp_path, 100, {"listen": "127.0.0.1:0", "public": PROBES}) as run:
        url = await run.url()
        await run.hook.wait_until(lambda: len(run.hook.records) >= 100)
        metrics = await get(url + "metrics")
        healthz = await get(url + "healthz")
        readyz = await get(url + "readyz")
    ids = [str(record["_id"]) for record in run.hook.records]
    status, content_type, body = metrics
    assert status == 200 and content_type.startswith("text/plain")
    assert 'ce_daemon_route_sent_records_total{route="to-hook",sink="webhook"}' in body
    assert 'ce_daemon_stream_records_total{iterator="live",kind="alerts",subtype="dlp",tenant="sim"}' in body
    assert healthz[0] == 200 and orjson.loads(healthz[2])["live"] is True
    assert readyz[0] == 200, readyz
    assert orjson.loads(readyz[2]) == {
        "ready": True, "phase": "ready", "components_ok": components, "components_total": components,
        "not_ok": [],
    }  # fmt: skip
    assert len(ids) == 100
    for answer in (metrics, healthz, readyz):
        assert SIM_TOKEN not in answer[2]
        assert not any(record_id in answer[2] for record_id in ids)


async def test_readyz_is_503_naming_the_component_that_is_not_ok_and_why(
    tmp_path: Path, state_backend: str
) -> None:
    """A poller whose token is refused makes /readyz 503 with its name, state and why; /healthz stays 200."""
    cluster = cluster_components(state_backend)
    async with running(
        tmp_path, 10, {"listen": "127.0.0.1:0", "public": PROBES}, env={"SIM_TOKEN": "not-the-token"}
    ) as run:
        url = await run.url()
        await run.daemon.wait_for_event("component.failed")
        readyz = await get(url + "readyz")
        healthz = await get(url + "healthz")
    assert readyz[0] == 503
    body = orjson.loads(readyz[2])
    ok, total = body["components_ok"], body["components_total"]
    assert body["ready"] is False and ok == 1 + cluster and total == 2 + cluster
    [not_ok] = body["not_ok"]
    assert not_ok["component"] == "poller:sim/alerts/dlp" and not_ok["state"] == "failed"
    assert "401" in not_ok["detail"]
    assert healthz[0] == 200


async def test_a_reload_rebinds_a_changed_address_and_closes_a_removed_section(tmp_path: Path) -> None:
    """SIGHUP with a new `http.listen` moves the listener; without the section, it closes."""
    async with running(tmp_path, 10, {"listen": "127.0.0.1:0", "public": PROBES}) as run:
        first = await run.url()
        await run.daemon.wait_for_event("daemon.ready")
        run.rewrite({"listen": "127.0.0.2:0", "public": PROBES})
        run.daemon.signal(signal.SIGHUP)
        second = await run.url(count=2)
        moved = await get(second + "healthz")
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(first + "healthz")
        reloads = await scrape(second)
        run.rewrite(None)
        run.daemon.signal(signal.SIGHUP)
        await run.daemon.wait_for_event("daemon.reload_applied", count=2)
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(second + "healthz")
    assert second.startswith("http://127.0.0.2:")
    assert moved[0] == 200
    assert reloads["ce_daemon_reloads_total"][frozenset({"outcome": "applied"}.items())] == 1
    assert reloads["ce_daemon_generation"][frozenset()] == 2


async def test_an_address_in_use_is_reported_and_the_pipeline_runs_on(tmp_path: Path) -> None:
    """A port another process holds: `http.listen_failed` names it, and the records still ship."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        async with running(tmp_path, 50, {"listen": taken, "public": PROBES}) as run:
            failed = await run.daemon.wait_for_event("http.listen_failed")
            await run.hook.wait_until(lambda: len(run.hook.records) >= 50)
    assert failed["listen"] == taken
    assert "address already in use" in failed["error"].lower()
    assert not run.daemon.events("http.listening")


async def test_counters_do_not_restart_when_a_reload_rebuilds_the_route(tmp_path: Path) -> None:
    """A route rebuilt by a reload counts on from its predecessor: Prometheus sees no reset."""
    backlog = 120
    async with running(tmp_path, backlog, {"listen": "127.0.0.1:0", "public": PROBES}) as run:
        url = await run.url()
        await run.hook.wait_until(lambda: len(run.hook.records) >= backlog)
        before = await scrape_when(url, lambda s: sent(s) == backlog)
        run.rewrite({"listen": "127.0.0.1:0", "public": PROBES}, retry_max_delay="1m")
        run.daemon.signal(signal.SIGHUP)
        applied = await run.daemon.wait_for_event("daemon.reload_applied")
        after = await scrape(url)
    assert (applied["started"], applied["stopped"]) == (1, 1)  # the route was rebuilt
    assert sent(before) == sent(after) == backlog
    assert route_value(after, "ce_daemon_route_received_records_total") == backlog


async def test_the_demo_serves_metrics_and_prints_their_address(tmp_path: Path) -> None:
    """`ce-daemon demo` turns the listener on and prints http://127.0.0.1:PORT/metrics, which answers."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ce_daemon", "demo", "--dir", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            async for line in process.stdout:
                if found := re.search(rb"metrics on (http://127\.0\.0\.1:\d+/metrics)", line):
                    break
            else:
                raise AssertionError("the demo ended without printing the address of its metrics")
        metrics = await get(found.group(1).decode())
        process.send_signal(signal.SIGTERM)
        await process.communicate()  # drained to the end, so the demo never blocks on a full pipe
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert metrics[0] == 200 and "ce_daemon_build_info{" in metrics[2]
