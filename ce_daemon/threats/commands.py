"""``ce-daemon iocs search|show|stats|import``: the IOC store as a person sees it, and a one-shot ingest.

The read commands need only the ``state:`` section of the pipeline file (like ``dlq list``): they
open the database without migrating it, so a mistyped path gets no schema and a database a newer
ce-daemon wrote is refused. ``import`` loads the whole file (its guards and lifetimes apply) and
ingests a plain-text list as one full-list poll of ``--source``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from ce_daemon.config.model import StateSettings
from ce_daemon.store import Store, StoreError, open_store
from ce_daemon.threats.intake import Intake
from ce_daemon.threats.model import Indicator, IocType
from ce_daemon.threats.normalise import normalise
from ce_daemon.threats.settings import Threats
from ce_daemon.threats.share import ShareStore
from ce_daemon.threats.store import THREATS_MIGRATIONS, IocStore, Merged

__all__ = ["iocs_command", "merged_dict", "show_view", "stats_view"]


async def iocs_command(args: argparse.Namespace, state: StateSettings, settings: Threats | None) -> int:
    """Run one ``iocs`` action on ``state``; ``settings`` (the ``threats:`` section) only for ``import``."""
    writes = args.action == "import"
    if not writes and state.url is None and not state.path.exists():
        return _print(args, {"iocs": []}, f"no state database at {state.path}: no IOCs")
    try:
        async with await open_store(state, THREATS_MIGRATIONS, migrate=writes) as store:
            if not writes and not await store.columns("threat_iocs"):
                return _print(args, {"iocs": []}, f"no IOCs in {store.display} yet")
            if settings is not None:
                return await _import(args, store, settings)
            return await _READS[args.action](args, IocStore(store))
    except StoreError as exc:
        print(f"iocs {args.action}: {exc}", file=sys.stderr)
        return 1


async def _search(args: argparse.Namespace, iocs: IocStore) -> int:
    try:
        kind = None if args.kind is None else IocType(args.kind)
    except ValueError:
        print(f"iocs search: unknown type {args.kind!r} (one of {', '.join(IocType)})", file=sys.stderr)
        return 2
    active = None if args.status is None else args.status == "active"
    found = await iocs.search(
        contains=args.text, kind=kind, source=args.source, active=active, limit=args.limit
    )
    lines = [
        f"{m.indicator.value}  {m.indicator.type}  {'active' if m.active else 'inactive'}"
        f"  sources={','.join(m.sources)}  sightings={m.sightings}  last_seen={_when(m.last_seen)}"
        for m in found
    ]
    return _print(args, {"iocs": [merged_dict(m) for m in found]}, "\n".join(lines) or "no IOC matches")


async def show_view(iocs: IocStore, given: str) -> list[dict[str, Any]]:
    """Every stored indicator of the value ``given`` (normalised first): merged over its sources, each
    source's row, and where it is shared."""
    result = normalise(given)
    value = result.value if isinstance(result, Indicator) else given
    shares = ShareStore(iocs.store) if await iocs.store.columns("threat_shares") else None
    found = []
    for m in await iocs.merged(value):
        shared = [] if shares is None else await shares.where_shared(str(m.indicator.type), m.indicator.value)
        found.append({
            **merged_dict(m),
            "shared": [{"destination": d, "rule": r, "state": st, "reason": why} for d, r, st, why in shared],
        })  # fmt: skip
    return found


async def _show(args: argparse.Namespace, iocs: IocStore) -> int:
    found = await show_view(iocs, args.value)
    if not found:
        result = normalise(args.value)
        _print(
            args, {"iocs": []}, f"{result.value if isinstance(result, Indicator) else args.value}: not stored"
        )
        return 1
    lines: list[str] = []
    for m in found:
        lines.append(
            f"{m['value']} ({m['type']}{', DLP' if m['dlp'] else ''}):"
            f" {'active' if m['active'] else 'inactive'}, {m['sightings']} sighting(s),"
            f" first {_when(m['first_seen'])}, last {_when(m['last_seen'])}"
        )
        lines.extend(
            f"  {r['source']}: {r['verdict']} severity={r['severity']} reputation={r['reputation']}"
            f" confidence={r['confidence']} sightings={r['sightings']}"
            f" {'active' if r['active'] else 'inactive'}"
            f" expires={_when(r['expires_at'])} tags={','.join(r['tags']) or '-'}"
            for r in m["sources"]
        )
        lines.extend(
            f"  shared with {x['destination']} (rule {x['rule']}): {x['state']}"
            + (f" ({x['reason']})" if x["reason"] else "")
            for x in m["shared"]
        )
    return _print(
        args, {"iocs": [{k: v for k, v in m.items() if k != "rows"} for m in found]}, "\n".join(lines)
    )


