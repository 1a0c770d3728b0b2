"""A fake Okta org: the users list and the User Risk API, with Okta's authentication, paging, rate
limits and errors.

- ``GET /api/v1/users?limit=&after=&filter=``: a JSON array of users (``id``, ``status``,
  ``profile.login``/``email``/``firstName``/``lastName``…), at most 200 a page; the ``Link`` header
  carries ``rel="self"`` and, while more follow, ``rel="next"`` (an absolute URL with ``after``).
  ``filter`` takes ``status eq "X"``; anything else is 400 ``E0000031``.
- ``GET /api/v1/users/{id}/risk``: ``{"riskLevel", "reason", "_links"}``; a user whose level was
  never set answers ``riskLevel: NONE``; an unknown user 404 ``E0000007``.
- ``Authorization: SSWS <token>``, else 401 ``E0000011`` (Invalid token provided).
- Every answer carries ``X-Rate-Limit-Limit``, ``X-Rate-Limit-Remaining`` and ``X-Rate-Limit-Reset``
  (epoch seconds); once :attr:`FakeOkta.remaining` is spent, a call is answered 429 ``E0000047``
  (the window then resets: ``reset_in`` seconds later as far as the headers say, at once in fact).
- Errors are ``{"errorCode", "errorSummary", "errorLink", "errorId", "errorCauses"}``.

Scripted failures (:meth:`~ce_daemon.testing.fakes.base.FakeHttpServer.fail_next`) apply to
authenticated calls; :attr:`FakeOkta.risk_delay` slows each risk answer (to see the concurrency).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import ssl
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

DEFAULT_TOKEN = "00okta-fake-api-token-0123456789abcdef"  # noqa: S105 - the fake's own test token
_STATUS_FILTER = re.compile(r'^\s*status\s+eq\s+"([A-Z_]+)"\s*$')
_CODES = {401: "E0000011", 403: "E0000006", 404: "E0000007", 429: "E0000047"}


class FakeOkta(FakeHttpServer):
    """An Okta org's users and their risk levels, on 127.0.0.1."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        rate_limit: int = 600,
        reset_in: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.token = token
        self.users: list[dict[str, Any]] = []
        self.risks: dict[str, Any] = {}
        """User id → the risk answer's body (a test may set garbage)."""
        self.rate_limit = rate_limit
        self.remaining = rate_limit
        self.reset_in = reset_in
        self.risk_delay = 0.0
        self.in_flight = 0
        self.most_in_flight = 0

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.get("/api/v1/users", self._list),
            web.get("/api/v1/users/{id}/risk", self._risk),
        ]

    def add_user(
        self, email: str, level: str | None = None, *, status: str = "ACTIVE", **profile: Any
    ) -> dict[str, Any]:
        """Add a user (with ``level`` as its risk level: LOW, MEDIUM, HIGH, or None for never set)."""
        user_id = "00u" + secrets.token_hex(8)
        user = {
            "id": user_id,
            "status": status,
            "created": "2024-01-02T10:00:00.000Z",
            "profile": {
                "login": email,
                "email": email,
                "firstName": email.split("@", maxsplit=1)[0].title(),
                "lastName": "Example",
                **profile,
            },
        }
        self.users.append(user)
        if level is not None:
            self.risks[user_id] = {"riskLevel": level, "reason": "Admin override risk"}
        return user

    def refuse_credentials(self) -> None:
        """The API token is revoked: the one clients hold is refused from now on."""
        self.token = secrets.token_hex(16)

    def error_body(self, status: int) -> bytes:
        return _error(status, _CODES.get(status, "E0000009"), HTTPStatus(status).phrase)

    async def _list(self, request: web.Request) -> web.Response:
        return await self._answer(request, lambda: self._users(request))

    async def _risk(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.risk_delay:
                await asyncio.sleep(self.risk_delay)
            return await self._answer(request, lambda: self._risk_of(request))
        finally:
            self.in_flight -= 1

    def _users(self, request: web.Request) -> web.Response:
        try:
            limit = min(200, max(1, int(request.query.get("limit", "200"))))
        except ValueError:
            return _answer(400, "E0000001", "Api validation failed: limit")
        users = self.users
        wanted = request.query.get("filter")
        if wanted is not None:
            match = _STATUS_FILTER.match(wanted)
            if match is None:
                return _answer(400, "E0000031", "Invalid search criteria.")
            users = [user for user in users if user["status"] == match.group(1)]
        after = request.query.get("after")
        start = 0
        if after is not None:
            ids = [user["id"] for user in users]
            start = ids.index(after) + 1 if after in ids else len(ids)
        page = users[start : start + limit]
        base = f"{self.url}{request.path}"
        keep = {"limit": str(limit), **({"filter": wanted} if wanted is not None else {})}
        links = [f'<{base}?{urlencode(keep, quote_via=quote)}>; rel="self"']
        if start + limit < len(users):
            following = urlencode({**keep, "after": page[-1]["id"]}, quote_via=quote)
            links.append(f'<{base}?{following}>; rel="next"')
        return json_response(page, headers={"Link": ", ".join(links)})

    def _risk_of(self, request: web.Request) -> web.Response:
        user_id = request.match_info["id"]
        if not any(user["id"] == user_id for user in self.users):
            return _answer(404, "E0000007", f"Not found: Resource not found: {user_id} (User)")
        body = self.risks.get(user_id, {"riskLevel": "NONE"})
        if isinstance(body, dict):
            body = {**body, "_links": {"user": {"href": f"{self.url}/api/v1/users/{user_id}"}}}
        return json_response(body)

    async def _answer(self, request: web.Request, answer: Callable[[], web.Response]) -> web.Response:
        header = request.headers.get("Authorization", "")
        if not header.startswith("SSWS ") or not secrets.compare_digest(
            header[5:].encode(), self.token.encode()
        ):
            response = _answer(401, "E0000011", "Invalid token provided")
        elif self.remaining <= 0:
            self.remaining = self.rate_limit  # the window resets (the headers say when)
            response = _answer(429, "E0000047", "API call exceeded rate limit due to too many requests.")
            self._limit_headers(response, remaining=0)
        else:
            scripted = await self.intercept(request)
            if scripted is not None:
                return scripted
            self.remaining -= 1
            response = answer()
            self._limit_headers(response, remaining=self.remaining)
        await self.record(request, b"", response.status)
        return response

    def _limit_headers(self, response: web.Response, *, remaining: int) -> None:
        response.headers["X-Rate-Limit-Limit"] = str(self.rate_limit)
        response.headers["X-Rate-Limit-Remaining"] = str(remaining)
        response.headers["X-Rate-Limit-Reset"] = str(int(time.time()) + self.reset_in)


def _error(status: int, code: str, summary: str) -> bytes:
    return orjson.dumps(
        {
            "errorCode": code,
            "errorSummary": summary,
            "errorLink": code,
            "errorId": "oae" + secrets.token_hex(10),
            "errorCauses": [],
        }
    )


def _answer(status: int, code: str, summary: str) -> web.Response:
    return web.Response(status=status, body=_error(status, code, summary), content_type="application/json")
