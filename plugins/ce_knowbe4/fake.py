"""A fake KnowBe4 Reporting API: ``GET /v1/users`` with the Bearer API key, paged as KnowBe4 pages.

Follows the Reporting API's documentation (developer.knowbe4.com/rest/reporting):

- ``Authorization: Bearer <key>``; a missing or wrong key answers 401 ``{"message": "Unauthorized"}``.
- ``GET /v1/users``: ``page`` (from 1), ``per_page`` (default 100, at most 500: more is 400),
  ``status`` (``active`` or ``archived``; without it, every user), ``group_id`` (recorded, not applied).
  Answers a JSON array of users, each ``{"id", "employee_number", "first_name", "last_name",
  "job_title", "email", "phish_prone_percentage", "current_risk_score", "status", "department",
  "location", "division", "groups", "joined_on", "last_sign_in", "archived_at", ...}``; a page past
  the end is ``[]``.

Scripted failures (:meth:`FakeHttpServer.fail_next`, ``Retry-After`` for a 429) apply before auth.
:meth:`FakeKnowBe4.refuse_credentials` rotates the key.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

MAX_PER_PAGE = 500


class FakeKnowBe4(FakeHttpServer):
    """One KnowBe4 account's users (see the module docstring)."""

    def __init__(self, users: Iterable[dict[str, Any]] = ()) -> None:
        super().__init__()
        self.key = secrets.token_urlsafe(40)
        self.users: list[dict[str, Any]] = list(users)

    def add_user(
        self, email: str, score: Any = 25.5, *, status: str = "active", **fields: Any
    ) -> dict[str, Any]:
        """A new user with ``email`` and ``current_risk_score`` ``score`` (absent when ``...``)."""
        number = len(self.users) + 1
        user: dict[str, Any] = {
            "id": 1000 + number,
            "employee_number": str(number),
            "first_name": f"First{number}",
            "last_name": f"Last{number}",
            "job_title": "Analyst",
            "email": email,
            "phish_prone_percentage": 12.5,
            "status": status,
            "department": "Finance",
            "location": "Paris",
            "division": None,
            "groups": [3264],
            "joined_on": "2024-03-01T12:00:00.000Z",
            "last_sign_in": None,
            "archived_at": None if status == "active" else "2026-01-01T00:00:00.000Z",
            **fields,
        }
        if score is not ...:
            user["current_risk_score"] = score
        self.users.append(user)
        return user

    def refuse_credentials(self) -> None:
        """The API key is reset: the one clients hold is refused from now on."""
        self.key = secrets.token_urlsafe(40)

    def error_body(self, status: int) -> bytes:
        return orjson.dumps({"message": "scripted failure"})

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.get("/v1/users", self._users)]

    async def _users(self, request: web.Request) -> web.Response:
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return await self._answer(request, {"message": "Unauthorized"}, 401)
        try:
            page = int(request.query.get("page", "1"))
            per_page = int(request.query.get("per_page", "100"))
        except ValueError:
            return await self._answer(request, {"message": "page and per_page must be numbers"}, 400)
        if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
            return await self._answer(
                request, {"message": f"per_page must be between 1 and {MAX_PER_PAGE}"}, 400
            )
        status = request.query.get("status")
        users = [u for u in self.users if status is None or u.get("status") == status]
        return await self._answer(request, users[(page - 1) * per_page : page * per_page])

    async def _answer(self, request: web.Request, payload: Any, status: int = 200) -> web.Response:
        await self.record(request, b"", status)
        return json_response(payload, status)
