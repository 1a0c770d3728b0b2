"""A fake Proofpoint TAP People API: ``GET /v2/people/vap`` with basic auth, paged by ``page`` and ``size``.

Follows the People API's documentation (help.proofpoint.com, Threat Insight Dashboard → API
Documentation → People API):

- HTTP basic with the service principal and its secret; without them or wrong: 401, plain text.
- ``window`` (required: 14, 30 or 90, else 400), ``size`` (default 1000), ``page`` (from 1).
- Answers ``{"users": [{"identity": {"guid", "customerUserId", "emails": [...], "name",
  "department", "location", "title", "vip"}, "threatStatistics": {"attackIndex", "families":
  [{"name", "score"}]}}], "totalVapUsers", "interval", "averageAttackIndex",
  "vapAttackIndexThreshold"}``, the users by attack index, highest first.
- Errors are plain text with the status's meaning (Proofpoint documents no error body); 429 once
  :attr:`FakeProofpoint.daily_limit` requests were made (50 in 24 hours, Proofpoint's limit), without
  ``Retry-After`` as Proofpoint sends none.

Scripted failures (:meth:`FakeHttpServer.fail_next`) apply before auth, as plain text.
:meth:`FakeProofpoint.refuse_credentials` rotates the secret.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response


class FakeProofpoint(FakeHttpServer):
    """One TAP customer's Very Attacked People (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.principal = str(uuid.uuid4())
        self.secret = secrets.token_hex(32)
        self.users: list[dict[str, Any]] = []
        self.daily_limit = 50
        self.calls = 0

    def add_user(self, *emails: str, attack_index: Any = 500, **identity: Any) -> dict[str, Any]:
        """A Very Attacked Person with ``emails`` and ``attack_index`` (absent when ``...``)."""
        statistics: dict[str, Any] = {"families": [{"name": "Credential Phishing", "score": 300}]}
        if attack_index is not ...:
            statistics["attackIndex"] = attack_index
        user = {
            "identity": {
                "guid": str(uuid.uuid4()),
                "customerUserId": None,
                "emails": list(emails),
                "name": f"Person {len(self.users) + 1}",
                "department": "Finance",
                "location": None,
                "title": "Controller",
                "vip": False,
                **identity,
            },
            "threatStatistics": statistics,
        }
        self.users.append(user)
        return user

    def refuse_credentials(self) -> None:
        """The service principal's secret is rotated: the one clients hold is refused."""
        self.secret = secrets.token_hex(32)

    def error_body(self, status: int) -> bytes:
        return HTTPStatus(status).phrase.encode()

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.get("/v2/people/vap", self._vap)]

    async def _vap(self, request: web.Request) -> web.Response:
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        expected = base64.b64encode(f"{self.principal}:{self.secret}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return await self._text(request, 401, "The request does not contain valid credentials.")
        self.calls += 1
        if self.calls > self.daily_limit:
            return await self._text(request, 429, "Too many requests: the limit is 50 requests in 24 hours.")
        size, page, problem = _paging(request.query)
        if problem:
            return await self._text(request, 400, problem)
        ranked = sorted(self.users, key=_index, reverse=True)
        indexes = [_index(u) for u in ranked]
        payload = {
            "users": ranked[(page - 1) * size : page * size],
            "totalVapUsers": len(ranked),
            "interval": "2026-11-03T13:00:00Z/2026-12-03T13:00:00Z",
            "averageAttackIndex": int(sum(indexes) / len(indexes)) if indexes else 0,
            "vapAttackIndexThreshold": 100,
        }
        await self.record(request, b"", 200)
        return json_response(payload)

    async def _text(self, request: web.Request, status: int, text: str) -> web.Response:
        await self.record(request, b"", status)
        return web.Response(status=status, text=text)


def _paging(query: Any) -> tuple[int, int, str]:
    """``size`` and ``page`` of a request, or what is wrong with them."""
    if query.get("window") not in ("14", "30", "90"):
        return 0, 0, "The window parameter must be one of 14, 30 or 90."
    try:
        size, page = int(query.get("size", "1000")), int(query.get("page", "1"))
    except ValueError:
        return 0, 0, "size and page must be integers."
    return size, page, "" if size >= 1 and page >= 1 else "size and page must be positive."


def _index(user: dict[str, Any]) -> float:
    value = user["threatStatistics"].get("attackIndex")
    return float(value) if isinstance(value, int | float) else 0.0
