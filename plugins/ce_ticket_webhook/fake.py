"""A ticket webhook receiver that honours ``Idempotency-Key``: one ticket per key, however often sent.

``POST path`` with a JSON object (``action`` create, update or resolve): a create opens a ticket
(``{"id", "url"}`` answered; the same key again answers the same ticket, counted in
:attr:`FakeTicketWebhook.replays`), an update or resolve is recorded against its ticket.
``GET find_path?key=…`` answers the ticket of a key, or 404. Scripting (429 with ``Retry-After``,
holds) comes from :class:`~ce_daemon.testing.fakes.base.FakeHttpServer`; ``token`` set: every request
must carry ``Authorization: Bearer <token>`` (401 otherwise).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response


@dataclass
class ReceivedTicket:
    """One ticket the receiver opened, with what came for it since."""

    id: str
    key: str
    body: dict[str, Any]
    updates: list[dict[str, Any]] = field(default_factory=list)
    resolved: bool = False


class FakeTicketWebhook(FakeHttpServer):
    """A JSON ticket receiver keyed by ``Idempotency-Key``."""

    def __init__(
        self, *, path: str = "/tickets", find_path: str = "/tickets/find", token: str | None = None
    ) -> None:
        super().__init__()
        self.path = path
        self.find_path = find_path
        self.token = token
        self.tickets: dict[str, ReceivedTicket] = {}
        """By idempotency key."""
        self.keys: list[str] = []
        """Every idempotency key received on a create, in order (replays too)."""
        self.replays = 0
        self.refusing = False
        """While True, creates are refused for good (422): the ticket fails."""
        self._answer_holds = 0
        self.answers_held = 0
        """Requests applied whose answer is being held (:meth:`hold_next_answer`)."""
        self._answers_released = asyncio.Event()

    def hold_next_answer(self, count: int = 1) -> None:
        """Apply the next ``count`` creates, then hold their answers until :meth:`release_answers`
        (the destination did it; the caller does not know yet)."""
        self._answer_holds += count
        self._answers_released = asyncio.Event()

    def release_answers(self) -> None:
        """Let every held answer go."""
        self._answers_released.set()

    async def _hold_answer(self) -> None:
        if self._answer_holds:
            self._answer_holds -= 1
            self.answers_held += 1
            await self.changed()
            await self._answers_released.wait()

    async def stop(self) -> None:
        self._answers_released.set()
        await super().stop()

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.post(self.path, self._receive), web.get(self.find_path, self._find)]

    def refuse_credentials(self) -> None:
        self.token = secrets.token_hex(16)

    def _authorised(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        return hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {self.token}")

    def by_id(self, ticket_id: str) -> ReceivedTicket | None:
        """The ticket with ``ticket_id``."""
        return next((t for t in self.tickets.values() if t.id == ticket_id), None)

    async def _receive(self, request: web.Request) -> web.Response:  # noqa: PLR0911 - one answer per case
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        body = await request.read()
        if not self._authorised(request):
            await self.record(request, body, 401)
            return json_response({"error": "unauthorized"}, 401)
        key = request.headers.get("Idempotency-Key", "")
        try:
            item = orjson.loads(body)
        except orjson.JSONDecodeError:
            await self.record(request, body, 400)
            return json_response({"error": "bad JSON"}, 400)
        if not key or not isinstance(item, dict):
            await self.record(request, body, 400)
            return json_response({"error": "an Idempotency-Key and a JSON object are required"}, 400)
        action = item.get("action")
        if action == "create":
            self.keys.append(key)
            if self.refusing:
                await self.record(request, body, 422)
                return json_response({"error": "the receiver refuses this ticket"}, 422)
            ticket = self.tickets.get(key)
            if ticket is None:
                ticket = self.tickets[key] = ReceivedTicket(f"T-{len(self.tickets) + 1}", key, item)
            else:
                self.replays += 1
            await self._hold_answer()
        else:
            ref = item.get("ref") or {}
            ticket = self.by_id(str(ref.get("id"))) if isinstance(ref, dict) else None
            if ticket is None:
                await self.record(request, body, 404)
                return json_response({"error": "no such ticket"}, 404)
            if action == "resolve":
                ticket.resolved = True
            else:
                ticket.updates.append(item)
        await self.record(request, body, 200)
        return json_response({"id": ticket.id, "url": f"{self.url}/tickets/{ticket.id}"})

    async def _find(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return json_response({"error": "unauthorized"}, 401)
        ticket = self.tickets.get(request.query.get("key", ""))
        if ticket is None:
            return json_response({"error": "not found"}, 404)
        return json_response({"id": ticket.id, "url": f"{self.url}/tickets/{ticket.id}"})
