"""The HTTP listener: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes, the JSON API
under ``/api/v1`` (:mod:`ce_daemon.api`) and the dashboard under ``/ui`` (:mod:`ce_daemon.dashboard`).

Every endpoint but ``/healthz`` and the login page needs a credential of the role it declares (see
:mod:`ce_daemon.access.guard`), unless ``http.public`` opens it; TLS when ``http.tls`` says so.

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
import hashlib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from ce_daemon import redact
from ce_daemon.access import AccessStore, AuditLog, Role
from ce_daemon.access.guard import Guard, client_address, error, principal, public, requires
from ce_daemon.access.oidc import OidcClient
from ce_daemon.access.tls import server_context
from ce_daemon.api import ApiHost, api_application
from ce_daemon.config.model import HttpSettings, ListenerTls
from ce_daemon.dashboard import SINGLE_SIGN_ON, dashboard_routes
from ce_daemon.health import HealthRegistry
from ce_daemon.metrics import Metrics

log = structlog.get_logger("ce_daemon.web")

SHUTDOWN_TIMEOUT = 2.0
"""How long a closing listener lets a request in progress finish (a scrape takes milliseconds)."""
DETAIL_LIMIT = redact.SYSLOG_LIMIT
"""``/readyz`` quotes at most this much of a component's reason, scrubbed (as the syslog channel does)."""
READY_PHASES = frozenset({"ready", "reloading"})


class WebServer:
    """Serves the probes, the metrics and the API on the address of the pipeline's ``http`` section, when
    there is one, behind the access gate (:mod:`ce_daemon.access.guard`)."""

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
        self._context: ssl.SSLContext | None = None
        self._pair: bytes | None = None
        self.access: AccessStore | None = None
        self.audit: AuditLog | None = None
        self.data_dir = Path()
        self.request_reload: Callable[[], None] | None = None

    def attach(
        self, access: AccessStore, audit: AuditLog, data_dir: Path, request_reload: Callable[[], None]
    ) -> None:
        """Give the listener the credentials to check, where to audit, where a self-signed pair goes,
        and how to ask for a reload (before :meth:`configure`)."""
        self.access, self.audit, self.data_dir, self.request_reload = access, audit, data_dir, request_reload

    async def configure(self, settings: HttpSettings | None) -> None:
        """Listen as ``settings`` say: no-op when unchanged and bound, else close and bind anew.

        Raises ``OSError`` when the address cannot be bound (in use, not local); the listener is
        then off, and the next ``configure`` tries again even with the same settings.
        """
        if settings == self.settings and (settings is None or self._runner is not None):
            await self._reload_certificate()
            return
        await self.close()
        self.settings = settings
        if settings is None:
            return
        if self.access is None or self.audit is None:
            raise RuntimeError("the listener checks credentials: attach() the access store first")
        context: ssl.SSLContext | None = None
        if settings.tls is not None:
            context = await asyncio.to_thread(server_context, settings.tls, self.data_dir, settings.host)
        self._context, self._pair = context, certificate_pair(settings.tls)
        guard = Guard(
            self.access,
            self.audit,
            secure=context is not None,
            session_ttl=settings.session_ttl,
            open_paths=frozenset(settings.public),
            oidc=None if settings.oidc is None else OidcClient(settings.oidc),
        )
        app = web.Application(middlewares=[guard.middleware])
        app[SINGLE_SIGN_ON] = settings.oidc is not None
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_post("/api/reload", self._reload)
        app.router.add_get("/api/tokens", self._tokens)
        app.router.add_post("/api/tokens/{name}/revoke", self._revoke)
        guard.add_routes(app)
        if self.api is not None:
            app.add_routes(api_application(self.api))
            app.add_routes(dashboard_routes(self.api))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.host, settings.port, ssl_context=context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"
        self.listening.set()
        log.info("http.listening", url=self.url, listen=settings.listen)

    async def _reload_certificate(self) -> None:
        """Load the operator's certificate and key again when their files changed (a renewal, then a
        reload): handshakes from now on use the new pair, connections open keep theirs."""
        tls = self.settings.tls if self.settings is not None else None
        pair = certificate_pair(tls)
        if self._context is None or tls is None or tls.cert is None or tls.key is None or pair == self._pair:
            return
        try:
            self._context.load_cert_chain(tls.cert, tls.key, password=lambda: b"")
        except (OSError, ssl.SSLError) as exc:  # the pair in use stays: a reload never drops TLS
            log.error("http.certificate_reload_failed", cert=str(tls.cert), error=str(exc))
            return
        self._pair = pair
        log.info("http.certificate_reloaded", cert=str(tls.cert))

    async def close(self) -> None:
        """Stop listening (requests in progress get ``SHUTDOWN_TIMEOUT`` seconds to finish)."""
        runner, self._runner = self._runner, None
        self.listening.clear()
        if runner is not None:
            await runner.cleanup()
            log.info("http.closed", url=self.url)
        self.url = None

    # -- the endpoints ---------------------------------------------------------------------------

    @requires(Role.VIEWER)
    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            body, content_type = await self.metrics.render(request.headers.get("Accept", ""))
        except Exception:  # a scrape that fails is logged and answered 500, never more
            log.exception("http.metrics_failed")
            return web.Response(status=500, text="metrics unavailable, see the daemon's log\n")
        return web.Response(body=body, headers={"Content-Type": content_type})

    @public
    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True, "phase": self.phase()})

    @requires(Role.VIEWER)
    async def _readyz(self, request: web.Request) -> web.Response:
        ready, body = readiness(self.health, self.phase())
        return web.json_response(body, status=200 if ready else 503)

    @requires(Role.OPERATOR)
    async def _reload(self, request: web.Request) -> web.Response:
        """``POST /api/reload``: as SIGHUP (the outcome is logged, audited and shown by ``status``)."""
        assert self.request_reload is not None
        self.request_reload()
        return web.json_response({"reload": "requested"}, status=202)

    @requires(Role.ADMIN)
    async def _tokens(self, request: web.Request) -> web.Response:
        """``GET /api/tokens``: every token's name, id, role, times and state (never a secret)."""
        assert self.access is not None
        listed = [
            {"name": t.name, "id": t.token_id, "role": str(t.role), "created": t.created,
             "last_used": t.last_used, "revoked": t.revoked}
            for t in await self.access.tokens()
        ]  # fmt: skip
        return web.json_response({"tokens": listed})

    @requires(Role.ADMIN)
    async def _revoke(self, request: web.Request) -> web.Response:
        """``POST /api/tokens/{name}/revoke``: the token is refused from now on."""
        assert self.access is not None and self.audit is not None
        name = request.match_info["name"]
        if not await self.access.revoke_token(name):
            return error(404, "no token of that name in use")
        who = principal(request)
        await self.audit.record("token.revoke", actor=who.actor, address=client_address(request), detail=name)
        return web.json_response({"revoked": name})


def certificate_pair(tls: ListenerTls | None) -> bytes | None:
    """The content of the operator's certificate and key files (None without them or when unreadable):
    what tells a renewed pair from the one loaded."""
    if tls is None or tls.cert is None or tls.key is None:
        return None
    try:
        return hashlib.sha256(tls.cert.read_bytes() + b"\0" + tls.key.read_bytes()).digest()
    except OSError:
        return None


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
