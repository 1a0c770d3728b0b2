"""``ce-daemon tickets list|show|retry|approve|decline``: the tickets as a person sees them, and the hand
actions (each writes the outbox; the running daemon's dispatcher picks the intent up).

The read commands need only the ``state:`` section of the pipeline file: they open the database
without migrating it, so a mistyped path gets no schema and a database a newer ce-daemon wrote is
refused. The hand actions write (and migrate, like ``iocs import``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from ce_daemon.config.model import StateSettings
from ce_daemon.config.values import duration_seconds
from ce_daemon.store import StoreError, open_store
from ce_daemon.tickets.store import TICKETS_MIGRATIONS, StoredTicket, TicketStore

__all__ = ["tickets_command"]

WRITES = ("retry", "approve", "decline")


async def tickets_command(args: argparse.Namespace, state: StateSettings) -> int:
    """Run one ``tickets`` action on ``state``."""
    writes = args.action in WRITES
    if state.url is None and not state.path.exists():
        if writes:
            print(f"tickets {args.action}: no state database at {state.path}", file=sys.stderr)
            return 1
        return _print(args, {"tickets": []}, f"no state database at {state.path}: no tickets")
    try:
        async with await open_store(state, TICKETS_MIGRATIONS, migrate=writes) as store:
            if not await store.columns("ticket_tickets"):
                if writes:
                    print(f"tickets {args.action}: no tickets in {store.display}", file=sys.stderr)
                    return 1
                return _print(args, {"tickets": []}, f"no tickets in {store.display} yet")
            tickets = TicketStore(store)
            if args.action == "list":
                return await _list(args, tickets)
            if args.action == "show":
                return await _show(args, tickets)
            return await _act(args, tickets)
    except StoreError as exc:
        print(f"tickets {args.action}: {exc}", file=sys.stderr)
        return 1


async def _list(args: argparse.Namespace, tickets: TicketStore) -> int:
    since = None
    if args.since is not None:
        try:
            seconds = duration_seconds(args.since)
            assert isinstance(seconds, int | float)
            since = time.time() - float(seconds)
        except (TypeError, ValueError) as exc:
            print(f"tickets list: --since {args.since!r}: {exc}", file=sys.stderr)
            return 2
    found = await tickets.search(
        rule=args.rule, destination=args.destination, status=args.status, since=since, sort=args.sort,
        limit=args.limit,
    )  # fmt: skip
    lines = [
        f"{t.id:>6}  {t.rule}  {t.destination}  {t.status}  x{t.dedup_count}  {t.external_id or '-'}"
        f"  {t.url or '-'}  created {_when(t.created)}  updated {_when(t.updated)}"
        + (f"  approval={t.approval}" if t.approval != "not_required" else "")
        + (f"  error: {t.last_error}" if t.last_error else "")
        for t in found
    ]
    return _print(args, {"tickets": [t.as_dict() for t in found]}, "\n".join(lines) or "no ticket matches")


async def _show(args: argparse.Namespace, tickets: TicketStore) -> int:
    found = await tickets.find(args.ticket)
    if found is None:
        _print(args, {"tickets": []}, f"no ticket {args.ticket}")
        return 1
    intents = await tickets.intents(found.key)
    data = {**found.as_dict(), "intents": intents}
    # a group is its dedup fields' values joined by the unit separator: shown with a visible one
    lines = [f"{k}: {str(v).replace(chr(0x1F), ' | ')}" for k, v in found.as_dict().items()]
    lines.extend(
        f"  intent {i['id']} {i['intent']}: {i['state']}, {i['attempts']} attempt(s)"
        + (f", error: {i['error']}" if i["error"] else "")
        for i in intents
    )
    return _print(args, data, "\n".join(lines))


async def _act(args: argparse.Namespace, tickets: TicketStore) -> int:
    found = await tickets.find(args.ticket)
    if found is None:
        print(f"tickets {args.action}: no ticket {args.ticket}", file=sys.stderr)
        return 1
    if args.action == "retry":
        done = await tickets.retry(found.key)
        refusal = f"ticket {found.id} has no failed intent (status {found.status})"
    else:
        done = await tickets.decide(found.key, args.action == "approve")
        refusal = f"ticket {found.id} is not waiting for approval (approval {found.approval})"
    if not done:
        print(f"tickets {args.action}: {refusal}", file=sys.stderr)
        return 1
    after = await tickets.find(found.key)
    assert after is not None
    return _print(args, {"ticket": after.as_dict(), "action": args.action}, _line(after, args.action))


def _line(ticket: StoredTicket, action: str) -> str:
    said = {"retry": "will be sent again", "approve": "approved: it will be sent", "decline": "declined"}
    return f"ticket {ticket.id} ({ticket.rule} → {ticket.destination}) {said[action]}"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    print(orjson.dumps(data).decode() if args.json else text)
    return 0
