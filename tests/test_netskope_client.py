"""The tenant client's bounds and classification, against a server of the test's own on loopback."""

from __future__ import annotations

import math
import tracemalloc
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from ce_daemon.config.model import Tenant
from ce_daemon.errors import ComponentConfigError, TransientError
from ce_daemon.netskope.client import (
    ABSENT_WAIT_FALLBACK,
    BrokenPageError,
    OversizedPageError,
    TenantClient,
    UncertainAnswerError,
    sane_wait_time,
)
from ce_daemon.netskope.sendwindow import MARGIN
from ce_daemon.testing.fakes.base import FakeHttpServer
from ce_daemon.testing.hostile import gzip_bomb

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PAGE = orjson.dumps({"ok": 1, "result": [{"_id": "a", "timestamp": 1}], "wait_time": 0})


class Tenantish(FakeHttpServer):
    """Answers each data-export request with the next scripted handler (the last one repeats)."""

    def __init__(self, *handlers: Handler) -> None:
        super().__init__()
        self.handlers = deque(handlers)

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.get("/api/v2/events/dataexport/{kind}/{subtype}", self._answer)]

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        handler = self.handlers.popleft() if len(self.handlers) > 1 else self.handlers[0]
        await self.record(request, b"", 0)
        return await handler(request)


def page(body: bytes = PAGE, **headers: str) -> Handler:
    """A 200 with ``body`` (and ``headers``)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, headers=headers, content_type="application/json")

    return answer


@asynccontextmanager
async def client_of(*handlers: Handler, **settings: Any) -> AsyncIterator[tuple[Tenantish, TenantClient]]:
    """A client for a tenant answering with ``handlers``; ``settings`` override the tenant's."""
    server = Tenantish(*handlers)
    async with server as url:
        tenant = Tenant.model_validate(
            {"name": "t", "url": url, "token": SecretStr("token-0123456789"), "rate_limit": 50, **settings}
        )
        client = TenantClient(tenant)
        try:
            yield server, client
        finally:
            await client.close()


@pytest.mark.parametrize(
    ("value", "wait", "problem"),
    [
        (None, 0.0, None),
        (0, 0.0, None),
        (2.5, 2.5, None),
        (300, 300.0, None),
        (1e12, 300.0, "wait_time 1000000000000.0 exceeds max_wait_time: waiting 300s"),
        (math.inf, 300.0, "wait_time inf exceeds max_wait_time: waiting 300s"),
        (-5, 0.0, "wait_time -5 is negative: not waiting"),
        (math.nan, ABSENT_WAIT_FALLBACK, "wait_time nan is not a number: waiting 30s"),
        ("5", ABSENT_WAIT_FALLBACK, "wait_time '5' is not a number: waiting 30s"),
        (True, ABSENT_WAIT_FALLBACK, "wait_time True is not a number: waiting 30s"),
        ([1], ABSENT_WAIT_FALLBACK, "wait_time [1] is not a number: waiting 30s"),
        ("x" * 100, ABSENT_WAIT_FALLBACK, f"wait_time '{'x' * 36}... is not a number: waiting 30s"),
    ],
)
def test_wait_time_is_kept_within_zero_and_the_cap(value: object, wait: float, problem: str | None) -> None:
    """Sane values pass; others are corrected, saying what was wrong (a long one shown cut short)."""
    assert sane_wait_time(value, 300.0) == (wait, problem)


async def test_a_429_asking_for_a_billion_seconds_holds_the_tenant_no_longer_than_max_retry_delay() -> None:
    """Retry-After: 1e9 is honoured up to max_retry_delay; the next request goes out after that."""

    async def throttled(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, headers={"Retry-After": "1e9"})

    async with client_of(throttled, page(), max_retry_delay="0.2s") as (_, client):
        with pytest.raises(TransientError) as refused:
            await client.fetch("alerts", "dlp", "i", "next")
        fetched = await client.fetch("alerts", "dlp", "i", "next")  # before: held for 31 years
    assert refused.value.retry_after == 0.2
    assert [record["_id"] for record in fetched.records.parsed()] == ["a"]
    assert (client.requests, client.throttled) == (2, 1)
    assert client.bucket_wait_seconds > 0
    assert client.window.margin == 2 * MARGIN  # the tenant's window looked fuller than ours: widened


