"""POST each ticket (and each duplicate's update, and a resolve) as JSON to any HTTP(S) endpoint.

The body is ``{"action": "create"|"update"|"resolve", "key", "rule", "title", "description",
"severity", "fields", "count", "alert", "ref"}``. A create carries ``Idempotency-Key: <ticket.key>``
(the receiver opens one ticket per key however often it is sent: a create whose answer was lost is
simply sent again); an update carries ``Idempotency-Key: <ticket.key>-update-<count>``. The answer
may be a JSON object with ``id`` and ``url`` (the receiver's ticket); without them the key is the id.

When ``find_url`` is set, ``find(key)`` GETs ``<find_url>?key=<key>``: 200 with ``{"id", "url"}`` is the
ticket opened earlier, 404 none.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.http import (
    HttpOptions,
    bearer,
    json_object,
    make_session,
    raise_for_status,
    read_body,
    transport_error,
)
from ce_daemon.plugin import Health, PluginContext, Ticket, TicketRef, TicketSink

MAX_ANSWER = 1_000_000


class TicketWebhookOptions(HttpOptions):
    """Options of the ``webhook`` ticket destination."""

    method: Literal["POST", "PUT"] = "POST"
    token: SecretStr | None = None
    """Sent as ``Authorization: Bearer <token>`` when set (other schemes: ``headers``)."""
    find_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """Where tickets are looked up by key (``GET find_url?key=…``); unset: the idempotency key alone."""
    alert: bool = True
    """Send the alert itself along (``alert``); off: the rendered fields only."""


class TicketWebhookSink(TicketSink[TicketWebhookOptions]):
    """The ``webhook`` ticket destination (a notification: no status to sync)."""

    api_version = 1
    tracks = False

    def __init__(self, options: TicketWebhookOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The one session of this destination (made on first use)."""
        if self._session is None or self._session.closed:
            extra = {} if self.options.token is None else {"Authorization": bearer(self.options.token)}
            self._session = make_session(self.options, self.context.base_dir, **extra)
        return self._session

    async def open(self) -> None:
        self.session()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def health(self) -> Health:
        """Nothing to probe: a webhook receiver answers only what it is sent."""
        return Health(ok=True, detail=self.options.url)

    def _body(self, action: str, ticket: Ticket | None, ref: TicketRef | None) -> bytes:
        body: dict[str, Any] = {"action": action}
        if ticket is not None:
            body.update({
                "key": ticket.key, "rule": ticket.rule, "title": ticket.title,
                "description": ticket.description, "severity": ticket.severity, "fields": dict(ticket.fields),
                "count": ticket.count,
            })  # fmt: skip
            if self.options.alert:
                body["alert"] = dict(ticket.alert)
        if ref is not None:
            body["ref"] = {"id": ref.id, "url": ref.url}
        return orjson.dumps(body, default=str)

    async def _send(self, body: bytes, idempotency_key: str, fallback: TicketRef) -> TicketRef:
        url = self.options.url
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        try:
            async with self.session().request(
                self.options.method, url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await raise_for_status(response, url)
                answer = json_object(await read_body(response, url, MAX_ANSWER))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, url) from exc
        if answer is None:
            return fallback
        found = answer.get("id")
        link = answer.get("url")
        return TicketRef(
            str(found) if isinstance(found, str | int) and str(found) else fallback.id,
            str(link) if isinstance(link, str) else fallback.url,
        )

    async def create(self, ticket: Ticket) -> TicketRef:
        """POST the ticket with its key as the idempotency key."""
        return await self._send(self._body("create", ticket, None), ticket.key, TicketRef(ticket.key))

    async def update(self, ref: TicketRef, ticket: Ticket) -> TicketRef:
        """POST the duplicate (the group's count) to the same endpoint."""
        return await self._send(self._body("update", ticket, ref), f"{ticket.key}-update-{ticket.count}", ref)

    async def resolve(self, ref: TicketRef) -> None:
        """POST a resolve for ``ref``."""
        await self._send(self._body("resolve", None, ref), f"{ref.id}-resolve", ref)

    async def find(self, key: str) -> TicketRef | None:
        """GET ``find_url?key=…`` when configured (None otherwise: the idempotency key protects a re-send)."""
        url = self.options.find_url
        if url is None:
            return None
        try:
            async with self.session().get(url, params={"key": key}, allow_redirects=False) as response:
                if response.status == 404:
                    return None
                await raise_for_status(response, url)
                answer = json_object(await read_body(response, url, MAX_ANSWER))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, url) from exc
        found = answer.get("id") if answer is not None else None
        if not isinstance(found, str | int) or not str(found):
            return None
        link = answer.get("url") if answer is not None else None
        return TicketRef(str(found), str(link) if isinstance(link, str) else "")
