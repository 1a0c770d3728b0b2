"""A fake Microsoft Entra ID token endpoint and Microsoft Graph ``riskyUsers`` API, on one server.

- ``POST /{tenant}/oauth2/v2.0/token`` (client credentials): ``{"token_type", "expires_in",
  "ext_expires_in", "access_token"}``, or Entra's errors (400 ``invalid_request`` AADSTS90002 for an
  unknown tenant, 400 ``unauthorized_client`` AADSTS700016 for an unknown client, 401
  ``invalid_client`` AADSTS7000215 for a wrong secret, 400 ``invalid_scope``).
- ``GET /v1.0/identityProtection/riskyUsers``: a bearer token it issued; ``$top`` (1-500, else 400),
  ``$filter`` (``riskLevel eq '…'`` or ``riskState eq '…'``, else 400), ``$skiptoken``;
  ``{"@odata.context", "value": [riskyUser…], "@odata.nextLink"}`` with the next link absolute while
  more follow. A riskyUser: ``id``, ``isDeleted``, ``isProcessing``, ``riskLastUpdatedDateTime``,
  ``riskLevel``, ``riskState``, ``riskDetail``, ``userDisplayName``, ``userPrincipalName``.
- Graph's errors: ``{"error": {"code", "message", "innerError": {"date", "request-id",
  "client-request-id"}}}``: 401 ``InvalidAuthenticationToken``, 400 ``BadRequest``, 429
  ``TooManyRequests`` with ``Retry-After`` (scripted).

Scripted failures (:meth:`~ce_daemon.testing.fakes.base.FakeHttpServer.fail_next`, ``code`` and
``message`` as Graph's error) and holds apply to authenticated Graph calls only.
"""

from __future__ import annotations

import re
import secrets
import ssl
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

SCOPE = "https://graph.microsoft.com/.default"
TENANT_ID = "00000000-0000-0000-0000-0000000000aa"
CLIENT_ID = "11111111-1111-1111-1111-1111111111bb"
CLIENT_SECRET = "fake-graph-secret~0123456789"  # noqa: S105 - the fake's own test secret
_FILTER = re.compile(r"^\s*(riskLevel|riskState)\s+eq\s+'([A-Za-z]+)'\s*$")


class FakeGraph(FakeHttpServer):
    """Entra ID plus Graph's Identity Protection risky users, on 127.0.0.1."""

    def __init__(
        self,
        *,
        tenant_id: str = TENANT_ID,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        token_lifetime: int = 3599,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.users: list[dict[str, Any]] = []
        self.tokens_issued = 0
        self._tokens: set[str] = set()

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/{tenant}/oauth2/v2.0/token", self._token),
            web.get("/v1.0/identityProtection/riskyUsers", self._risky_users),
        ]

    def add_user(self, principal: str, level: str, *, state: str = "atRisk", **extra: Any) -> dict[str, Any]:
        """Add a risky user (fields as given: a test may give garbage)."""
        user = {
            "id": str(uuid.uuid4()),
            "isDeleted": False,
            "isProcessing": False,
            "riskLastUpdatedDateTime": "2026-12-01T10:00:00.1234567Z",
            "riskLevel": level,
            "riskState": state,
            "riskDetail": "none",
            "userDisplayName": principal.split("@", maxsplit=1)[0].title(),
            "userPrincipalName": principal,
            **extra,
        }
        self.users.append(user)
        return user

    def refuse_credentials(self) -> None:
        """The client secret is rotated and every token revoked: token requests get 401 invalid_client."""
        self.client_secret = secrets.token_urlsafe(24)
        self.revoke_tokens()

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far (a call with one gets 401 InvalidAuthenticationToken)."""
        self._tokens.clear()

    def error_body(self, status: int) -> bytes:
        return orjson.dumps(
            _graph_error(HTTPStatus(status).phrase.replace(" ", ""), HTTPStatus(status).phrase)
        )

    # -- Entra ID -----------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.match_info["tenant"] != self.tenant_id:
            response = _entra_error(400, "invalid_request", 90002, "Tenant not found.")
        elif form.get("grant_type") != "client_credentials":
            response = _entra_error(400, "unsupported_grant_type", 70003, "Unsupported grant type.")
        elif form.get("client_id") != self.client_id:
            response = _entra_error(
                400, "unauthorized_client", 700016, "Application was not found in the directory."
            )
        elif form.get("client_secret") != self.client_secret:
            response = _entra_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        elif form.get("scope") != SCOPE:
            response = _entra_error(
                400, "invalid_scope", 1002012, "The provided value for scope is not valid."
            )
        else:
            token = secrets.token_urlsafe(24)
            self._tokens.add(token)
            self.tokens_issued += 1
            lifetime = self.token_lifetime
            response = json_response(
                {
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": token,
                }
            )
        await self.record(request, b"", response.status)
        return response

    # -- Graph --------------------------------------------------------------------------------

    async def _risky_users(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self._tokens:
            response = json_response(
                _graph_error("InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
                401,
            )
        else:
            failure = await self.scripted()
            if failure is not None:
                body = failure.body
                if body is None:
                    body = orjson.dumps(_graph_error(failure.code or "TooManyRequests", failure.message))
                response = web.Response(
                    status=failure.status, body=body, headers=failure.headers, content_type="application/json"
                )
            else:
                response = self._page(request)
        await self.record(request, b"", response.status)
        return response

    def _page(self, request: web.Request) -> web.Response:
        try:
            top = int(request.query.get("$top", "100"))
            skip = int(request.query.get("$skiptoken", "0"))
        except ValueError:
            return json_response(_graph_error("BadRequest", "Invalid $top or $skiptoken."), 400)
        if not 1 <= top <= 500:
            message = f"Invalid page size specified: '{top}'. Must be between 1 and 500 inclusive."
            return json_response(_graph_error("BadRequest", message), 400)
        users = self.users
        wanted = request.query.get("$filter")
        if wanted is not None:
            match = _FILTER.match(wanted)
            if match is None:
                return json_response(_graph_error("BadRequest", "Invalid filter clause"), 400)
            users = [user for user in users if user.get(match.group(1)) == match.group(2)]
        body: dict[str, Any] = {
            "@odata.context": f"{self.url}/v1.0/$metadata#identityProtection/riskyUsers",
            "value": users[skip : skip + top],
        }
        if skip + top < len(users):
            query = {"$top": top, "$skiptoken": skip + top, **({"$filter": wanted} if wanted else {})}
            body["@odata.nextLink"] = f"{self.url}{request.path}?{urlencode(query, quote_via=quote)}"
        return json_response(body)


def _graph_error(code: str, message: str) -> dict[str, Any]:
    inner = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": str(uuid.uuid4()),
        "client-request-id": str(uuid.uuid4()),
    }
    return {"error": {"code": code, "message": message, "innerError": inner}}


def _entra_error(status: int, error: str, code: int, description: str) -> web.Response:
    trace = str(uuid.uuid4())
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {trace}",
        "error_codes": [code],
        "trace_id": trace,
    }
    return json_response(body, status)
