"""A fake SecurityScorecard API: portfolios and their companies, with its authentication and errors.

- ``GET /portfolios``: ``{"entries": [{"id", "name", "privacy", "read_only"}], "total"}``.
- ``GET /portfolios/{id}/companies``: ``{"entries": [{"domain", "name", "score", "grade",
  "grade_url", "last30day_score_change", "industry", "size", "is_custom_vendor", "tags"}], "total"}``,
  the portfolio whole.
- ``Authorization: Token <key>``; errors are ``{"error": {"message", "statusCode"}}``: 401 for a
  missing or wrong key, 404 for an unknown portfolio, 429 with ``Retry-After``.

Scripted failures (:meth:`~ce_daemon.testing.fakes.base.FakeHttpServer.fail_next`) apply to
authenticated calls.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

DEFAULT_TOKEN = "ssc-fake-key-0123456789abcdef"  # noqa: S105 - the fake's own test key


def grade_of(score: Any) -> str:
    """SecurityScorecard's grade for a score (A 90+, B 80-89, C 70-79, D 60-69, F below)."""
    if not isinstance(score, int | float) or isinstance(score, bool):
        return ""
    for cut, grade in ((90, "A"), (80, "B"), (70, "C"), (60, "D")):
        if score >= cut:
            return grade
    return "F"


class FakeSecurityScorecard(FakeHttpServer):
    """SecurityScorecard's portfolio endpoints on 127.0.0.1."""

    def __init__(self, *, token: str = DEFAULT_TOKEN, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context=ssl_context)
        self.token = token
        self.portfolios: dict[str, dict[str, Any]] = {}
        """Portfolio id → ``{"name", "companies": [...]}``."""

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.get("/portfolios", self._portfolios),
            web.get("/portfolios/{portfolio}/companies", self._companies),
        ]

    def add_portfolio(self, name: str = "Vendors") -> str:
        """A new portfolio; its id."""
        portfolio = secrets.token_hex(12)
        self.portfolios[portfolio] = {"name": name, "companies": []}
        return portfolio

    def add_company(self, portfolio: str, domain: str, score: Any, **extra: Any) -> dict[str, Any]:
        """Add a company to ``portfolio`` (``score`` as given: a test may give garbage)."""
        company = {
            "domain": domain,
            "name": domain.split(".", maxsplit=1)[0].title(),
            "score": score,
            "grade": grade_of(score),
            "grade_url": f"https://s3.amazonaws.com/ssc-static/grades/{grade_of(score) or 'na'}.svg",
            "last30day_score_change": 0,
            "industry": "technology",
            "size": "size_more_than_10000",
            "is_custom_vendor": False,
            "tags": [],
            **extra,
        }
        self.portfolios[portfolio]["companies"].append(company)
        return company

    def refuse_credentials(self) -> None:
        """The API key is regenerated: the one clients hold is refused from now on."""
        self.token = secrets.token_hex(16)

    def error_body(self, status: int) -> bytes:
        return orjson.dumps({"error": {"message": HTTPStatus(status).phrase, "statusCode": status}})

    async def _portfolios(self, request: web.Request) -> web.Response:
        entries = [
            {"id": pid, "name": p["name"], "privacy": "private", "read_only": False}
            for pid, p in self.portfolios.items()
        ]
        return await self._answer(request, lambda: json_response({"entries": entries, "total": len(entries)}))

    async def _companies(self, request: web.Request) -> web.Response:
        def answer() -> web.Response:
            portfolio = self.portfolios.get(request.match_info["portfolio"])
            if portfolio is None:
                return _error(404, "portfolio not found")
            companies = portfolio["companies"]
            return json_response({"entries": companies, "total": len(companies)})

        return await self._answer(request, answer)

    async def _answer(self, request: web.Request, answer: Callable[[], web.Response]) -> web.Response:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Token ") or not secrets.compare_digest(
            header[6:].encode(), self.token.encode()
        ):
            response = _error(401, "invalid or missing authentication token")
        else:
            scripted = await self.intercept(request)
            if scripted is not None:
                return scripted
            response = answer()
        await self.record(request, b"", response.status)
        return response


def _error(status: int, message: str) -> web.Response:
    return json_response({"error": {"message": message, "statusCode": status}}, status)
