"""A target that quotes our request back (headers included) leaks no secret into any output of the daemon.

Logs (stdout), `ce-daemon status --json`, the dead-letter table, the syslog health channel, the HTTP
listener's `/readyz` and `/metrics`, and a rejected reload's texts: each exit scrubs every configured
secret, and the forms derived from them.
"""

from __future__ import annotations

import base64
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from ce_daemon.logs.deadletter import DEADLETTER_MIGRATIONS
from ce_daemon.redact import MARKER
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.fakes.base import FakeHttpServer, json_response
from ce_daemon.testing.pipelines import backlog_simulator, pipeline_config, route_when, run_cli
from ce_daemon.testing.sockets import NotifySocket, SyslogReceiver
from ce_daemon.testing.state import open_test_store

TOKEN = "echo-sim-token-0123456789"
BACKLOG = 60
BEARER = "webhook-bearer-secret-0123456789"
PASSWORD = "webhook-basic-password-4567"
HEC_TOKEN = "0f3c9a6e-hec-token-89ab-cdef01234567"


class EchoingProxy(FakeHttpServer):
    """A target behind a proxy that quotes the request's headers in its error answers.

    Health probes get the target's healthy answer (``healthy=False``: a 503 quoting the headers too);
    data requests get ``transient`` 503s, then 400s, each quoting every header, ``Authorization``
    included. With ``splunk`` the answers have HEC's JSON shape (``{"text", "code"}``).
    """

    def __init__(self, *, splunk: bool = False, transient: int = 2, healthy: bool = True) -> None:
        super().__init__()
        self.splunk = splunk
        self.transient = transient
        self.healthy = healthy
        self.data_requests = 0

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.route("*", "/{tail:.*}", self._answer)]

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        echo = (
            "proxy error, your request: "
            + orjson.dumps({str(k): v for k, v in request.headers.items()}).decode()
        )
        if request.method in ("GET", "HEAD") or (self.splunk and not body):  # health probes
            if not self.healthy:
                return await self._reply(request, body, 503, echo, code=9)
            if self.splunk and request.method == "POST":
                return json_response({"text": "No data", "code": 5}, 400)
            return json_response({"text": "HEC is healthy", "code": 17})
        self.data_requests += 1
        transient = self.data_requests <= self.transient
        return await self._reply(request, body, 503 if transient else 400, echo, code=9 if transient else 6)

    async def _reply(
        self, request: web.Request, body: bytes, status: int, echo: str, code: int
    ) -> web.Response:
        await self.record(request, body, status)
        if self.splunk:
            return json_response({"text": echo, "code": code}, status)
        return web.Response(status=status, text=echo)


def basic_pair() -> str:
    """What HTTP basic auth puts on the wire for the webhook's user and PASSWORD."""
    return base64.b64encode(f"ce:{PASSWORD}".encode()).decode()


@dataclass(frozen=True)
class Shape:
    """A sink's way of sending its secret: its settings, the secret, what goes on the wire, as echoed."""

    sink: dict[str, Any]
    secret: str
    on_the_wire: tuple[str, ...]
    scrubbed: str


SHAPES = {
    "webhook-bearer": Shape(
        {"type": "webhook", "path": "/hook", "auth": {"type": "bearer", "token": {"$env": "SINK_SECRET"}}},
        BEARER,
        (BEARER,),
        f"Bearer {MARKER}",
    ),
    "webhook-basic": Shape(
        {
            "type": "webhook",
            "path": "/hook",
            "auth": {"type": "basic", "username": "ce", "password": {"$env": "SINK_SECRET"}},
        },
        PASSWORD,
        (PASSWORD, basic_pair()),
        f"Basic {MARKER}",
    ),
    "splunk_hec": Shape(
        {"type": "splunk_hec", "token": {"$env": "SINK_SECRET"}, "gzip": False},
        HEC_TOKEN,
        (HEC_TOKEN,),
        f"Splunk {MARKER}",
    ),
}


def sink_block(template: Mapping[str, Any], url: str) -> dict[str, Any]:
    """The sink settings of ``template`` pointed at ``url``."""
    sink = {k: v for k, v in template.items() if k != "path"}
    sink["url"] = url + str(template.get("path", ""))
    return sink


async def status_text(config: Path) -> str:
    """What `ce-daemon status --json` prints (the command needs no secret)."""
    code, out = await run_cli("status", "-c", str(config), "--json", env={})
    assert code in (0, 150, 151), out
    return out


async def http_text(url: str) -> str:
    """The body of a GET to the daemon's HTTP listener (``/readyz`` answers 503 while a route is degraded)."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def dead_letter_reasons(tmp_path: Path) -> list[str]:
    """Every reason in the dead-letter table of the test's state."""
    state = tmp_path / "state" / "db.sqlite"
    async with await open_test_store(state, DEADLETTER_MIGRATIONS) as store, store.read() as tx:
        return [row[0] for row in await tx.fetch("SELECT reason FROM dead_letters")]


