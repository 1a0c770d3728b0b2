"""Trigger and resolve PagerDuty alerts through the Events API v2, ``dedup_key`` = the ticket's key.

``POST {url}`` (``https://events.pagerduty.com/v2/enqueue``; ``events.eu.pagerduty.com`` for EU
accounts) with ``routing_key`` (an Events API v2 integration key), ``event_action`` and
``dedup_key``. A trigger carries ``payload``: ``summary`` (the title, cut to 1,024 characters),
``source``, ``severity`` (critical → critical, high → error, medium → warning, low and
informational → info), ``timestamp`` (the alert's, when it has one), ``component``, ``group`` and
``class`` when the queue maps fields of those names, and ``custom_details``: the other fields, the
rule, the description and the count. An event over 512,000 bytes keeps only the rule and count in
``custom_details`` (PagerDuty's cap).

PagerDuty deduplicates by ``dedup_key``: a trigger for a key whose alert is open is appended to it,
so a create replayed after a lost answer opens no second incident (:meth:`PagerDutySink.find` is
therefore not needed and answers None), and :meth:`PagerDutySink.update` is simply another
trigger. :meth:`PagerDutySink.resolve` sends ``resolve`` for the key (one PagerDuty no longer knows
is silently ignored). The Events API gives no link and no status: the ref is the key alone.

Answers: 202 ``{"status": "success", "dedup_key": …}``; 400 ``{"status": "invalid event",
"errors": […]}`` → :class:`PermanentError` quoting the errors, except errors about the routing key
(every event would fail alike) → :class:`AuthError`; 429 → :class:`TransientError` with
``Retry-After``, or ``rate_limit_wait`` when PagerDuty gives none; 5xx and connection failures →
transient. The routing key never appears in an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    ConnectionOptions,
    HttpSession,
    excerpt,
    json_object,
    make_session,
    read_at_most,
    retry_after,
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    AuthError,
    Duration,
    Health,
    PermanentError,
    PluginContext,
    Ticket,
    TicketRef,
    TicketSink,
    TransientError,
    register_secret,
)

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SUMMARY_LIMIT = 1024
MAX_EVENT_BYTES = 512_000
SEVERITIES = {
    "critical": "critical",
    "high": "error",
    "medium": "warning",
    "low": "info",
    "informational": "info",
}
PAYLOAD_FIELDS = ("component", "group", "class")
"""Queue fields of these names go in the payload itself; the others in ``custom_details``."""


class PagerDutyOptions(ConnectionOptions):
    """Options of the ``pagerduty`` ticket destination."""

    routing_key: SecretStr
    """The integration key of an Events API v2 integration on a service (32 characters)."""
    url: Annotated[str, Field(pattern=r"^https?://")] = EVENTS_URL
    """The enqueue endpoint (``https://events.eu.pagerduty.com/v2/enqueue`` for EU accounts)."""
    source: Annotated[str, Field(min_length=1, max_length=255)] = "netskope-ce"
    """``payload.source``: the system the alerts come from."""
    client: Annotated[str, Field(min_length=1, max_length=255)] = "ce-daemon"
    """The ``client`` PagerDuty shows as the event's sender."""
    client_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """A link shown with the event (a Netskope tenant's alert page, say)."""
    rate_limit_wait: Duration = 30.0
    """How long to wait after a 429 that carries no ``Retry-After``."""


class PagerDutySink(HttpSession, TicketSink[PagerDutyOptions]):
    """The ``pagerduty`` ticket destination (Events API v2: trigger, re-trigger, resolve by ``dedup_key``)."""

    api_version = 1

    def __init__(self, options: PagerDutyOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        self._key = options.routing_key.get_secret_value()
        register_secret(self._key)

    def new_session(self) -> aiohttp.ClientSession:
        """The destination's session, made on first use by :meth:`session`."""
        return make_session(self.options, self.context.base_dir)

    async def health(self) -> Health:
        """Not probed: the Events API has no call that checks a routing key without sending an event."""
        return Health(ok=True, detail="PagerDuty Events API (not probed: a probe would send an event)")

    async def create(self, ticket: Ticket) -> TicketRef:
        """Trigger an alert with ``dedup_key`` = the ticket's key (a replay appends to the same alert)."""
        return TicketRef(id=await self._send(self._trigger(ticket)))

    async def update(self, ref: TicketRef, ticket: Ticket) -> TicketRef:
        """Trigger again with the same ``dedup_key``: PagerDuty appends it to the open alert."""
        await self._send(self._trigger(ticket, ref.id))
        return ref

    async def resolve(self, ref: TicketRef) -> None:
        """Resolve the alert of ``ref``'s ``dedup_key``."""
        await self._send({"routing_key": self._key, "event_action": "resolve", "dedup_key": ref.id})

    # -- events -----------------------------------------------------------------------------------

    def _trigger(self, ticket: Ticket, dedup_key: str | None = None) -> dict[str, Any]:
        details: dict[str, Any] = {
            name: value for name, value in ticket.fields.items() if name not in PAYLOAD_FIELDS
        }
        details.update(rule=ticket.rule, count=ticket.count, description=ticket.description)
        payload: dict[str, Any] = {
            "summary": _cut(ticket.title or f"{ticket.rule}: alert", SUMMARY_LIMIT),
            "source": self.options.source,
            "severity": SEVERITIES.get(ticket.severity, "info"),
            **{name: ticket.fields[name] for name in PAYLOAD_FIELDS if ticket.fields.get(name)},
            "custom_details": details,
        }
        stamp = _timestamp(ticket.alert)
        if stamp is not None:
            payload["timestamp"] = stamp
        event: dict[str, Any] = {
            "routing_key": self._key,
            "event_action": "trigger",
            "dedup_key": dedup_key or ticket.key,
            "client": self.options.client,
            "payload": payload,
        }
        if self.options.client_url is not None:
            event["client_url"] = self.options.client_url
        if len(orjson.dumps(event)) > MAX_EVENT_BYTES:
            payload["custom_details"] = {
                "rule": ticket.rule,
                "count": ticket.count,
                "note": f"details left out: the event was over {MAX_EVENT_BYTES:,} bytes",
            }
        return event

    async def _send(self, event: dict[str, Any]) -> str:
        """POST one event; the ``dedup_key`` PagerDuty answered (or the one sent)."""
        target = f"PagerDuty {event['event_action']}"
        try:
            async with self.session().post(
                self.options.url,
                data=orjson.dumps(event),
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
            ) as response:
                status, headers = response.status, response.headers
                raw = await read_at_most(response, ERROR_BODY_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = transport_error(exc, target)
            raise TransientError(excerpt(str(error).replace(self._key, "[REDACTED]"), 1000)) from exc
        answer = json_object(raw) or {}
        if 200 <= status < 300:
            key = answer.get("dedup_key")
            return key if isinstance(key, str) and key else str(event["dedup_key"])
        said = _said(answer, raw)
        message = f"{target} answered HTTP {status}" + (f": {said}" if said else "")
        if status == 429:
            wait = retry_after(headers)
            raise TransientError(message, retry_after=self.options.rate_limit_wait if wait is None else wait)
        if status == 400:
            if "routing" in said.lower():
                raise AuthError(f"{message} (check `routing_key`: an Events API v2 integration key)")
            raise PermanentError(message)
        raise status_error(status, message, headers, target)


def _said(answer: Mapping[str, Any], raw: bytes) -> str:
    """What PagerDuty said: its message and errors, or the start of a body that is not its JSON."""
    errors = answer.get("errors")
    parts = [str(answer.get("message") or "")]
    if isinstance(errors, list):
        parts.append("; ".join(str(e) for e in errors[:10]))
    text = ": ".join(p for p in parts if p)
    return excerpt(text) if text else excerpt(raw)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _timestamp(alert: Mapping[str, Any]) -> str | None:
    """The alert's time (Netskope's epoch-seconds ``timestamp``) as ISO 8601, if it has one."""
    value = alert.get("timestamp")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None