async def test_a_compression_bomb_is_refused_within_the_page_limit_of_memory() -> None:
    """256 MiB of blanks in 256 KB of gzip: refused once 1 MiB is inflated, never held whole."""
    bomb = gzip_bomb(PAGE, 256 * 1024**2)
    async with client_of(page(bomb, **{"Content-Encoding": "gzip"}), max_page_bytes="1MiB") as (_, client):
        tracemalloc.start()
        try:
            with pytest.raises(OversizedPageError, match=r"more than max_page_bytes \(1,048,576 bytes\)"):
                await client.fetch("alerts", "dlp", "i", "next")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * 1024**2  # the limit, plus aiohttp's bounded inflating steps and the client itself


async def test_a_body_announced_beyond_the_limit_is_not_read() -> None:
    """A Content-Length over max_page_bytes is refused from the headers."""
    padded = PAGE[:-1] + b" " * (2 * 1024**2) + b"}"
    async with client_of(page(padded), max_page_bytes="1MiB") as (_, client):
        with pytest.raises(OversizedPageError, match="announced a body of 2,097,"):
            await client.fetch("alerts", "dlp", "i", "next")


@pytest.mark.parametrize(
    "media", ["application/json; charset=utf-8", "application/vnd.netskope+json", "application/octet-stream"]
)
async def test_json_media_types_and_an_undeclared_body_are_read_as_pages(media: str) -> None:
    """JSON in any JSON media type, or declared as just bytes (many servers' default), is a page."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=PAGE, headers={"Content-Type": media})

    async with client_of(answer) as (_, client):
        fetched = await client.fetch("alerts", "dlp", "i", "next")
    assert len(fetched.records) == 1


async def test_a_200_that_is_not_json_is_an_uncertain_answer_not_a_page() -> None:
    """text/plain with a valid-looking page is still not taken: the cursor may have moved, resend."""

    async def plain(request: web.Request) -> web.StreamResponse:
        return web.Response(body=PAGE, content_type="text/plain")

    async with client_of(plain) as (_, client):
        with pytest.raises(BrokenPageError, match="Content-Type text/plain, not a JSON page"):
            await client.fetch("alerts", "dlp", "i", "next")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_a_configuration_error_naming_its_target(status: int) -> None:
    """Any 3xx: not followed, a configuration error naming where it pointed (no retry storm)."""

    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": "https://elsewhere.example/api"})

    async with client_of(redirect) as (server, client):
        with pytest.raises(
            ComponentConfigError, match=f"HTTP {status}, a redirect to https://elsewhere.example/api"
        ):
            await client.fetch("alerts", "dlp", "i", "next")
    assert len(server.requests) == 1


async def test_a_connection_dropped_before_the_answer_is_never_sent_again_behind_our_back() -> None:
    """A reused connection closed before the status: one request reached the server, the loss is reported."""

    async def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    async with client_of(page(), drop) as (server, client):
        await client.fetch("alerts", "dlp", "i", "next")  # opens the keep-alive connection
        with pytest.raises(
            UncertainAnswerError, match="connection lost on /api/v2/events/dataexport/alerts/dlp"
        ):
            await client.fetch("alerts", "dlp", "i", "next")
    # aiohttp on its own would have sent the GET again: a second `next` moving the cursor past a page
    assert len(server.requests) == 2


@pytest.mark.parametrize("hwm", [2**64 - 1, -1, 1.5e9, "1700000000", True])
async def test_a_timestamp_hwm_sqlite_cannot_store_is_ignored(hwm: object) -> None:
    """Only a non-negative integer epoch below 2**63 is kept as the page's high-water mark."""
    body = orjson.dumps({"ok": 1, "result": [], "wait_time": 0, "timestamp_hwm": hwm})
    async with client_of(page(body)) as (_, client):
        fetched = await client.fetch("alerts", "dlp", "i", "next")
    assert fetched.timestamp_hwm is None
