"""The ticket orchestrator's dashboard pages: the ticket list (sortable by column, filterable by rule,
destination and status) and one ticket with its outbox, linked to the ticket in its system."""

from __future__ import annotations

from ce_daemon.api import ApiCall, ApiError, Param, limit_param
from ce_daemon.dashboard import Page, escape, form, link, table, when
from ce_daemon.tickets.api import SORTS, listed
from ce_daemon.tickets.store import TicketStore

__all__ = ["ticket_pages"]

STATUSES = ("pending", "new", "in_progress", "on_hold", "closed", "deleted", "failed", "other")


def _external(url: str | None, text: str | None) -> str:
    if not url or not url.startswith(("https://", "http://")):
        return escape(text or "-")
    return f'<a href="{escape(url)}" rel="noreferrer" target="_blank">{escape(text or url)}</a>'


async def _list(call: ApiCall) -> str:
    a = call.args
    found = await listed(call)
    keep = {k: a[k] for k in ("rule", "destination", "status")}
    heads = [
        link("/ui/tickets/", name, sort=column, **keep) if column else name
        for name, column in (
            ("id", None),
            ("rule", "rule"),
            ("destination", "destination"),
            ("status", "status"),
            ("alerts", None),
            ("external", None),
            ("created", "created"),
            ("updated", "updated"),
        )
    ]
    rows = [
        (
            link(f"/ui/tickets/{t.id}", t.id),
            escape(t.rule),
            escape(t.destination),
            f'<span class="{"failed" if t.status == "failed" else ""}">{escape(t.status)}</span>',
            escape(t.dedup_count),
            _external(t.url, t.external_id),
            when(t.created),
            when(t.updated),
        )
        for t in found
    ]
    filters = form(
        "/ui/tickets/",
        [
            ("rule", "rule", None),
            ("destination", "destination", None),
            ("status", "status", STATUSES),
            ("sort", "sort", SORTS),
        ],
        a,
    )
    return f"<h1>Tickets</h1>{filters}" + table(heads, rows, numeric=frozenset({4}))


async def _ticket(call: ApiCall) -> str:
    tickets = TicketStore(call.store)
    found = await tickets.find(call.args["ticket"])
    if found is None:
        raise ApiError(404, f"no ticket {call.args['ticket']!r}")
    facts = [
        (escape(k), escape(str(v).replace(chr(0x1F), " | ")))
        for k, v in found.as_dict().items()
        if k != "url"
    ]
    facts.append(("in its system", _external(found.url, found.external_id)))
    intents = [
        (
            escape(i["id"]),
            escape(i["intent"]),
            escape(i["state"]),
            escape(i["attempts"]),
            escape(i["error"] or ""),
        )
        for i in await tickets.intents(found.key)
    ]
    return (
        f"<h1>Ticket {found.id}: {escape(found.title)}</h1>"
        + table(["field", "value"], facts)
        + "<h2>Outbox</h2>"
        + table(["id", "intent", "state", "attempts", "error"], intents)
        + f"<p>{link('/ui/tickets/', 'all tickets')}</p>"
    )


def ticket_pages() -> list[Page]:
    """The tickets job's pages."""
    return [
        Page(
            "",
            "Tickets",
            _list,
            (
                Param("rule", "rule"),
                Param("destination", "destination"),
                Param("status", "status"),
                Param("since", "updated in the last seconds", "number", minimum=0),
                Param("sort", "order", choices=SORTS, default="created"),
                limit_param(200),
            ),
        ),
        Page("{ticket}", None, _ticket, (Param("ticket", "id or key", where="path", required=True),)),
    ]
