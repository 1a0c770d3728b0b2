"""A fake BitSight ratings API: the portfolio's companies, with BitSight's authentication and errors.

- ``GET /ratings/v1/companies``: HTTP basic authentication, the API token as the user name and an
  empty password; ``{"my_company": {"guid"}, "companies": [...]}``. With ``limit`` (and ``offset``)
  the answer is one page and carries ``links`` (``next``: an absolute URL, null on the last page;
  ``previous``) and ``count``, as BitSight's paged endpoints do.
- Errors are Django REST framework's ``{"detail": "..."}``: 401 for missing or wrong credentials,
  400 for a bad ``limit``/``offset``, 429 ``Request was throttled`` with ``Retry-After``.

Usage::

    fake = FakeBitSight()
    fake.add_company("Teacup Demolition Corp.", 710, domain="teacupdemo.com")
    async with fake as url:
        ...

Scripted failures (:meth:`~ce_daemon.testing.fakes.base.FakeHttpServer.fail_next`) apply to
authenticated calls.
"""

from __future__ import annotations

import base64
import secrets
import ssl
import uuid
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

DEFAULT_TOKEN = "bitsight-fake-token-0123456789abcdef"  # noqa: S105 - the fake's own test token


class FakeBitSight(FakeHttpServer):
    """BitSight's portfolio endpoint on 127.0.0.1."""

    def __init__(self, *, token: str = DEFAULT_TOKEN, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context=ssl_context)
        self.token = token
        self.companies: list[dict[str, Any]] = []
        self.my_company = str(uuid.uuid4())

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.get("/ratings/v1/companies", self._companies)]

    def add_company(
        self, name: str, rating: Any, *, domain: str = "", rating_date: str = "2026-12-01", **extra: Any
    ) -> dict[str, Any]:
        """Add a company to the portfolio (``rating`` as given: a test may give garbage)."""
        company = {
            "guid": str(uuid.uuid4()),
            "custom_id": None,
            "name": name,
            "shortname": name[:10],
            "network_size_v4": 256,
            "rating": rating,
            "rating_date": rating_date,
            "date_added": "2024-01-02",
            "industry": "Technology",
            "industry_slug": "technology",
            "sub_industry": "Software",
            "sub_industry_slug": "software",
            "type": "CURATED",
            "subscription_type": "Total Risk Monitoring",
            "subscription_type_key": "continuous_monitoring",
            "primary_domain": domain or f"{name.lower().replace(' ', '-')}.example",
            "security_grade": None,
            "grade_date": None,
            **extra,
        }
        self.companies.append(company)
        return company

    def refuse_credentials(self) -> None:
        """The token is regenerated: the one clients hold is refused from now on."""
        self.token = secrets.token_hex(16)

    def error_body(self, status: int) -> bytes:
        if status == 429:
            return orjson.dumps({"detail": "Request was throttled. Expected available in 1 second."})
        return orjson.dumps({"detail": HTTPStatus(status).phrase})

    async def _companies(self, request: web.Request) -> web.Response:
        response = self._authenticate(request)
        if response is None:
            response = await self.intercept(request)
            if response is not None:
                return response
            response = self._page(request)
        await self.record(request, b"", response.status)
        return response

    def _authenticate(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return json_response({"detail": "Authentication credentials were not provided."}, 401)
        try:
            user, _, _password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            invalid = "Invalid basic header. Credentials not correctly base64 encoded."
            return json_response({"detail": invalid}, 401)
        if not secrets.compare_digest(user.encode(), self.token.encode()):
            return json_response({"detail": "Invalid token."}, 401)
        return None

    def _page(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"my_company": {"guid": self.my_company}}
        if "limit" not in request.query:
            return json_response({**body, "companies": self.companies})
        try:
            limit = int(request.query["limit"])
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return json_response({"detail": "limit and offset must be integers."}, 400)
        if limit < 1 or offset < 0:
            return json_response({"detail": "limit must be positive and offset not negative."}, 400)
        page = self.companies[offset : offset + limit]
        base = f"{self.url}{request.path}"
        following = offset + limit if offset + limit < len(self.companies) else None

        def at(start: int | None) -> str | None:
            return None if start is None else f"{base}?{urlencode({'limit': limit, 'offset': start})}"

        links = {"next": at(following), "previous": None if offset == 0 else at(max(0, offset - limit))}
        return json_response({**body, "links": links, "count": len(self.companies), "companies": page})