@pytest.mark.parametrize("name", sorted(SHAPES))
async def test_an_echoed_secret_reaches_no_output(tmp_path: Path, name: str) -> None:
    """Retried (503), then refused (400), by answers quoting our headers: no output shows the secret."""
    shape = SHAPES[name]
    proxy = EchoingProxy(splunk=shape.sink["type"] == "splunk_hec")
    async with backlog_simulator(TOKEN, BACKLOG) as sim, proxy as url, SyslogReceiver("udp") as syslog:
        assert sim.url is not None
        route = {
            "name": "leaky",
            "tenant": "sim",
            "alerts": ["dlp"],
            "format": "json",
            "retry_max_delay": "0.05s",
            "batch": {"max_records": 20, "max_wait": "0.2s"},
            "sink": sink_block(shape.sink, url),
        }
        health = {"interval": "1h", "syslog": {"target": syslog.target}}
        listen = {"listen": "127.0.0.1:0", "public": ["/metrics", "/readyz"]}
        config = write_pipeline(
            tmp_path / "pipeline.yaml",
            pipeline_config(tmp_path, sim.url, [route], health=health, http=listen),
        )
        async with DaemonProcess(config, env={"SIM_TOKEN": TOKEN, "SINK_SECRET": shape.secret}) as daemon:
            web_url = (await daemon.wait_for_event("http.listening"))["url"]
            degraded = await syslog.wait_for("event=component.degraded", timeout=30)
            readyz = await http_text(f"{web_url}readyz")  # while the route is degraded by the echo
            await route_when(config, "leaky", lambda r: r["counters"]["dead_lettered"] == BACKLOG)
            refused = await status_text(config)
            metrics = await http_text(f"{web_url}metrics")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    reasons = await dead_letter_reasons(tmp_path)
    assert len(reasons) == BACKLOG
    # The echo did come back, and was scrubbed where it shows.
    assert shape.scrubbed in refused
    assert "proxy error" in degraded and shape.scrubbed in degraded
    assert all(shape.scrubbed in reason for reason in reasons)
    assert "proxy error" in readyz and shape.scrubbed in readyz
    outputs = {"stdout": "\n".join(daemon.raw), "status": refused, "syslog": "\n".join(syslog.messages)}
    outputs.update({"dead letters": "\n".join(reasons), "/readyz": readyz, "/metrics": metrics})
    for form in shape.on_the_wire:
        leaks = [where for where, text in outputs.items() if form in text]
        assert not leaks, f"{form!r} leaked into {leaks}"


async def test_a_rejected_reload_quoting_a_secret_shows_none(tmp_path: Path) -> None:
    """A require_healthy sink whose health answer quotes our token: the rejection is scrubbed everywhere."""
    proxy = EchoingProxy(splunk=True, healthy=False)
    async with (
        backlog_simulator(TOKEN, BACKLOG) as sim,
        proxy as url,
        SyslogReceiver("udp") as syslog,
        NotifySocket(tmp_path) as notify,
    ):
        assert sim.url is not None
        steady = {
            "name": "steady",
            "tenant": "sim",
            "alerts": ["dlp"],
            "sink": {"type": "file", "path": "out.cef"},
        }
        health = {"interval": "1h", "syslog": {"target": syslog.target}}
        config = pipeline_config(tmp_path, sim.url, [steady], health=health)
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        env = {**notify.env, "SIM_TOKEN": TOKEN, "SINK_SECRET": HEC_TOKEN}
        async with DaemonProcess(path, env=env) as daemon:
            await notify.wait_for("READY=1", timeout=30)
            hec = {"type": "splunk_hec", "url": url, "token": {"$env": "SINK_SECRET"}}
            config["logs"]["routes"].append(
                {"name": "strict", "tenant": "sim", "alerts": ["dlp"], "require_healthy": True, "sink": hec}
            )
            write_pipeline(path, config)
            daemon.signal(signal.SIGHUP)
            rejected = await daemon.wait_for_event("daemon.reload_rejected")
            systemd_status = await notify.wait_for("reload rejected", timeout=10)
            reload_syslog = await syslog.wait_for("event=daemon.reload_rejected", timeout=10)
            status = await status_text(path)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    assert "route:strict" in rejected["reason"] and f"Splunk {MARKER}" in rejected["reason"]
    assert f"Splunk {MARKER}" in orjson.loads(status)["last_reload"]["reason"]
    for where, text in {
        "stdout": "\n".join(daemon.raw),
        "status": status,
        "syslog": reload_syslog,
        "systemd STATUS": systemd_status,
    }.items():
        assert HEC_TOKEN not in text, where
