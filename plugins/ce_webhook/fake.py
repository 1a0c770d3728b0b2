"""A generic JSON webhook receiver (the machinery every fake shares is in :mod:`.base`)."""

from __future__ import annotations

import base64
import hmac
import secrets
import ssl
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response


class FakeWebhook(FakeHttpServer):
    """A JSON webhook receiver: a JSON array or NDJSON body on ``path``, by POST or PUT.

    ``auth`` is the (header, expected value) every request must carry (None: no auth); see
    :func:`basic_value` and :func:`bearer_value`. Bodies over ``max_body`` bytes (decoded) get 413.
    ``GET health_path`` answers 200 while ``healthy``, else 503. ``HEAD``/``OPTIONS`` on ``path``
    answer 405 with ``Allow`` once authenticated, as many receivers do. A request holding an item
    ``refuse_when`` returns True for is refused whole (400), as receivers that validate do.
    """

    def __init__(
        self,
        *,
        path: str = "/hook",
        auth: tuple[str, str] | None = None,
        max_body: int = 1_000_000,
        health_path: str = "/health",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.path = path
        self.auth = auth
        self.max_body = max_body
        self.health_path = health_path
        self.healthy = True
        self.records: list[Any] = []
        self.batches: list[list[Any]] = []

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post(self.path, self._deliver),
            web.put(self.path, self._deliver),
            web.route("HEAD", self.path, self._probe),
            web.options(self.path, self._probe),
            web.get(self.health_path, self._health),
        ]

    def refuse_credentials(self) -> None:
        """The expected secret changes (a receiver without auth starts asking for a bearer token)."""
        header = self.auth[0] if self.auth is not None else "Authorization"
        self.auth = (header, bearer_value(secrets.token_hex(16)))

    def _authorised(self, request: web.Request) -> bool:
        if self.auth is None:
            return True
        header, expected = self.auth
        return hmac.compare_digest(request.headers.get(header, ""), expected)

    def _unauthorised(self) -> web.Response:
        return json_response({"error": "unauthorized"}, 401, {"WWW-Authenticate": 'Basic realm="hook"'})

    async def _probe(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._unauthorised()
        return web.Response(status=405, headers={"Allow": "POST, PUT"})

    async def _health(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._unauthorised()
        if not self.healthy:
            return json_response({"status": "down"}, 503)
        return json_response({"status": "ok"})

    async def _deliver(self, request: web.Request) -> web.Response:
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        if not self._authorised(request):
            await self.record(request, b"", 401)
            return self._unauthorised()
        body = await request.read()
        if len(body) > self.max_body:
            await self.record(request, body, 413)
            return json_response({"error": f"body of {len(body)} bytes is over {self.max_body}"}, 413)
        content_type = request.content_type
        if content_type not in ("application/json", "application/x-ndjson"):
            await self.record(request, body, 415)
            return json_response({"error": f"unsupported content type {content_type}"}, 415)
        try:
            items = self._accept(body, ndjson=content_type == "application/x-ndjson")
        except ValueError as exc:
            await self.record(request, body, 400)
            return json_response({"error": str(exc)}, 400)
        self.batches.append(items)
        self.records.extend(items)
        await self.record(request, body, 200)
        return json_response({"received": len(items)})

    def _accept(self, body: bytes, *, ndjson: bool) -> list[Any]:
        """The items of a body; ValueError when it is not JSON or holds an item it refuses."""
        try:
            items = _decode(body, ndjson=ndjson)
        except ValueError as exc:
            raise ValueError(f"bad JSON: {exc}") from exc
        refused = [n for n, item in enumerate(items) if self.refuses(item)]
        if refused:
            raise ValueError(f"item {refused[0]} refused")
        return items


def _decode(body: bytes, *, ndjson: bool) -> list[Any]:
    if ndjson:
        return [orjson.loads(line) for line in body.split(b"\n") if line.strip()]
    items = orjson.loads(body)
    if not isinstance(items, list):
        raise ValueError("the body is not a JSON array")  # noqa: TRY004 - the handler answers 400 for any ValueError
    return items


def basic_value(username: str, password: str) -> str:
    """The ``Authorization`` value of HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def bearer_value(token: str) -> str:
    """The ``Authorization`` value of a bearer token."""
    return f"Bearer {token}"
