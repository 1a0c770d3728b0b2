"""The ticket orchestrator's HTTP API (``/api/v1/tickets/…``): the ticket list (filtered and sorted),
one ticket with its outbox, and the hand actions (retry a failed one, approve or decline one waiting
for approval), as ``ce-daemon tickets`` does them: each writes the outbox, the dispatcher acts."""

from __future__ import annotations

import time
from typing import Any, Final

from ce_daemon.api import ApiCall, ApiError, ApiRoute, Param, limit_param
from ce_daemon.tickets.store import StoredTicket, TicketStore

__all__ = ["listed", "ticket_routes"]

SORTS: Final = ("created", "updated", "status", "rule", "destination")
_TEXT_OR_NULL: Final = {"type": ["string", "null"]}
TICKET: Final[dict[str, Any]] = {
    "type": "object",
    "required": [
        "id",
        "key",
        "rule",
        "destination",
        "title",
        "status",
        "approval",
        "dedup_count",
        "created",
        "updated",
    ],
    "properties": {
        "id": {"type": "integer"},
        "key": {"type": "string"},
        "rule": {"type": "string"},
        "destination": {"type": "string"},
        "group": _TEXT_OR_NULL,
        "title": {"type": "string"},
        "external_id": _TEXT_OR_NULL,
        "url": _TEXT_OR_NULL,
        "status": {"type": "string"},
        "raw_status": _TEXT_OR_NULL,
        "approval": {"type": "string"},
        "dedup_count": {"type": "integer"},
        "first_alert": {"type": ["number", "null"]},
        "last_alert": {"type": ["number", "null"]},
        "created": {"type": "number"},
        "updated": {"type": "number"},
        "last_error": _TEXT_OR_NULL,
        "attempts": {"type": "integer"},
    },
}
INTENT: Final = {
    "type": "object",
    "required": ["id", "intent", "state", "attempts"],
    "properties": {
        "id": {"type": "integer"},
        "intent": {"type": "string"},
        "state": {"type": "string"},
        "attempts": {"type": "integer"},
    },
}


async def listed(call: ApiCall) -> list[StoredTicket]:
    """The tickets ``call``'s arguments ask for (``rule destination status since sort limit``)."""
    a = call.args
    since = None if a["since"] is None else time.time() - a["since"]
    return await TicketStore(call.store).search(
        rule=a["rule"], destination=a["destination"], status=a["status"], since=since, sort=a["sort"],
        limit=a["limit"],
    )  # fmt: skip


async def _list(call: ApiCall) -> Any:
    return {"tickets": [t.as_dict() for t in await listed(call)]}


async def _find(call: ApiCall) -> Any:
    tickets = TicketStore(call.store)
    found = await tickets.find(call.args["ticket"])
    if found is None:
        raise ApiError(404, f"no ticket {call.args['ticket']!r}")
    return found, tickets


async def _show(call: ApiCall) -> Any:
    found, tickets = await _find(call)
    return {**found.as_dict(), "intents": await tickets.intents(found.key)}


def _act(action: str) -> Any:
    async def act(call: ApiCall) -> Any:
        found, tickets = await _find(call)
        if action == "retry":
            done = await tickets.retry(found.key)
            refusal = f"ticket {found.id} has no failed intent (status {found.status})"
        else:
            done = await tickets.decide(found.key, action == "approve")
            refusal = f"ticket {found.id} is not waiting for approval (approval {found.approval})"
        if not done:
            raise ApiError(409, refusal)
        after = await tickets.find(found.key)
        assert after is not None
        return {"ticket": after.as_dict(), "action": action}

    return act


def ticket_routes() -> list[ApiRoute]:
    """The tickets job's routes."""
    ticket = Param("ticket", "the ticket's id or key", where="path", required=True)
    listed = {
        "type": "object",
        "required": ["tickets"],
        "properties": {"tickets": {"type": "array", "items": TICKET}},
    }
    shown = {
        **TICKET,
        "required": [*TICKET["required"], "intents"],
        "properties": {**TICKET["properties"], "intents": {"type": "array", "items": INTENT}},
    }
    acted = {
        "type": "object",
        "required": ["ticket", "action"],
        "properties": {"ticket": TICKET, "action": {"type": "string"}},
    }
    return [
        ApiRoute(
            "GET",
            "/tickets",
            _list,
            "Tickets, filtered and sorted (newest first by default)",
            listed,
            (
                Param("rule", "only this rule"),
                Param("destination", "only this destination"),
                Param("status", "only this status (new, in_progress, closed, failed …)"),
                Param("since", "only those updated in the last this many seconds", "number", minimum=0),
                Param("sort", "the order", choices=SORTS, default="created"),
                limit_param(),
            ),
        ),
        ApiRoute("GET", "/tickets/{ticket}", _show, "One ticket with its outbox intents", shown, (ticket,)),
        ApiRoute(
            "POST",
            "/tickets/{ticket}/retry",
            _act("retry"),
            "Send a failed ticket again",
            acted,
            (ticket,),
            role="operator",
        ),
        ApiRoute(
            "POST",
            "/tickets/{ticket}/approve",
            _act("approve"),
            "Approve a ticket waiting for approval",
            acted,
            (ticket,),
            role="operator",
        ),
        ApiRoute(
            "POST",
            "/tickets/{ticket}/decline",
            _act("decline"),
            "Decline a ticket waiting for approval",
            acted,
            (ticket,),
            role="operator",
        ),
    ]
