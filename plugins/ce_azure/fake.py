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
        ...  # fake.rows holds every accepted row, decoded; await fake.wait_until(predicate)

Scripted failures (:meth:`~ce_daemon.testing.fakes.base.FakeHttpServer.fail_next`, ``code`` and
``message`` as Azure's error) and holds apply to authenticated ingestion calls only.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, VendorError, inflate, json_response

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


class FakeAzureMonitor(FakeHttpServer):
    """Entra ID plus a Logs Ingestion endpoint on 127.0.0.1, recording what it accepts."""

    auto_decompress = False  # the size limit applies to the bytes on the wire too

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
        super().__init__(ssl_context=ssl_context)
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

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/{tenant}/oauth2/v2.0/token", self._token),
            web.post("/dataCollectionRules/{dcr}/streams/{stream}", self._ingest),
        ]

    def refuse_credentials(self) -> None:
        """The client secret is rotated and every token revoked: token requests get 401 invalid_client."""
        self.client_secret = secrets.token_urlsafe(24)
        self.revoke_tokens()

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far (the next call with one gets 401 InvalidToken)."""
        self._tokens.clear()

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
        return json_response(body)

    # -- Logs Ingestion API -------------------------------------------------------------------

    async def _ingest(self, request: web.Request) -> web.Response:
        wire = await request.read()
        stream = request.match_info["stream"]
        try:
            call = await self._accept(request, wire, stream)
            response = web.Response(status=204)
        except VendorError as exc:
            headers = {"x-ms-error-code": exc.code, **exc.headers}
            body = {"error": {"code": exc.code, "message": exc.message}}
            response = json_response(body, exc.status, headers)
            call = IngestionCall(stream, len(wire), 0, False, [], exc.status)
        self.calls.append(call)
        await self.record(request, wire, response.status)
        return response

    async def _accept(self, request: web.Request, wire: bytes, stream: str) -> IngestionCall:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self._tokens:
            raise VendorError(401, "The access token is missing, invalid or expired.", code="InvalidToken")
        failure = await self.scripted()
        if failure is not None:
            code = failure.code or "ServiceError"
            raise VendorError(failure.status, failure.message, code=code, headers=failure.headers)
        if request.query.get("api-version") != "2023-01-01":
            raise VendorError(
                400, "The api-version query parameter must be 2023-01-01.", code="InvalidApiVersion"
            )
        dcr = request.match_info["dcr"]
        if dcr != self.dcr_immutable_id:
            raise VendorError(404, f"Data collection rule {dcr!r} not found.", code="NotFound")
        if stream not in self.streams:
            raise VendorError(
                400, f"Stream {stream!r} is not declared in the data collection rule.", code="InvalidStream"
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
            raise VendorError(413, too_large, code="ContentLengthLimitExceeded")
        try:
            data, compressed = inflate(request, wire)
        except ValueError as exc:
            raise VendorError(
                400, f"The body is not valid gzip: {exc}", code="InvalidContentEncoding"
            ) from exc
        if len(data) > limit:
            raise VendorError(413, too_large, code="ContentLengthLimitExceeded")
        return data, compressed

    def _rows(self, data: bytes) -> list[dict[str, Any]]:
        """The rows of a call: a JSON array of objects, each with the required columns."""
        try:
            rows = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise VendorError(400, f"The body is not valid JSON: {exc}", code="InvalidPayload") from exc
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise VendorError(400, "The body must be a JSON array of objects.", code="InvalidPayload")
        for n, row in enumerate(rows):
            missing = [column for column in self.required_columns if column not in row]
            if missing:
                raise VendorError(
                    400, f"Row {n} lacks the column(s) {', '.join(missing)}.", code="InvalidPayload"
                )
            if self.refuses(row):
                raise VendorError(400, f"Row {n} was refused.", code="InvalidPayload")
        return rows


def _entra_error(status: int, error: str, code: int, text: str) -> web.Response:
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {secrets.token_hex(8)}\r\nTimestamp: now",
        "error_codes": [code],
    }
    return json_response(body, status)
