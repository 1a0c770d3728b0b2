"""The Netskope REST API v2 client: one session and one send window per tenant.

Every attempt, retries included, takes a slot of the tenant's :class:`SendWindow`, so however many
pollers a tenant has, the tenant never sees more than ``rate_limit`` requests in any second. Every
answer is bounded (``max_page_bytes`` after decompression, read whole within ``timeout``; nesting,
see `ce_daemon.netskope.pages`), its records kept as the tenant's JSON text when the fast path can
vouch for them (`ce_daemon.netskope.rawpages`; else parsed and repaired), and classified into the
core's error taxonomy by what it says about the server's cursor, which is what the pollers need to know:

- :class:`UncertainAnswerError`: the request may have reached the iterator, but no page came back
  (no answer in time, the connection lost, a 5xx, a 200 that is not a whole JSON page): the cursor
  may have moved, ask ``resend``.
- :class:`TransientError`: the request certainly did not move the cursor (no connection made, a 429
  or another 4xx refused it, ``ok != 1``): ask the same again.
- :class:`AuthError` (401, 403) and :class:`ComponentConfigError` (3xx: a redirect is never followed,
  the API token would go along): no retry until the settings change.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson

from ce_daemon import __version__
from ce_daemon.cluster.handle import LeaseHandle
from ce_daemon.config.model import Tenant
from ce_daemon.errors import AuthError, TransientError
from ce_daemon.http import excerpt, read_excerpt, redirect_error
from ce_daemon.netskope.pages import PageSyntaxError, Repair, parse_page, repair_records
from ce_daemon.netskope.rawpages import RecordTexts, split_page
from ce_daemon.netskope.sendwindow import SendWindow, Slot
from ce_daemon.netskope.subtypes import DataKind, dataexport_path

USER_AGENT = f"ce-daemon/{__version__}"
ABSENT_WAIT_FALLBACK = 30.0
"""Seconds to wait after a ``wait_time`` that is not a number as Cloud Exchange does when none is given."""
# What a page may be declared as: JSON, or bytes of no declared kind (many servers' default). Anything
# else (an HTML sign-in page, a proxy's text/plain error) is not the API answering, whatever it parses as.
_PAGE_TYPES = ("application/json", "text/json", "application/octet-stream")


class UncertainAnswerError(TransientError):
    """The request may have moved the server's cursor but no page came back: ask ``resend``.

    ``counter`` names the poller's status counter for this kind of failure.
    """

    counter = "lost_answers"


class AnswerTimeoutError(UncertainAnswerError):
    """No whole answer within ``timeout`` (none at all, or a body still arriving)."""

    counter = "timeouts"


class ServerError(UncertainAnswerError):
    """A 5xx: a gateway may answer it after the API built the page."""

    counter = "server_errors"


class BrokenPageError(UncertainAnswerError):
    """The server answered 200 but no page could be read: its cursor already moved, ask ``resend``."""

    counter = "broken_pages"


class OversizedPageError(BrokenPageError):
    """A 200 whose body exceeds ``max_page_bytes`` once decompressed (a compression bomb, say)."""

    counter = "oversized_pages"


class LeaseExpiredError(TransientError):
    """The unit's lease is not held (any more): the request was not sent."""


class NotOkError(TransientError):
    """The server answered ``ok != 1``: no page was delivered, retry the same operation (as CE does)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One answer of the data-export iterator.

    ``records`` are the texts the tenant sent when the fast path took the page
    (`ce_daemon.netskope.rawpages`), else parsed. ``wait_problem`` says how ``wait_time`` was corrected
    when the server's value was not sane; ``repairs`` lists the records whose values were stored as JSON
    text (a page orjson refused).
    """

    records: list[Any] | RecordTexts
    wait_time: float
    timestamp_hwm: int | None
    size: int
    wait_problem: str | None = None
    repairs: tuple[Repair, ...] = ()


