"""A fake Twilio Messaging API that follows the documented requests, answers and errors.

- ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (form-encoded ``To``, ``From`` or
  ``MessagingServiceSid``, ``Body``), HTTP basic auth ``AccountSid:AuthToken``. Answers 201 with the
  message resource (``sid`` ``SM…``, ``status`` ``queued`` or ``accepted`` with a messaging service,
  ``to``, ``from``, ``body``, ``num_segments``…).
- Errors as Twilio sends them, ``{"code", "message", "more_info", "status"}``: 401/20003 "Authenticate";
  400/21211 "Invalid 'To' Phone Number" (not E.164, or in :attr:`FakeTwilio.invalid`); 400/21212
  invalid ``From``; 400/21602 "Message body is required"; 400/21617 body over 1,600 characters;
  400/21604 no ``To``; 400/21603 neither ``From`` nor ``MessagingServiceSid``; 404/20404 unknown account.
- ``GET /2010-04-01/Accounts/{AccountSid}.json`` answers the account (``status`` ``active``).
- Scripted failures (:meth:`fail_next`) answer Twilio's shape; 429 is code 20429 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_CODES = {400: 21211, 401: 20003, 404: 20404, 429: 20429, 500: 20500, 503: 20503}


@dataclass(frozen=True)
class Sms:
    """One message the fake accepted."""

    sid: str
    to: str
    sender: str
    body: str


class FakeTwilio(FakeHttpServer):
    """Twilio's Messages resource for one account."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context=ssl_context)
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.numbers = {"+15005550006"}
        self.services = {"MG" + secrets.token_hex(16)}
        self.invalid: set[str] = set()
        self.sent: list[Sms] = []

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/2010-04-01/Accounts/{account}/Messages.json", self._create),
            web.get("/2010-04-01/Accounts/{account}.json", self._account),
        ]

    def refuse_credentials(self) -> None:
        self.auth_token = secrets.token_hex(16)

    def error_body(self, status: int) -> bytes:
        return orjson.dumps(_payload(status, _CODES.get(status, 20001), HTTPStatus(status).phrase))

    async def intercept(self, request: web.Request) -> web.Response | None:
        failure = await self.scripted()
        if failure is None:
            return None
        code = int(failure.code) if failure.code is not None else _CODES.get(failure.status, 20001)
        message = (
            failure.message if failure.message != "scripted failure" else HTTPStatus(failure.status).phrase
        )
        body = (
            failure.body
            if failure.body is not None
            else orjson.dumps(_payload(failure.status, code, message))
        )
        await self.record(request, b"", failure.status)
        return web.Response(
            status=failure.status, body=body, headers=failure.headers, content_type="application/json"
        )

    def _authorised(self, request: web.Request) -> bool:
        pair = f"{self.account_sid}:{self.auth_token}".encode()
        expected = "Basic " + base64.b64encode(pair).decode()
        return request.match_info["account"] == self.account_sid and hmac.compare_digest(
            request.headers.get("Authorization", ""), expected
        )

    async def _account(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        return json_response({"sid": self.account_sid, "status": "active", "type": "Full"})

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self._authorised(request):
            await self.record(request, body, 401)
            return _error(401, 20003, "Authenticate")
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        form = await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
        response = self._message({key: str(value) for key, value in form.items()})
        await self.record(request, body, response.status)
        return response

    def _message(self, form: dict[str, str]) -> web.Response:  # noqa: PLR0911 -- one answer per documented error
        to, body = form.get("To", ""), form.get("Body", "")
        sender, service = form.get("From"), form.get("MessagingServiceSid")
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not _E164.match(to) or to in self.invalid:
            return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if sender is None and service is None:
            return _error(400, 21603, "The 'From' phone number is required.")
        if sender is not None and sender not in self.numbers:
            return _error(400, 21212, f"Invalid 'From' Phone Number: {sender}")
        if service is not None and service not in self.services:
            return _error(400, 21705, "Invalid Messaging Service Sid")
        if not body:
            return _error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return _error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        sms = Sms("SM" + secrets.token_hex(16), to, sender or str(service), body)
        self.sent.append(sms)
        return json_response(self._resource(sms, queued=sender is not None), 201)

    def _resource(self, sms: Sms, *, queued: bool) -> dict[str, Any]:
        return {
            "sid": sms.sid,
            "account_sid": self.account_sid,
            "to": sms.to,
            "from": sms.sender if sms.sender.startswith("+") else None,
            "messaging_service_sid": None if sms.sender.startswith("+") else sms.sender,
            "body": sms.body,
            "status": "queued" if queued else "accepted",
            "num_segments": str(max(1, -(-len(sms.body) // 153))),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sms.sid}.json",
        }


def _payload(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _error(status: int, code: int, message: str) -> web.Response:
    return json_response(_payload(status, code, message), status)
