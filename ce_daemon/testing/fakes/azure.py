"""A fake Microsoft Entra ID token endpoint and Azure Monitor Logs Ingestion API, on one server.

- ``POST /{tenant}/oauth2/v2.0/token`` (client credentials): ``{"token_type", "expires_in",
  "access_token"}``, or Entra's errors (400 ``invalid_request`` AADSTS90002 for an unknown tenant,
  400 ``unauthorized_client`` AADSTS700016 for an unknown client, 401 ``invalid_client``
  AADSTS7000215 for a wrong secret, 400 ``invalid_scope``).
- ``POST /dataCollectionRules/{dcr}/streams/{stream}?api-version=2023-01-01``: a bearer token it
  issued, a JSON array of objects (gzip or not), at most 1 MB (1,048,576 bytes) compressed or
  not, answered 204 with an empty body. Errors are ``{"error": {"code", "message"}}`` plus the
  ``x-ms-error-code`` header: 401 ``InvalidToken``, 404 ``NotFound`` (unknown DCR), 400
  ``InvalidStream``, 400 ``InvalidApiVersion``, 400 ``InvalidPayload``, 413
  ``ContentLengthLimitExceeded``, 429 ``TooManyRequests`` with ``Retry-After``.

Stricter than Azure on one point, on purpose: a row without the time column is refused (400),
where the real service would silently drop it; a test then sees the mistake.

Usage::

    fake = FakeAzureMonitor()
    async with fake as url:   # url serves both the authority and the DCE
        ...  # fake.rows holds every accepted row, decoded; await fake.wait_for_rows(n)
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
import ssl
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

API_LIMIT = 1_048_576
SCOPE = "https://monitor.azure.com/.default"


@dataclass(frozen=True, slots=True)
class IngestionCall:
    """One call to the ingestion API as received: its size on the wire and decoded, its rows, our answer."""

    stream: str
    wire_bytes: int
    json_bytes: int
    gzip: bool
    rows: list[dict[str, Any]]
    status: int


@dataclass(slots=True)
class _Planned:
    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


class AzureError(Exception):
    """An ingestion API error answer, raised inside the handler."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class FakeAzureMonitor:
    """Entra ID plus a Logs Ingestion endpoint on 127.0.0.1, recording what it accepts."""

    def __init__(
        self,
        *,
        tenant_id: str = "00000000-0000-0000-0000-00000000000a",
        client_id: str = "11111111-1111-1111-1111-11111111111b",
        client_secret: str = "fake-client-secret~0123456789",  # noqa: S107 - the fake's own test secret
        dcr_immutable_id: str = "dcr-00000000000000000000000000000000",
        streams: Iterable[str] = ("Custom-Netskope_CL",),
        required_columns: Iterable[str] = ("TimeGenerated",),
        max_body_bytes: int = API_LIMIT,
        token_lifetime: int = 3599,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.dcr_immutable_id = dcr_immutable_id
        self.streams = set(streams)
        self.required_columns = tuple(required_columns)
        self.max_body_bytes = max_body_bytes
        self.token_lifetime = token_lifetime
        self.rows: list[dict[str, Any]] = []
        """Every row accepted, decoded, in arrival order."""
        self.calls: list[IngestionCall] = []
        self.tokens_issued = 0
        self._tokens: set[str] = set()
        self._ssl = ssl_context
        self._planned: deque[_Planned | None] = deque()  # None: let that one through
        self._held = 0
        self._release = asyncio.Event()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- scripting ----------------------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int,
        code: str = "ServiceError",
        message: str = "scripted failure",
        *,
        retry_after: float | None = None,
        after: int = 0,
    ) -> None:
        """Answer the next ``count`` authenticated ingestion calls with this error,
        once ``after`` more of them have been answered normally."""
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        self._planned.extend([None] * after)
        self._planned.extend(_Planned(status, code, message, headers) for _ in range(count))

    def hold_next(self, count: int) -> None:
        """Keep the next ``count`` ingestion calls waiting (a slow service) until `release` or shutdown."""
        self._held += count

    def release(self) -> None:
        """Let held calls answer."""
        self._release.set()

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far (the next call with one gets 401 InvalidToken)."""
        self._tokens.clear()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds (checked after every call), at most ``timeout`` seconds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_for_rows(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` rows have been accepted."""
        await self.wait_for(lambda: len(self.rows) >= count, timeout)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> str:
        app = web.Application(client_max_size=64 * API_LIMIT)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_post("/dataCollectionRules/{dcr}/streams/{stream}", self._ingest)
        # The size limit applies to the bytes on the wire too: read them before any inflating.
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self.url = f"{'https' if self._ssl else 'http'}://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- Entra ID -----------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.match_info["tenant"] != self.tenant_id:
            return _entra_error(400, "invalid_request", 90002, "Tenant not found.")
        if form.get("grant_type") != "client_credentials":
            return _entra_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        if form.get("client_id") != self.client_id:
            return _entra_error(
                400, "unauthorized_client", 700016, "Application was not found in the directory."
            )
        if form.get("client_secret") != self.client_secret:
            return _entra_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        if form.get("scope") != SCOPE:
            return _entra_error(400, "invalid_scope", 1002012, "The provided value for scope is not valid.")
        token = secrets.token_urlsafe(24)
        self._tokens.add(token)
        self.tokens_issued += 1
        lifetime = self.token_lifetime
        body = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }
        return web.json_response(body)

    # -- Logs Ingestion API -------------------------------------------------------------------

    async def _ingest(self, request: web.Request) -> web.Response:
        wire = await request.read()
        stream = request.match_info["stream"]
        call: IngestionCall | None = None
        try:
            call = await self._accept(request, wire, stream)
            response = web.Response(status=204)
        except AzureError as exc:
            headers = {"x-ms-error-code": exc.code, **exc.headers}
            body = {"error": {"code": exc.code, "message": exc.message}}
            response = web.json_response(body, status=exc.status, headers=headers)
            call = IngestionCall(stream, len(wire), 0, False, [], exc.status)
        self.calls.append(call)
        async with self._changed:
            self._changed.notify_all()
        return response

    async def _accept(self, request: web.Request, wire: bytes, stream: str) -> IngestionCall:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self._tokens:
            raise AzureError(401, "InvalidToken", "The access token is missing, invalid or expired.")
        if self._held:
            self._held -= 1
            await self._release.wait()
        planned = self._planned.popleft() if self._planned else None
        if planned is not None:
            raise AzureError(planned.status, planned.code, planned.message, planned.headers)
        if request.query.get("api-version") != "2023-01-01":
            raise AzureError(400, "InvalidApiVersion", "The api-version query parameter must be 2023-01-01.")
        if request.match_info["dcr"] != self.dcr_immutable_id:
            raise AzureError(
                404, "NotFound", f"Data collection rule {request.match_info['dcr']!r} not found."
            )
        if stream not in self.streams:
            raise AzureError(
                400, "InvalidStream", f"Stream {stream!r} is not declared in the data collection rule."
            )
        data, compressed = self._body(request, wire)
        rows = self._rows(data)
        self.rows.extend(rows)
        return IngestionCall(stream, len(wire), len(data), compressed, rows, 204)

    def _body(self, request: web.Request, wire: bytes) -> tuple[bytes, bool]:
        """The JSON bytes of a call, inflated when gzip; the 1 MB limit holds before and after."""
        limit = self.max_body_bytes
        too_large = f"Maximum allowed content length: {limit} bytes ({limit / API_LIMIT:g} MB)."
        if len(wire) > limit:
            raise AzureError(413, "ContentLengthLimitExceeded", too_large)
        compressed = request.headers.get("Content-Encoding", "").lower() == "gzip"
        data = wire
        if compressed:
            try:
                data = gzip.decompress(wire)
            except (OSError, EOFError, zlib.error) as exc:
                raise AzureError(400, "InvalidContentEncoding", f"The body is not valid gzip: {exc}") from exc
        if len(data) > limit:
            raise AzureError(413, "ContentLengthLimitExceeded", too_large)
        return data, compressed

    def _rows(self, data: bytes) -> list[dict[str, Any]]:
        """The rows of a call: a JSON array of objects, each with the required columns."""
        try:
            rows = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise AzureError(400, "InvalidPayload", f"The body is not valid JSON: {exc}") from exc
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise AzureError(400, "InvalidPayload", "The body must be a JSON array of objects.")
        for n, row in enumerate(rows):
            missing = [column for column in self.required_columns if column not in row]
            if missing:
                raise AzureError(400, "InvalidPayload", f"Row {n} lacks the column(s) {', '.join(missing)}.")
        return rows


def _entra_error(status: int, error: str, code: int, text: str) -> web.Response:
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {secrets.token_hex(8)}\r\nTimestamp: now",
        "error_codes": [code],
    }
    return web.json_response(body, status=status)
