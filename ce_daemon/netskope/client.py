"""The Netskope REST API v2 client: one session and one token bucket per tenant.

Every attempt, retries included, takes a token from the tenant's bucket, so however many
pollers a tenant has, it is never asked more than ``rate_limit`` times a second. Responses
are classified into the core's error taxonomy; the pollers decide what to do with them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiolimiter import AsyncLimiter

from ce_daemon import __version__
from ce_daemon.config.model import Tenant
from ce_daemon.errors import AuthError, TransientError
from ce_daemon.netskope.subtypes import DataKind, dataexport_path

USER_AGENT = f"ce-daemon/{__version__}"
# A little under the documented rate, so that scheduling jitter on either side (an event-loop stall
# while a 10,000-record page is parsed) never bunches five requests into one second of the tenant's
# sliding window: 3 % leaves ~30 ms of slack per second and still allows 97 % of the ceiling.
RATE_MARGIN = 0.97


class BrokenPageError(TransientError):
    """The server answered 200 but the page could not be read: its cursor already moved, ask ``resend``."""


class NotOkError(TransientError):
    """The server answered ``ok != 1``: no page was delivered, retry the same operation (as CE does)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One answer of the data-export iterator."""

    records: list[Any]
    wait_time: float
    timestamp_hwm: int | None
    size: int


class TenantClient:
    """Talks to one Netskope tenant's data-export iterator."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.base_url = tenant.url.rstrip("/")
        # capacity 1: requests are evenly spaced, never bursting above the rate in any window
        self.limiter = AsyncLimiter(1, 1.0 / (tenant.rate_limit * RATE_MARGIN))
        self._session: aiohttp.ClientSession | None = None
        self._not_before = 0.0
        self.requests = 0
        self.throttled = 0
        self.bucket_wait_seconds = 0.0

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl_context: ssl.SSLContext | bool = True
            if not self.tenant.verify_tls:
                ssl_context = False
            elif self.tenant.ca_file is not None:
                ssl_context = ssl.create_default_context(cafile=str(self.tenant.ca_file))
            self._session = aiohttp.ClientSession(
                base_url=self.base_url,
                headers={
                    "Netskope-Api-Token": self.tenant.token.get_secret_value(),
                    "Accept-Encoding": "gzip",
                    "User-Agent": USER_AGENT,
                },
                timeout=aiohttp.ClientTimeout(
                    total=self.tenant.timeout, sock_connect=min(30.0, self.tenant.timeout)
                ),
                connector=aiohttp.TCPConnector(ssl=ssl_context, limit=32),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def _take_token(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pause = self._not_before - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            await self.limiter.acquire()
            # A 429 may have come in while this request queued for its token: it holds back every
            # request of the tenant, so wait it out and queue again (keeping the bucket's spacing).
            if self._not_before <= loop.time():
                return

    async def fetch(self, kind: DataKind, subtype: str, index: str, operation: str) -> Page:
        """One attempt at one page; raises TransientError, BrokenPageError or AuthError."""
        waited = time.monotonic()
        await self._take_token()
        self.bucket_wait_seconds += time.monotonic() - waited
        self.requests += 1
        session = self._get_session()
        path = dataexport_path(kind, subtype)
        try:
            async with session.get(path, params={"index": index, "operation": operation}) as response:
                self._note_limits(response)
                if response.status != 200:
                    await self._raise_for(response, kind, subtype)
                try:
                    body = await response.read()
                except (
                    aiohttp.ClientPayloadError,
                    aiohttp.ServerDisconnectedError,
                    asyncio.IncompleteReadError,
                ) as exc:
                    raise BrokenPageError(f"body broken after 200: {type(exc).__name__}") from exc
        except (BrokenPageError, AuthError, TransientError):
            raise
        except TimeoutError as exc:
            raise TransientError(f"no answer within {self.tenant.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise TransientError(f"connection failed: {type(exc).__name__}: {exc}") from exc
        return _parse(body)

    def _note_limits(self, response: aiohttp.ClientResponse) -> None:
        # Only a refusal pauses the tenant. `ratelimit-remaining: 0` on an accepted request is what the
        # evenly spaced bucket produces at full speed (every 4th request of a second), and its reset is
        # rounded up to whole seconds: pausing on it cost up to 40 % of the throughput (bench_ingest).
        if response.status != 429:
            return
        headers = response.headers
        pause = _number(headers.get("Retry-After")) or _number(headers.get("ratelimit-reset"))
        if pause:
            loop = asyncio.get_running_loop()
            self._not_before = max(self._not_before, loop.time() + pause)

    async def _raise_for(self, response: aiohttp.ClientResponse, kind: str, subtype: str) -> None:
        status = response.status
        text = (await response.text(errors="replace"))[:300]
        where = f"{kind}/{subtype}"
        if status == 401:
            raise AuthError(f"tenant {self.tenant.name}: token refused (401) on {where}; check the API token")
        if status == 403:
            raise AuthError(
                f"tenant {self.tenant.name}: token may not read {where} (403); "
                "grant the endpoint or drop the subtype"
            )
        retry_after = _number(response.headers.get("Retry-After")) or _number(
            response.headers.get("ratelimit-reset")
        )
        if status == 429:
            self.throttled += 1
            raise TransientError(f"rate limited (429) on {where}", retry_after=retry_after or 1.0)
        raise TransientError(f"HTTP {status} on {where}: {text.strip()[:160]}", retry_after=retry_after)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def _parse(body: bytes) -> Page:
    if not body:
        raise BrokenPageError("empty body after 200")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BrokenPageError(f"malformed JSON page ({len(body)} bytes): {exc}") from exc
    if not isinstance(data, dict):
        raise BrokenPageError(f"page is a JSON {type(data).__name__}, not an object")
    if data.get("ok", 1) != 1:
        message = data.get("message") or data.get("error") or data.get("errors") or "no message"
        raise NotOkError(f"ok={data.get('ok')!r}: {str(message)[:200]}")
    records = data.get("result")
    if not isinstance(records, list):
        raise BrokenPageError("page has no `result` list")
    wait = _number(data.get("wait_time"))
    hwm = data.get("timestamp_hwm")
    return Page(
        records=records,
        wait_time=wait or 0.0,
        timestamp_hwm=hwm if isinstance(hwm, int) else None,
        size=len(body),
    )


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
