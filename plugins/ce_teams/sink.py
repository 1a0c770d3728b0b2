"""Post an Adaptive Card per ticket to Microsoft Teams: an incoming webhook or a Workflows URL.

The message is ``{"type": "message", "attachments": [{"contentType":
"application/vnd.microsoft.card.adaptive", "content": <AdaptiveCard 1.4>}]}``: the shape both a
Workflows ("Post to a channel when a webhook request is received") trigger and a legacy Office 365
connector accept; the legacy MessageCard format is not used (Workflows do not take it). The card
holds the title, the description, a FactSet (severity, rule, how often seen, the queue's fields)
and is kept under Teams' 28 KB message cap by cutting the description. Card text is Teams'
markdown subset, shown as sent.

Answers: a legacy connector says 200 with the body ``1``, a Workflows trigger 202 with no body;
400 is a payload Teams refused (:class:`PermanentError`); 401 and 403 a URL whose signature was
refused (:class:`AuthError`); 404 and 410 a webhook or flow that no longer exists
(:class:`ComponentConfigError`); 429 ("Microsoft Teams endpoint returned HTTP error 429", with
``Retry-After``) and 5xx are transient. Legacy connectors also answer *200* with that 429 text in the
body when Teams throttled the post: that too is a :class:`TransientError`.

A webhook cannot edit what it posted and gives no id: a duplicate posts a new card ("seen N times"),
:meth:`TeamsSink.find` answers None (a lost answer may post one card twice), and the ref's id is
the ticket's key. The URL is the secret (a Workflows URL carries its signature ``sig``): it is
never quoted in an error.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import SecretStr, field_validator

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    ConnectionOptions,
    HttpSession,
    excerpt,
    make_session,
    read_at_most,
    retry_after,
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    ComponentConfigError,
    Health,
    PluginContext,
    Ticket,
    TicketRef,
    TicketSink,
    TransientError,
    register_secret,
)

MAX_MESSAGE_BYTES = 27_000
"""Teams refuses messages over about 28 KB; the card is kept under this, with room for the envelope."""
CARD_TYPE = "application/vnd.microsoft.card.adaptive"
MAX_FACTS = 20
TITLE_LIMIT = 500
FACT_LIMIT = 1000
_THROTTLED = "HTTP error 429"
_COLOURS = {"critical": "Attention", "high": "Attention", "medium": "Warning"}


class TeamsOptions(ConnectionOptions):
    """Options of the ``teams`` ticket destination."""

    webhook_url: SecretStr
    """The incoming webhook's or Workflows trigger's URL; the URL is the secret."""

    @field_validator("webhook_url")
    @classmethod
    def _is_a_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("webhook_url must be an http(s) URL")  # the value itself is not quoted
        return value


class TeamsSink(HttpSession, TicketSink[TeamsOptions]):
    """The ``teams`` ticket destination (an Adaptive Card per ticket; a duplicate posts another)."""

    api_version = 1

    def __init__(self, options: TeamsOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self._url = options.webhook_url.get_secret_value()
        parts = urlsplit(self._url)
        self._secrets = [self._url, self._url[len(f"{parts.scheme}://{parts.netloc}") :]]
        if parts.query:
            self._secrets.append(parts.query)
        for secret in self._secrets:
            register_secret(secret)

    def new_session(self) -> aiohttp.ClientSession:
        """The destination's session, made on first use by :meth:`session`."""
        return make_session(self.options, self.context.base_dir)

    async def health(self) -> Health:
        """Not probed: a webhook has no call that checks it without posting."""
        return Health(ok=True, detail="Teams webhook (not probed: a probe would post)")

    async def create(self, ticket: Ticket) -> TicketRef:
        """Post the ticket's card."""
        await self._post(message(ticket))
        return TicketRef(id=ticket.key)

    async def update(self, ref: TicketRef, ticket: Ticket) -> TicketRef:
        """Post a new card for the duplicate (a webhook cannot edit what it posted)."""
        await self._post(message(ticket, repeat=True))
        return ref

    async def _post(self, payload: dict[str, Any]) -> None:
        target = "Teams webhook"
        try:
            async with self.session().post(
                self._url,
                data=orjson.dumps(payload),
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
            ) as response:
                status, headers = response.status, response.headers
                raw = await read_at_most(response, ERROR_BODY_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            text = str(transport_error(exc, target))
            for secret in self._secrets:
                text = text.replace(secret, "[REDACTED]")
            raise TransientError(excerpt(text, 1000)) from exc
        said = excerpt(raw)
        answered = f"{target} answered HTTP {status}" + (f": {said}" if said else "")
        if status == 429 or (200 <= status < 300 and _THROTTLED in said):
            raise TransientError(answered, retry_after=retry_after(headers))
        if 200 <= status < 300:
            return
        if status in (404, 410):
            raise ComponentConfigError(f"{answered} (the webhook or flow no longer exists: make a new one)")
        raise status_error(status, answered, headers, target)


def message(ticket: Ticket, *, repeat: bool = False) -> dict[str, Any]:
    """The Teams message of ``ticket``: one Adaptive Card attachment, under :data:`MAX_MESSAGE_BYTES`."""
    seen = "seen once" if ticket.count <= 1 else f"seen {ticket.count} times"
    title = _cut(f"{ticket.title} ({seen})" if repeat else ticket.title, TITLE_LIMIT)
    facts = [
        {"title": "Severity", "value": _cut(ticket.severity, FACT_LIMIT)},
        {"title": "Rule", "value": _cut(ticket.rule, FACT_LIMIT)},
        {"title": "Seen", "value": seen},
        *(
            {"title": _cut(name, FACT_LIMIT), "value": _cut(value, FACT_LIMIT)}
            for name, value in list(ticket.fields.items())[: MAX_FACTS - 3]
        ),
    ]
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": title or "(no title)",
            "size": "Large",
            "weight": "Bolder",
            "style": "heading",
            "wrap": True,
            "color": _COLOURS.get(ticket.severity, "Default"),
        },
        {"type": "TextBlock", "text": "", "wrap": True},
        {"type": "FactSet", "facts": facts},
    ]
    card = {
        "type": "message",
        "attachments": [
            {
                "contentType": CARD_TYPE,
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "msteams": {"width": "Full"},
                    "body": body,
                },
            }
        ],
    }
    room = MAX_MESSAGE_BYTES - len(orjson.dumps(card))
    if room < 0:  # the queue's fields alone are too large: keep severity, rule and count
        del facts[3:]
        room = MAX_MESSAGE_BYTES - len(orjson.dumps(card))
    description = "" if repeat else ticket.description
    body[1]["text"] = _fit(description, room) if description else (seen if repeat else "(no description)")
    return card


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fit(text: str, room: int) -> str:
    """``text`` cut so that its JSON form takes at most ``room`` bytes (an ellipsis ends a cut text)."""
    if len(orjson.dumps(text)) - 2 <= room:
        return text
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits, with the ellipsis
        middle = (low + high + 1) // 2
        if len(orjson.dumps(text[:middle] + "…")) - 2 <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "…" if low else ""
