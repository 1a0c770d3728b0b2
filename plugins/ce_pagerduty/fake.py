"""A fake PagerDuty Events API v2: ``POST /v2/enqueue``, with PagerDuty's deduplication by ``dedup_key``.

Validation follows the Events API v2 schema (``reference/events-v2/openapiv3.json``): ``routing_key``
of 32 alphanumeric characters and one the fake issued (else 400 ``Invalid routing key``),
``event_action`` one of trigger/acknowledge/resolve, ``dedup_key`` at most 255 characters and
required to acknowledge or resolve, and for a trigger a ``payload`` with ``summary`` (at most 1,024
characters), ``source`` and ``severity`` (critical/error/warning/info). A refusal answers 400
``{"status": "invalid event", "message": "Event object is invalid", "errors": […]}``; success 202
``{"status": "success", "message": "Event processed", "dedup_key": …}``.

Deduplication as PagerDuty does it: a trigger whose key has an open alert is appended to it (no new
incident); after a resolve the same key opens a new one; acknowledge and resolve of an unknown key
are accepted and ignored. :meth:`FakePagerDuty.lose_next_answer` processes the next event and then
drops the connection without answering (an answer lost on the way back). A scripted 429 answers
``{"status": "throttle event", …}``.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

SEVERITIES = frozenset({"critical", "error", "warning", "info"})
ACTIONS = frozenset({"trigger", "acknowledge", "resolve"})
MAX_EVENT_BYTES = 512_000
_KEY = re.compile(r"[A-Za-z0-9]{32}")


@dataclass
class Incident:
    """An incident the fake opened: its key, status and every event appended to it."""

    number: int
    dedup_key: str
    summary: str
    severity: str
    status: str = "triggered"
    events: list[dict[str, Any]] = field(default_factory=list)


class FakePagerDuty(FakeHttpServer):
    """The Events API v2 enqueue endpoint of one account (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.routing_keys = {secrets.token_hex(16)}
        self.incidents: list[Incident] = []
        self.events: list[dict[str, Any]] = []
        """Every event accepted, in order."""
        self._lose = 0

    @property
    def routing_key(self) -> str:
        """A routing key the fake accepts."""
        return next(iter(self.routing_keys))

    def open_incident(self, dedup_key: str) -> Incident | None:
        """The open (triggered or acknowledged) incident of ``dedup_key``."""
        return next((i for i in self.incidents if i.dedup_key == dedup_key and i.status != "resolved"), None)

    def refuse_credentials(self) -> None:
        """The integration is deleted: its routing key is refused from now on."""
        self.routing_keys = {secrets.token_hex(16)}

    def lose_next_answer(self, count: int = 1) -> None:
        """Process the next ``count`` events, then close the connection instead of answering."""
        self._lose += count

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.post("/v2/enqueue", self._enqueue)]

    def error_body(self, status: int) -> bytes:
        if status == 429:
            return orjson.dumps(
                {
                    "status": "throttle event",
                    "message": "Requests for this service are arriving too quickly. Please retry later.",
                }
            )
        return orjson.dumps({"status": "error", "message": "Internal server error"})

    async def _enqueue(self, request: web.Request) -> web.StreamResponse:
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        body = await request.read()
        errors = self._validate(body)
        if errors:
            await self.record(request, body, 400)
            return json_response(
                {"status": "invalid event", "message": "Event object is invalid", "errors": errors}, 400
            )
        event = orjson.loads(body)
        key = self._apply(event)
        await self.record(request, body, 202)
        if self._lose:
            self._lose -= 1
            assert request.transport is not None
            request.transport.close()  # processed, but the answer never reaches the caller
            return web.Response(status=202)
        return json_response({"status": "success", "message": "Event processed", "dedup_key": key}, 202)

    def _validate(self, body: bytes) -> list[str]:
        if len(body) > MAX_EVENT_BYTES:
            return [f"Event is too large (over {MAX_EVENT_BYTES} bytes)"]
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            return ["Event object is not valid JSON"]
        if not isinstance(event, dict):
            return ["Event object is not a JSON object"]
        errors: list[str] = []
        key = event.get("routing_key")
        if not isinstance(key, str) or not key:
            errors.append("'routing_key' is missing or blank")
        elif len(key) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        elif not _KEY.fullmatch(key):
            errors.append("'routing_key' cannot contain non-alphanumeric characters.")
        elif key not in self.routing_keys:
            errors.append("Invalid routing key")
        action = event.get("event_action")
        if action not in ACTIONS:
            errors.append(
                "'event_action' is missing or invalid (must be one of trigger, acknowledge, resolve)"
            )
        dedup = event.get("dedup_key")
        if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
            errors.append("'dedup_key' must be a string of at most 255 characters")
        if action in ("acknowledge", "resolve") and not dedup:
            errors.append("'dedup_key' is missing or blank")
        if action == "trigger":
            errors.extend(_payload_errors(event.get("payload")))
        return errors

    def _apply(self, event: dict[str, Any]) -> str:
        self.events.append(event)
        action = event["event_action"]
        key = event.get("dedup_key") or uuid.uuid4().hex
        incident = self.open_incident(key)
        if action == "trigger":
            if incident is None:
                payload = event["payload"]
                incident = Incident(len(self.incidents) + 1, key, payload["summary"], payload["severity"])
                self.incidents.append(incident)
            incident.events.append(event)
        elif incident is not None:
            incident.status = "resolved" if action == "resolve" else "acknowledged"
            incident.events.append(event)
        return str(key)


def _payload_errors(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    errors: list[str] = []
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary:
        errors.append("'payload.summary' is missing or blank")
    elif len(summary) > 1024:
        errors.append("'payload.summary' is too long (at most 1024 characters)")
    if not isinstance(payload.get("source"), str) or not payload.get("source"):
        errors.append("'payload.source' is missing or blank")
    if payload.get("severity") not in SEVERITIES:
        errors.append("'payload.severity' is invalid (must be one of critical, error, warning, info)")
    details = payload.get("custom_details")
    if details is not None and not isinstance(details, dict | str):
        errors.append("'payload.custom_details' must be an object")
    return errors
