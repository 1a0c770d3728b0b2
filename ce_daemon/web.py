"""The HTTP listener: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes, and the JSON
API under ``/api/v1`` (:mod:`ce_daemon.api`).

It runs on the daemon's own event loop (aiohttp, no thread of its own), so a scrape reads the state
between two steps of the components, and ``/healthz`` answering is itself the proof that the loop
turns. It is off unless the pipeline has an ``http:`` section; a reload that changes the section
rebinds at once. Binding is a run-time matter, like reaching a sink: ``check`` validates the
address, the daemon reports an address it cannot bind (``http.listen_failed``) and runs on without
the listener until a reload or restart. No answer carries a secret or a record's content.

(``ce_daemon/http.py`` is the other direction: the HTTP client plumbing plugins use.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from ce_daemon import redact
from ce_daemon.api import ApiHost, api_application
from ce_daemon.config.model import HttpSettings
from ce_daemon.dashboard import dashboard_routes
from ce_daemon.health import HealthRegistry
from ce_daemon.metrics import Metrics

log = structlog.get_logger("ce_daemon.web")

SHUTDOWN_TIMEOUT = 2.0
"""How long a closing listener lets a request in progress finish (a scrape takes milliseconds)."""
DETAIL_LIMIT = redact.SYSLOG_LIMIT
"""``/readyz`` quotes at most this much of a component's reason, scrubbed (as the syslog channel does)."""
READY_PHASES = frozenset({"ready", "reloading"})


class WebServer:
    """Serves the three endpoints on the address of the pipeline's ``http`` section, when there is one."""

    def __init__(
        self,
        metrics: Metrics,
        health: HealthRegistry,
        phase: Callable[[], str],
        api: ApiHost | None = None,
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.phase = phase
        self.api = api
        """The daemon whose state ``/api/v1`` serves (None: no API, the probes and metrics only)."""
        self.settings: HttpSettings | None = None
        self.url: str | None = None
        """``http://HOST:PORT/`` once bound (the port the kernel chose for ``:0``)."""
        self.listening = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def configure(self, settings: HttpSettings | None) -> None:
        """Listen as ``settings`` say: no-op when unchanged and bound, else close and bind anew.

        Raises ``OSError`` when the address cannot be bound (in use, not local); the listener is
        then off, and the next ``configure`` tries again even with the same settings.
        """
        if settings == self.settings and (settings is None or self._runner is not None):
            return
        await self.close()
        self.settings = settings
        if settings is None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self.api is not None:
            app.add_routes(api_application(self.api))
            app.add_routes(dashboard_routes(self.api))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.host, settings.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        self.listening.set()
        log.info("http.listening", url=self.url, listen=settings.listen)

    async def close(self) -> None:
        """Stop listening (requests in progress get ``SHUTDOWN_TIMEOUT`` seconds to finish)."""
        runner, self._runner = self._runner, None
        self.listening.clear()
        if runner is not None:
            await runner.cleanup()
            log.info("http.closed", url=self.url)
        self.url = None

    # -- the endpoints ---------------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            body, content_type = await self.metrics.render(request.headers.get("Accept", ""))
        except Exception:  # a scrape that fails is logged and answered 500, never more
            log.exception("http.metrics_failed")
            return web.Response(status=500, text="metrics unavailable, see the daemon's log\n")
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True, "phase": self.phase()})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, body = readiness(self.health, self.phase())
        return web.json_response(body, status=200 if ready else 503)


def readiness(health: HealthRegistry, phase: str) -> tuple[bool, dict[str, Any]]:
    """Ready when the daemon serves a generation and every live component is ok; the body says why not."""
    ok, total, bad = health.summary()
    statuses = {s.name: s for s in health.all()}
    not_ok = [
        {
            "component": name,
            "state": str(statuses[name].state),
            "detail": redact.scrub(statuses[name].detail, DETAIL_LIMIT),
        }
        for name in bad
    ]
    ready = phase in READY_PHASES and not bad
    return ready, {
        "ready": ready,
        "phase": phase,
        "components_ok": ok,
        "components_total": total,
        "not_ok": not_ok,
    }
