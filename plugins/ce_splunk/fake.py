"""A fake Splunk HTTP Event Collector that follows the documented HEC protocol.

- ``POST /services/collector/event`` (also ``/services/collector`` and ``…/1.0``): concatenated JSON
  envelopes, ``Authorization: Splunk <token>``, gzip accepted. Answers ``{"text", "code"}`` as
  Splunk does: 2 "Token is required" / 3 "Invalid authorization" (401), 4 "Invalid token" /
  1 "Token disabled" (403), 5 "No data", 6 "Invalid data format", 7 "Incorrect index",
  12 "Event field is required", 13 "Event field cannot be blank" (400, with
  ``invalid-event-number``, zero-based), 9 "Server is busy" (503), 10/11 channel errors.
  Events are parsed in order; those before an invalid one are indexed, the rest are not.
- Indexer acknowledgement (``ack=True``): a channel (``X-Splunk-Request-Channel`` or ``?channel=``)
  is required, each request gets an ``ackId``; ``POST /services/collector/ack`` answers
  ``{"acks": {"<id>": bool}}``; 14 "ACK is disabled" when it is off.
- ``GET /services/collector/health``: 200 code 17 "HEC is healthy", or 503 code 18.
- Bodies whose ``Content-Length`` exceeds ``max_content_length`` get 413, like ``limits.conf``'s cap.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Collection, Iterable
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

_HEC_PATHS = ("/services/collector", "/services/collector/event", "/services/collector/event/1.0")
_DECODER = json.JSONDecoder()


def hec_error(text: str, code: int, invalid_event: int | None = None) -> dict[str, Any]:
    """HEC's error body."""
    body: dict[str, Any] = {"text": text, "code": code}
    if invalid_event is not None:
        body["invalid-event-number"] = invalid_event
    return body


