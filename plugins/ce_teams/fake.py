"""A fake Microsoft Teams: legacy incoming webhooks and Workflows ("when a webhook request is received").

A legacy connector (``POST /webhookb2/<id>/IncomingWebhook/<secret>``) answers 200 with the body
``1``; a Workflows trigger (``POST /workflows/<id>/triggers/manual/paths/invoke?api-version=…&sig=…``)
answers 202 with no body. Both want JSON: a ``message`` whose attachments carry Adaptive Cards (the
connector also takes a MessageCard). A body that is not that answers 400 (the connector's "Bad
payload received by generic incoming webhook.", the flow's ``InvalidRequestContent``); a body over
28 KB answers 413; an unknown webhook 404; a Workflows URL with a wrong ``sig`` 401
(``DirectApiAuthorizationRequired``). A scripted 429 answers "Microsoft Teams endpoint returned HTTP
error 429 with ContextId …" with ``Retry-After``; :meth:`FakeTeams.throttle_with_200` answers that
text with a 200, as legacy connectors did.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

MAX_BYTES = 28 * 1024
CARD_TYPE = "application/vnd.microsoft.card.adaptive"
THROTTLED = "Microsoft Teams endpoint returned HTTP error 429 with ContextId tcid=0,server=fake,cv=fake"


class FakeTeams(FakeHttpServer):
    """Teams' webhook endpoints (see the module docstring); :attr:`cards` holds every card posted."""

    def __init__(self) -> None:
        super().__init__()
        self.connectors: dict[str, str] = {}  # id -> secret path part
        self.flows: dict[str, str] = {}  # id -> sig
        self.cards: list[dict[str, Any]] = []
        self._throttle_200 = 0

    def new_connector(self) -> str:
        """A new legacy incoming webhook's URL (the fake must be started)."""
        hook, secret = secrets.token_hex(8), secrets.token_hex(16)
        self.connectors[hook] = secret
        return f"{self.url}/webhookb2/{hook}/IncomingWebhook/{secret}"

    def new_flow(self) -> str:
        """A new Workflows trigger's URL, its ``sig`` the secret (the fake must be started)."""
        flow, sig = secrets.token_hex(8), secrets.token_urlsafe(24)
        self.flows[flow] = sig
        query = f"api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={sig}"
        return f"{self.url}/workflows/{flow}/triggers/manual/paths/invoke?{query}"

    def refuse_credentials(self) -> None:
        """Every Workflows signature is regenerated (the old URLs answer 401)."""
        for flow in self.flows:
            self.flows[flow] = secrets.token_urlsafe(24)

    def throttle_with_200(self, count: int = 1) -> None:
        """Answer the next ``count`` posts 200 with the 429 text in the body (a legacy connector's way)."""
        self._throttle_200 += count

    def error_body(self, status: int) -> bytes:
        if status == 429:
            return THROTTLED.encode()
        return f"Microsoft Teams endpoint returned HTTP error {status}".encode()

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/webhookb2/{hook}/IncomingWebhook/{secret}", self._connector),
            web.post("/workflows/{flow}/triggers/manual/paths/invoke", self._flow),
        ]

    async def _connector(self, request: web.Request) -> web.Response:
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        body = await request.read()
        expected = self.connectors.get(request.match_info["hook"])
        if expected is None or not hmac.compare_digest(expected, request.match_info["secret"]):
            return await self._answer(request, body, 404, "Not Found")
        if self._throttle_200:
            self._throttle_200 -= 1
            return await self._answer(
                request, body, 200, f"Webhook message delivery failed with error: {THROTTLED}"
            )
        if len(body) > MAX_BYTES:
            return await self._answer(request, body, 413, "Microsoft Teams endpoint returned HTTP error 413")
        card = _cards(body, legacy=True)
        if card is None:
            return await self._answer(request, body, 400, "Bad payload received by generic incoming webhook.")
        self.cards.extend(card)
        return await self._answer(request, body, 200, "1")

    async def _flow(self, request: web.Request) -> web.Response:
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        body = await request.read()
        expected = self.flows.get(request.match_info["flow"])
        if expected is None:
            await self.record(request, body, 404)
            return json_response(
                {"error": {"code": "WorkflowNotFound", "message": "The workflow was not found."}}, 404
            )
        if not hmac.compare_digest(expected, request.query.get("sig", "")):
            await self.record(request, body, 401)
            return json_response(
                {
                    "error": {
                        "code": "DirectApiAuthorizationRequired",
                        "message": "The request must be authenticated.",
                    }
                },
                401,
            )
        if len(body) > MAX_BYTES:
            await self.record(request, body, 413)
            return json_response(
                {"error": {"code": "MessageTooLarge", "message": "Request is too large."}}, 413
            )
        card = _cards(body, legacy=False)
        if card is None:
            await self.record(request, body, 400)
            return json_response(
                {"error": {"code": "InvalidRequestContent", "message": "The request content is not valid."}},
                400,
            )
        self.cards.extend(card)
        await self.record(request, body, 202)
        return web.Response(status=202)

    async def _answer(self, request: web.Request, body: bytes, status: int, text: str) -> web.Response:
        await self.record(request, body, status)
        return web.Response(status=status, text=text, content_type="text/plain")


def _cards(body: bytes, *, legacy: bool) -> list[dict[str, Any]] | None:  # noqa: PLR0911 - one per refusal
    """The Adaptive Cards of a message (or a legacy MessageCard), or None when Teams would refuse it."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    if legacy and message.get("@type") == "MessageCard":
        return [message]
    attachments = message.get("attachments")
    if message.get("type") != "message" or not isinstance(attachments, list) or not attachments:
        return None
    cards = []
    for attachment in attachments:
        if not isinstance(attachment, dict) or attachment.get("contentType") != CARD_TYPE:
            return None
        content = attachment.get("content")
        if (
            not isinstance(content, dict)
            or content.get("type") != "AdaptiveCard"
            or not isinstance(content.get("body"), list)
        ):
            return None
        cards.append(content)
    return cards
