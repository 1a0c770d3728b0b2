"""A fake CrowdStrike Falcon API: OAuth2 client credentials, the host scroll, ZTA assessments, host details.

Follows CrowdStrike's documented calls (the Falcon API's swagger, as FalconPy and PSFalcon use it):

- ``POST /oauth2/token`` (form ``client_id``, ``client_secret``, optional ``member_cid``) → 201
  ``{"access_token", "token_type": "bearer", "expires_in": 1799}``; a wrong client: 403
  ``access denied, invalid client``.
- ``GET /devices/queries/devices-scroll/v1`` (``limit`` 1-5000, ``offset`` an opaque token from the
  previous page, ``filter``, recorded but not applied) → ``{"meta": {"pagination": {"offset",
  "limit", "total"}}, "resources": [aid…], "errors": []}``; the last page's ``offset`` is empty.
- ``GET /zero-trust-assessment/entities/assessments/v1?ids=…`` (at most 100 ids) → ``resources`` of
  ``{"aid", "cid", "event_platform", "modified_time", "assessment": {"overall", "os",
  "sensor_config", "version"}, "assessment_items": {...}}``; ids without an assessment: 404 with the
  found ones in ``resources`` and an ``errors`` entry per missing id, as CrowdStrike answers.
- ``GET /devices/entities/devices/v2?ids=…`` (at most 100 ids here) → ``resources`` of
  ``{"device_id", "hostname", "platform_name", "os_version"}`` (404 likewise for unknown ids).

Every API answer is ``{"meta": {"query_time", "powered_by", "trace_id"}, "resources", "errors"}``;
a missing, unknown or expired bearer token is 401 ``access denied, invalid bearer token``.
Scripted failures (:meth:`FakeHttpServer.fail_next`) apply to the API calls before auth, in
CrowdStrike's error shape; a scripted 429 carries ``X-RateLimit-RetryAfter`` (epoch seconds) as
well as ``Retry-After``. :meth:`FakeCrowdStrike.expire_tokens` makes the tokens issued so far
lapse early (the client must renew once); :meth:`FakeCrowdStrike.refuse_credentials` rotates the
client secret and revokes every token.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

MAX_IDS = 100
MAX_SCROLL = 5000


@dataclass
class Host:
    """One host: its agent id, details and ZTA overall score (None: no assessment)."""

    aid: str
    hostname: str | None
    platform: str = "Windows"
    overall: Any = 80
    modified_time: str = "2026-12-01T10:00:00Z"

    def assessment(self, cid: str) -> dict[str, Any]:
        return {
            "aid": self.aid,
            "cid": cid,
            "event_platform": {"Windows": "Win", "Mac": "Mac", "Linux": "Lin"}.get(
                self.platform, self.platform
            ),
            "product_type_desc": "Workstation",
            "modified_time": self.modified_time,
            "sensor_file_status": "not deployed",
            "system_serial_number": "0",
            "assessment": {"overall": self.overall, "os": 90, "sensor_config": 70, "version": "3.6.1"},
            "assessment_items": {"os_signals": [], "sensor_signals": []},
        }

    def details(self, cid: str) -> dict[str, Any]:
        device: dict[str, Any] = {
            "device_id": self.aid,
            "cid": cid,
            "platform_name": self.platform,
            "os_version": "Windows 11",
        }
        if self.hostname is not None:
            device["hostname"] = self.hostname
        return device


def error_body(status: int, message: str, resources: list[Any] | None = None) -> dict[str, Any]:
    """CrowdStrike's envelope with one error."""
    return {"meta": _meta(), "resources": resources or [], "errors": [{"code": status, "message": message}]}


def _meta() -> dict[str, Any]:
    return {"query_time": 0.004, "powered_by": "fake-crowdstrike", "trace_id": str(uuid.uuid4())}


