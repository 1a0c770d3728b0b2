"""What a ticket looks like in Slack: a fallback ``text`` and Block Kit ``blocks``.

Text written in ``mrkdwn`` (the description, the rule, the field values) is escaped the way Slack
asks (``&`` → ``&amp;``, ``<`` → ``&lt;``, ``>`` → ``&gt;``), so that alert text can neither form a
link or a mention (``<!channel>``, ``<@U…>``) nor break the message; the header is ``plain_text``
and needs none. Each piece is cut to Block Kit's limits (header 150 characters, section text
3,000, a section field 2,000, at most 10 fields) without cutting an escape in half.
"""

from __future__ import annotations

from typing import Any

from ce_daemon.plugin import Ticket

HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
MAX_FIELDS = 10
TEXT_LIMIT = 3000
"""The fallback ``text`` (notifications, clients without blocks) is kept short: blocks carry the rest."""
METADATA_EVENT = "ce_daemon_ticket"
"""The ``metadata.event_type`` of a message posted through the Web API (it carries the ticket's key)."""

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape_mrkdwn(text: str) -> str:
    """``text`` with the three characters Slack's ``mrkdwn`` treats as markup escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mrkdwn(text: str, limit: int) -> str:
    """``text`` escaped and cut to ``limit`` characters (an ellipsis ends a cut text; no escape is split)."""
    escaped = escape_mrkdwn(text)
    if len(escaped) <= limit:
        return escaped
    parts: list[str] = []
    size = 0
    for char in text:
        piece = _ESCAPES.get(char, char)
        if size + len(piece) > limit - 1:
            break
        parts.append(piece)
        size += len(piece)
    return "".join(parts) + "…"


def plain(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis ending a cut text."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def seen(count: int) -> str:
    """How often the dedup group was seen, as the message says it."""
    return "seen once" if count <= 1 else f"seen {count} times"


def fallback_text(ticket: Ticket) -> str:
    """The message's ``text``: severity and title (what a notification shows)."""
    return mrkdwn(f"[{ticket.severity}] {ticket.title} ({seen(ticket.count)})", TEXT_LIMIT)


def blocks(ticket: Ticket) -> list[dict[str, Any]]:
    """The message's blocks: a header (the title), the description, the fields, and a context line."""
    result: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": plain(ticket.title or "(no title)", HEADER_LIMIT)},
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": mrkdwn(ticket.description or "(no description)", SECTION_LIMIT),
            },
        },
    ]
    fields = [
        {"type": "mrkdwn", "text": mrkdwn(f"{name}\n{value}", FIELD_LIMIT)}
        for name, value in list(ticket.fields.items())[:MAX_FIELDS]
    ]
    if fields:
        result.append({"type": "section", "fields": fields})
    result.append(context(ticket))
    return result


def context(ticket: Ticket) -> dict[str, Any]:
    """The context line: severity, rule and how often the group was seen."""
    return {
        "type": "context",
        "elements": [
            {"type": "mrkdwn", "text": mrkdwn(f"severity: {ticket.severity}", FIELD_LIMIT)},
            {"type": "mrkdwn", "text": mrkdwn(f"rule: {ticket.rule}", FIELD_LIMIT)},
            {"type": "mrkdwn", "text": seen(ticket.count)},
        ],
    }


def repeat_text(ticket: Ticket) -> str:
    """The short message a webhook posts for a duplicate (a webhook cannot edit what it posted)."""
    return mrkdwn(f"[{ticket.severity}] {ticket.title}: {seen(ticket.count)}", TEXT_LIMIT)


def repeat_blocks(ticket: Ticket) -> list[dict[str, Any]]:
    """The blocks of that short message: one line, and the context."""
    return [{"type": "section", "text": {"type": "mrkdwn", "text": repeat_text(ticket)}}, context(ticket)]


def metadata(ticket: Ticket) -> dict[str, Any]:
    """Message metadata naming the ticket's key (Web API only: a webhook drops it)."""
    return {"event_type": METADATA_EVENT, "event_payload": {"key": ticket.key, "rule": ticket.rule}}