class FakeSplunk(FakeHttpServer):
    """The HEC endpoints of one Splunk instance; ``events`` holds the indexed envelopes (decoded).

    ``indexes``: the indexes the tokens may write to (None: any). Envelopes ``refuse_when`` returns
    True for are refused as "Invalid data format" (a per-event refusal to script).
    ``ack_after_polls``: how many polls an ack id needs before it turns true; ``acks_lost``: never.
    """

    def __init__(
        self,
        *,
        tokens: Collection[str] = ("00000000-0000-0000-0000-000000000000",),
        disabled_tokens: Collection[str] = (),
        indexes: Collection[str] | None = None,
        ack: bool = False,
        max_content_length: int = 1_000_000,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.tokens = set(tokens)
        self.disabled_tokens = set(disabled_tokens)
        self.indexes = None if indexes is None else set(indexes)
        self.ack = ack
        self.max_content_length = max_content_length
        self.healthy = True
        self.ack_after_polls = 0
        self.acks_lost = False
        self.events: list[dict[str, Any]] = []
        self.ack_polls = 0
        self._next_ack: dict[str, int] = {}
        self._ack_polls_by_id: dict[tuple[str, int], int] = {}

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        routes = [web.post(path, self._event) for path in _HEC_PATHS]
        routes.append(web.post("/services/collector/ack", self._ack))
        routes.extend(
            web.get(path, self._health)
            for path in ("/services/collector/health", "/services/collector/health/1.0")
        )
        return routes

    def refuse_credentials(self) -> None:
        """Every token is revoked: requests get 403 code 4 "Invalid token"."""
        self.tokens.clear()

    def error_body(self, status: int) -> bytes:
        known = {
            503: hec_error("Server is busy", 9),
            500: hec_error("Internal server error", 8),
            401: hec_error("Token is required", 2),
            403: hec_error("Invalid token", 4),
            400: hec_error("Invalid data format", 6),
        }
        return orjson.dumps(known.get(status, {"text": f"HTTP {status}"}))

    # -- checks shared by the endpoints ------------------------------------------------------

    def _auth_failure(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization")
        if header is None:
            return json_response(hec_error("Token is required", 2), 401)
        scheme, _, token = header.partition(" ")
        if scheme != "Splunk" or not token:
            return json_response(hec_error("Invalid authorization", 3), 401)
        if token in self.disabled_tokens:
            return json_response(hec_error("Token disabled", 1), 403)
        if token not in self.tokens:
            return json_response(hec_error("Invalid token", 4), 403)
        return None

    def _channel(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        channel = request.headers.get("X-Splunk-Request-Channel") or request.query.get("channel")
        if not channel:
            return None, json_response(hec_error("Data channel is missing", 10), 400)
        try:
            uuid.UUID(channel)
        except ValueError:
            return None, json_response(hec_error("Invalid data channel", 11), 400)
        return channel, None

    # -- endpoints ---------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        if self.healthy:
            return json_response({"text": "HEC is healthy", "code": 17})
        return json_response({"text": "HEC is unhealthy, queues are full", "code": 18}, 503)

    async def _event(self, request: web.Request) -> web.Response:
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        refused = self._auth_failure(request)
        channel = None
        if refused is None and self.ack:
            channel, refused = self._channel(request)
        if refused is None and (request.content_length or 0) > self.max_content_length:
            text = (
                f"Content-Length of {request.content_length} too large (maximum is {self.max_content_length})"
            )
            refused = json_response({"text": text}, 413)
        if refused is not None:
            await self.record(request, b"", refused.status)
            return refused
        body = await request.read()
        answer = self._index(body)
        if answer is None:
            reply: dict[str, Any] = {"text": "Success", "code": 0}
            if channel is not None:
                reply["ackId"] = self._next_ack.get(channel, 0)
                self._next_ack[channel] = reply["ackId"] + 1
            answer = json_response(reply)
        await self.record(request, body, answer.status)
        return answer

    def _index(self, body: bytes) -> web.Response | None:
        """Index the envelopes of ``body`` in order; the refusal of the first bad one, if any."""
        text = body.decode("utf-8", "replace")
        position, number = 0, 0
        if not text.strip():
            return json_response(hec_error("No data", 5), 400)
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            if position == len(text):
                return None
            try:
                envelope, position = _DECODER.raw_decode(text, position)
            except json.JSONDecodeError:
                return json_response(hec_error("Invalid data format", 6, number), 400)
            refusal = self._refusal(envelope, number)
            if refusal is not None:
                return refusal
            self.events.append(envelope)
            number += 1

    def _refusal(self, envelope: object, number: int) -> web.Response | None:
        if not isinstance(envelope, dict):
            return json_response(hec_error("Invalid data format", 6, number), 400)
        if "event" not in envelope:
            return json_response(hec_error("Event field is required", 12, number), 400)
        event = envelope["event"]
        if event is None or (isinstance(event, str) and not event.strip()):
            return json_response(hec_error("Event field cannot be blank", 13, number), 400)
        index = envelope.get("index")
        if index is not None and self.indexes is not None and index not in self.indexes:
            return json_response(hec_error("Incorrect index", 7, number), 400)
        if self.refuses(envelope):
            return json_response(hec_error("Invalid data format", 6, number), 400)
        return None

    async def _ack(self, request: web.Request) -> web.Response:
        refused = self._auth_failure(request)
        if refused is None and not self.ack:
            refused = json_response(hec_error("ACK is disabled", 14), 400)
        channel = None
        if refused is None:
            channel, refused = self._channel(request)
        if refused is not None or channel is None:
            assert refused is not None
            await self.record(request, b"", refused.status)
            return refused
        body = await request.read()
        try:
            asked = orjson.loads(body)["acks"]
            ids = [int(ack_id) for ack_id in asked]
        except (ValueError, KeyError, TypeError):
            answer = json_response(hec_error("Invalid data format", 6), 400)
            await self.record(request, body, answer.status)
            return answer
        self.ack_polls += 1
        statuses = {}
        for ack_id in ids:
            key = (channel, ack_id)
            polls = self._ack_polls_by_id.get(key, 0) + 1
            self._ack_polls_by_id[key] = polls
            issued = ack_id < self._next_ack.get(channel, 0)
            statuses[str(ack_id)] = issued and not self.acks_lost and polls > self.ack_after_polls
        answer = json_response({"acks": statuses})
        await self.record(request, body, answer.status)
        return answer