async def stats_view(iocs: IocStore) -> dict[str, Any]:
    """IOCs per type, source and state; each source's polls; each destination's pushes."""
    counts = await iocs.counts()
    sources = await iocs.sources()
    pushes = await ShareStore(iocs.store).pushes() if await iocs.store.columns("threat_shares") else []
    return {
        "counts": [{"type": k, "source": s, "active": a, "rows": n} for k, s, a, n in counts],
        "sources": [
            {"source": s.source, "full_list": s.full_list, "last_poll": s.last_poll, "polls": s.polls,
             "rejected": s.rejected, "last_error": s.last_error, "checkpoint": s.checkpoint}
            for s in sources
        ],
        "destinations": [
            {"destination": p.destination, "pushes": p.runs, "last_run": p.last_run, "last_ok": p.last_ok,
             "listed": p.listed, "added": p.added, "removed": p.removed, "dropped": p.dropped,
             "rejected": p.rejected, "error": p.error}
            for p in pushes
        ],
    }  # fmt: skip


async def _stats(args: argparse.Namespace, iocs: IocStore) -> int:
    data = await stats_view(iocs)
    lines = [
        f"{c['type']}  {c['source']}  {'active' if c['active'] else 'inactive'}  {c['rows']}"
        for c in data["counts"]
    ]
    lines.extend(
        f"source {s['source']}: {s['polls']} poll(s),"
        f" last {_when(s['last_poll']) if s['polls'] else 'never'},"
        f" {s['rejected']} rejected" + (f"; last poll failed: {s['last_error']}" if s["last_error"] else "")
        for s in data["sources"]
    )
    lines.extend(
        f"destination {p['destination']}: {p['listed']} listed, last push"
        f" {_when(p['last_ok']) if p['last_ok'] else 'never'} (+{p['added']} -{p['removed']}),"
        f" {p['dropped']} dropped by caps, {p['rejected']} refused"
        + (f"; last push failed: {p['error']}" if p["error"] else "")
        for p in data["destinations"]
    )
    return _print(args, data, "\n".join(lines) or "no IOCs")


async def _import(args: argparse.Namespace, store: Store, settings: Threats) -> int:
    try:
        text = args.file.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        print(f"iocs import: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    intake = Intake(settings.guards)
    sightings = list(intake.lines(text.splitlines(), time.time()))
    result = await IocStore(store).ingest(
        args.source,
        sightings,
        full_list=True,
        lifetime=settings.lifetime_of(args.source),
        rejected=intake.rejected,
    )
    data = {
        "source": args.source,
        "written": result.written,
        "unchanged": result.unchanged,
        "deactivated": result.deactivated,
        "rejected": dict(intake.refused),
    }
    refused = ", ".join(f"{n} {reason}" for reason, n in intake.refused.most_common()) or "none"
    summary = (
        f"{args.source}: {result.written} written, {result.unchanged} unchanged,"
        f" {result.deactivated} deactivated; rejected: {refused}"
    )
    return _print(args, data, summary)


def merged_dict(m: Merged) -> dict[str, Any]:
    return {
        "value": m.indicator.value,
        "type": str(m.indicator.type),
        "dlp": m.indicator.dlp,
        "active": m.active,
        "first_seen": m.first_seen,
        "last_seen": m.last_seen,
        "sightings": m.sightings,
        "sources": [
            {"source": r.source, "verdict": str(r.verdict), "severity": str(r.severity),
             "reputation": r.reputation, "confidence": r.confidence, "sightings": r.sightings,
             "first_seen": r.first_seen, "last_seen": r.last_seen, "expires_at": r.expires_at,
             "active": r.active, "tags": list(r.tags), "comment": r.comment}
            for r in m.rows
        ],
    }  # fmt: skip


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    print(orjson.dumps(data).decode() if args.json else text)
    return 0


_READS = {"search": _search, "show": _show, "stats": _stats}