class FakeCrowdStrike(FakeHttpServer):
    """One CID's hosts and one API client (see the module docstring)."""

    def __init__(self, hosts: Iterable[Host] = ()) -> None:
        super().__init__()
        self.cid = secrets.token_hex(16)
        self.client_id = secrets.token_hex(16)
        self.client_secret = secrets.token_urlsafe(30)
        self.hosts: dict[str, Host] = {h.aid: h for h in hosts}
        self.tokens: dict[str, float] = {}
        """Tokens issued, with when each lapses (monotonic)."""
        self.token_lifetime = 1799
        self.tokens_issued = 0
        self.scrolls: dict[str, int] = {}

    def add_hosts(self, count: int, **fields: Any) -> list[Host]:
        """``count`` new hosts (``host-N``), with ``fields`` set on each."""
        made = []
        for _ in range(count):
            n = len(self.hosts)
            host = Host(aid=secrets.token_hex(16), hostname=f"HOST-{n}", **fields)
            self.hosts[host.aid] = host
            made.append(host)
        return made

    def expire_tokens(self) -> None:
        """Every token issued so far lapses now (a token revoked or expired early)."""
        self.tokens = dict.fromkeys(self.tokens, 0.0)

    def refuse_credentials(self) -> None:
        """The API client's secret is rotated and its tokens revoked."""
        self.client_secret = secrets.token_urlsafe(30)
        self.tokens.clear()

    def error_body(self, status: int) -> bytes:
        return orjson.dumps(error_body(status, "scripted failure"))

    async def intercept(self, request: web.Request) -> web.Response | None:
        response = await super().intercept(request)
        if response is not None and response.status == 429:
            wait = float(response.headers.get("Retry-After", "1") or 1)
            response.headers["X-RateLimit-Limit"] = "6000"
            response.headers["X-RateLimit-Remaining"] = "0"
            response.headers["X-RateLimit-RetryAfter"] = str(int(time.time() + wait))
        return response

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/oauth2/token", self._token),
            web.get("/devices/queries/devices-scroll/v1", self._scroll),
            web.get("/zero-trust-assessment/entities/assessments/v1", self._assessments),
            web.get("/devices/entities/devices/v2", self._devices),
        ]

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            response = json_response(error_body(403, "access denied, invalid client"), 403)
        else:
            token = secrets.token_urlsafe(48)
            self.tokens[token] = time.monotonic() + self.token_lifetime
            self.tokens_issued += 1
            response = json_response(
                {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime}, 201
            )
        await self.record(request, b"", response.status)
        return response

    async def _api(self, request: web.Request) -> web.Response | None:
        """The script, then the bearer token: an answer to give instead, or None to go on."""
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        if not header.startswith("Bearer ") or self.tokens.get(token, 0.0) <= time.monotonic():
            response = json_response(error_body(401, "access denied, invalid bearer token"), 401)
            await self.record(request, b"", 401)
            return response
        return None

    async def _scroll(self, request: web.Request) -> web.Response:
        refused = await self._api(request)
        if refused is not None:
            return refused
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_SCROLL:
            return await self._answer(
                request, error_body(400, f"limit must be between 1 and {MAX_SCROLL}"), 400
            )
        offset = request.query.get("offset", "")
        if offset and offset not in self.scrolls:
            return await self._answer(request, error_body(400, "invalid offset"), 400)
        start = self.scrolls.get(offset, 0)
        aids = sorted(self.hosts)[start : start + limit]
        end = start + len(aids)
        token = ""
        if end < len(self.hosts):
            token = secrets.token_urlsafe(24)
            self.scrolls[token] = end
        meta = {**_meta(), "pagination": {"offset": token, "limit": limit, "total": len(self.hosts)}}
        return await self._answer(request, {"meta": meta, "resources": aids, "errors": []})

    async def _assessments(self, request: web.Request) -> web.Response:
        return await self._entities(
            request, lambda h: h.assessment(self.cid) if h.overall is not None else None, "No ZTA data found"
        )

    async def _devices(self, request: web.Request) -> web.Response:
        return await self._entities(request, lambda h: h.details(self.cid), "Device not found")

    async def _entities(self, request: web.Request, render: Any, missing: str) -> web.Response:
        refused = await self._api(request)
        if refused is not None:
            return refused
        ids = request.query.getall("ids", [])
        if not ids or len(ids) > MAX_IDS:
            return await self._answer(
                request, error_body(400, f"between 1 and {MAX_IDS} ids are required"), 400
            )
        found: list[Any] = []
        errors: list[dict[str, Any]] = []
        for aid in ids:
            host = self.hosts.get(aid)
            entry = render(host) if host is not None else None
            if entry is None:
                errors.append({"code": 404, "message": f"{missing} for {aid}", "id": aid})
            else:
                found.append(entry)
        status = 404 if errors else 200
        return await self._answer(request, {"meta": _meta(), "resources": found, "errors": errors}, status)

    async def _answer(self, request: web.Request, payload: Any, status: int = 200) -> web.Response:
        await self.record(request, b"", status)
        return json_response(payload, status)