class TenantClient:
    """Talks to one Netskope tenant's data-export iterator.

    ``requests``, ``throttled`` (429s) and ``bucket_wait_seconds`` (seconds requests waited for a slot
    of the send window, a 429 pause included) are running totals for metrics.
    """

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.base_url = tenant.url.rstrip("/")
        self.window = SendWindow.for_rate(tenant.rate_limit)
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
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_stamp_send)
            self._session = aiohttp.ClientSession(
                base_url=self.base_url,
                headers={
                    "Netskope-Api-Token": self.tenant.token.get_secret_value(),
                    "Accept-Encoding": "gzip",
                    "User-Agent": USER_AGENT,
                },
                # The whole exchange is bounded by `timeout` in fetch(); a connection that cannot be
                # made is told apart (the request never left) by its own, shorter bound.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(30.0, self.tenant.timeout)),
                connector=aiohttp.TCPConnector(ssl=ssl_context, limit=32),
                json_serialize=lambda o: orjson.dumps(o).decode(),
                trace_configs=[trace],
                middlewares=[_never_send_twice],
            )
        return self._session

    async def _take_slot(self) -> Slot:
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            pause = self._not_before - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            slot = await self.window.acquire()
            # A 429 may have come in while this request queued for its slot: it holds back every
            # request of the tenant, so wait it out and queue again.
            if self._not_before <= loop.time():
                self.bucket_wait_seconds += loop.time() - began
                return slot
            slot.unused()

    async def fetch(
        self, kind: DataKind, subtype: str, index: str, operation: str, lease: LeaseHandle | None = None
    ) -> Page:
        """One attempt at one page; raises TransientError, AuthError or ComponentConfigError.

        Under a ``lease`` the request carries its header, and is sent only while the lease is held;
        its answer is waited for no longer than the lease surely lasts: an answer that could come
        after another node took the unit over is no longer ours to commit (it is then an uncertain
        answer, which the next holder's ``resend`` brings back).
        """
        slot = await self._take_slot()
        timeout = self.tenant.timeout
        if lease is not None:
            timeout = min(timeout, lease.remaining())
            if timeout <= 0:
                slot.unused()
                raise LeaseExpiredError(f"lease of {lease.unit} not held: {kind}/{subtype} not asked")
        self.requests += 1
        session = self._get_session()
        where = f"{kind}/{subtype}"
        answered = False  # a 200 status line came back: what fails after it is a broken page
        loop = asyncio.get_running_loop()
        try:
            async with (
                asyncio.timeout(timeout),
                session.get(
                    dataexport_path(kind, subtype),
                    params={"index": index, "operation": operation},
                    headers=lease.header() if lease is not None else None,
                    allow_redirects=False,
                    trace_request_ctx=slot,
                ) as response,
            ):
                self._note_limits(response)
                if response.status != 200:
                    await self._raise_for(response, where)
                answered = True
                await self._check_type(response, where)
                body = await self._read(response, where)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            slot.unused()  # no connection, so the request never left
            raise TransientError(f"cannot connect to {self.base_url}: {exc}") from exc
        except TimeoutError as exc:
            what = "the page" if answered else "an answer"
            raise AnswerTimeoutError(
                f"no complete answer on {where} within {timeout:g}s (waiting for {what})"
            ) from exc
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            if answered:
                raise BrokenPageError(f"body broken after 200 on {where}: {type(exc).__name__}") from exc
            raise UncertainAnswerError(
                f"connection lost on {where} before an answer: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            slot.sent(loop.time())  # counted from now if the trace hook did not see it leave
        return self._page(body, where)

    def _note_limits(self, response: aiohttp.ClientResponse) -> None:
        # Only a refusal pauses the tenant: `ratelimit-remaining: 0` on an accepted request is what a
        # full window looks like at full speed, and the send window already waits for the oldest send.
        if response.status != 429:
            return
        pause = self._asked_delay(response)
        if pause:
            loop = asyncio.get_running_loop()
            self._not_before = max(self._not_before, loop.time() + pause)

    def _asked_delay(self, response: aiohttp.ClientResponse) -> float | None:
        """``Retry-After`` (else ``ratelimit-reset``) in seconds, capped at ``max_retry_delay``; or None."""
        headers = response.headers
        for name in ("Retry-After", "ratelimit-reset"):
            seconds = _number(headers.get(name))
            if seconds is not None and not math.isnan(seconds):
                return min(max(seconds, 0.0), self.tenant.max_retry_delay)
        return None

    async def _raise_for(self, response: aiohttp.ClientResponse, where: str) -> None:
        status = response.status
        name = self.tenant.name
        if 300 <= status < 400:
            fix = "set the tenant's `url` to the address the API answers at"
            raise redirect_error(status, response.headers, f"tenant {name}: {where}", fix)
        if status == 401:
            raise AuthError(f"tenant {name}: token refused (401) on {where}; check the API token")
        if status == 403:
            raise AuthError(
                f"tenant {name}: token may not read {where} (403); grant the endpoint or drop the subtype"
            )
        retry_after = self._asked_delay(response)
        if status == 429:
            self.throttled += 1
            self.window.refused()
            raise TransientError(f"rate limited (429) on {where}", retry_after=retry_after or 1.0)
        message = f"HTTP {status} on {where}: {await read_excerpt(response, 160)}"
        if status >= 500:
            raise ServerError(message, retry_after=retry_after)
        raise TransientError(message, retry_after=retry_after)

    async def _check_type(self, response: aiohttp.ClientResponse, where: str) -> None:
        declared = response.headers.get("Content-Type")
        if declared is None:
            return
        media = declared.split(";", 1)[0].strip().lower()
        if media in _PAGE_TYPES or media.endswith("+json"):
            return
        text = await read_excerpt(response, 120)
        raise BrokenPageError(f"{where} answered 200 with Content-Type {media}, not a JSON page: {text}")

    async def _read(self, response: aiohttp.ClientResponse, where: str) -> bytes:
        """The body, decompressed, refused as soon as it passes ``max_page_bytes``."""
        limit = self.tenant.max_page_bytes
        if response.content_length is not None and response.content_length > limit:
            raise OversizedPageError(
                f"{where} announced a body of {response.content_length:,} bytes, over max_page_bytes"
                f" ({limit:,})"
            )
        chunks: list[bytes] = []
        size = 0
        # aiohttp (>= 3.13.3) inflates in bounded steps as the body is read, so memory stays within
        # the limit plus one step whatever the compression ratio. Joined once at the end: a growing
        # bytearray copies a 15 MB page about eight times over.
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise OversizedPageError(
                    f"{where} answered more than max_page_bytes ({limit:,} bytes) once decompressed"
                    + (f", from {response.content_length:,} on the wire" if response.content_length else "")
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _page(self, body: bytes, where: str) -> Page:
        if not body:
            raise BrokenPageError(f"empty body after 200 on {where}")
        split = split_page(body)
        repairs: tuple[Repair, ...] = ()
        if split is not None:
            data, records = split.fields, split.records
        else:
            data, records, repairs = self._parsed(body, where)
        if data.get("ok", 1) != 1:
            message = data.get("message") or data.get("error") or data.get("errors") or "no message"
            raise NotOkError(f"ok={excerpt(repr(data.get('ok')), 40)}: {excerpt(str(message), 200)}")
        if not isinstance(records, list | RecordTexts):
            raise BrokenPageError(f"page on {where} has no `result` list")
        wait, problem = sane_wait_time(data.get("wait_time"), self.tenant.max_wait_time)
        hwm = data.get("timestamp_hwm")
        return Page(
            records=records,
            wait_time=wait,
            # an epoch SQLite can store (a hostile 2**64 - 1 would crash every commit of the stream)
            timestamp_hwm=hwm if type(hwm) is int and 0 <= hwm < 2**63 else None,
            size=len(body),
            wait_problem=problem,
            repairs=repairs,
        )

    def _parsed(self, body: bytes, where: str) -> tuple[dict[str, Any], Any, tuple[Repair, ...]]:
        """The slow path: the page parsed into dicts, its records repaired if the fallback read it."""
        try:
            data, slow_path = parse_page(body)
        except PageSyntaxError as exc:
            raise BrokenPageError(f"malformed JSON page on {where} ({len(body)} bytes): {exc}") from exc
        if not isinstance(data, dict):
            raise BrokenPageError(f"page on {where} is a JSON {type(data).__name__}, not an object")
        records = data.get("result")
        repairs = tuple(repair_records(records)) if slow_path and isinstance(records, list) else ()
        return data, records, repairs

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def sane_wait_time(value: object, upper: float) -> tuple[float, str | None]:
    """The pause the server asked for, within ``[0, upper]``; and what was wrong with it, if anything.

    Absent means no pause. A negative number means none either, a larger (or infinite) one is cut to
    ``upper``; anything but a number (a string, a bool, NaN) gets Cloud Exchange's default pause.
    """
    if value is None:
        return 0.0, None
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if math.isnan(number):
        fallback = min(ABSENT_WAIT_FALLBACK, upper)
        return fallback, f"wait_time {shown} is not a number: waiting {fallback:g}s"
    if number < 0:
        return 0.0, f"wait_time {shown} is negative: not waiting"
    if number > upper:
        return upper, f"wait_time {shown} exceeds max_wait_time: waiting {upper:g}s"
    return float(number), None


async def _never_send_twice(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Stop aiohttp from sending a GET again by itself when a reused connection drops before the answer.

    That silent second ``operation=next`` would move the cursor past the page the first one may already
    have moved it to: the page is lost. Raised as ours (not a ClientOSError), the loss reaches the poller,
    which asks ``resend``.
    """
    try:
        return await handler(request)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
        raise  # no connection: the request never left (and aiohttp does not retry these)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise UncertainAnswerError(
            f"connection lost on {request.url.path} before an answer: {type(exc).__name__}: {exc}"
        ) from exc


async def _stamp_send(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    """The trace hook that stamps a request's slot the moment its headers are written."""
    slot = context.trace_request_ctx
    if isinstance(slot, Slot):
        slot.sent(asyncio.get_running_loop().time())


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
