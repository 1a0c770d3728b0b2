"""``ce-daemon risk entities|show|trend|actions|approve|what-if``: the risk exchange as a person sees it.

The read commands need only the ``state:`` section (they open the database without migrating it);
``approve`` writes one outcome in the action log (the evaluator runs approved actions on its next
pass); ``what-if`` loads the whole file (the weights it changes are the section's).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ce_daemon.config.model import StateSettings
from ce_daemon.risk.engine import combine, day_of, trend
from ce_daemon.risk.normalise import BANDS, band
from ce_daemon.risk.settings import Risk
from ce_daemon.risk.store import RISK_MIGRATIONS, ActionRow, RiskStore
from ce_daemon.store import StoreError, open_store

__all__ = [
    "actions_view",
    "decide_pending",
    "entities_view",
    "risk_command",
    "show_view",
    "trend_view",
    "what_if",
]


async def risk_command(args: argparse.Namespace, state: StateSettings, settings: Risk | None) -> int:
    """Run one ``risk`` action on ``state`` (``settings``: the section, for ``what-if`` and ``trend``)."""
    if state.url is None and not state.path.exists():
        return _print(args, {"entities": []}, f"no state database at {state.path}: no risk data")
    try:
        async with await open_store(state, RISK_MIGRATIONS, migrate=False) as store:
            if not await store.columns("risk_entities"):
                return _print(args, {"entities": []}, f"no risk data in {store.display} yet")
            risk = RiskStore(store)
            if args.action == "what-if":
                assert settings is not None
                return await _what_if(args, risk, settings)
            if args.action == "trend":
                return await _trend(args, risk, settings)
            return int(await _ACTIONS[args.action](args, risk))
    except StoreError as exc:
        print(f"risk {args.action}: {exc}", file=sys.stderr)
        return 1


async def entities_view(
    risk: RiskStore, kind: str | None, band: str | None, source: str | None, limit: int
) -> list[dict[str, Any]]:
    """Entities of ``kind`` (all: None) in ``band`` scored by ``source``, with their scores (at most
    ``limit``)."""
    found = []
    for t, key, score, named, scores, _, updated in await risk.entities(kind):
        if band and named != band:
            continue
        per_source = orjson.loads(scores)
        if source and source not in per_source:
            continue
        found.append({"type": t, "key": key, "score": score, "band": named, "scores": per_source,
                      "updated": updated})  # fmt: skip
        if len(found) >= limit:
            break
    return found


async def _entities(args: argparse.Namespace, risk: RiskStore) -> int:
    found = await entities_view(risk, args.type, args.band, args.source, args.limit)
    lines = [
        f"{e['type']}  {e['key']}  {_score(e['score'])}  {e['band']}  "
        + " ".join(f"{s}={v:.0f}" for s, v in e["scores"].items())
        for e in found
    ]
    return _print(args, {"entities": found}, "\n".join(lines) or "no entity matches")


async def show_view(risk: RiskStore, kind: str, key: str, limit: int) -> dict[str, Any] | None:
    """One entity: combined and per-source scores, attributes, its last ``limit`` history entries."""
    key = key.lower() if kind == "user" else key
    rows = await risk.entities(kind, key)
    if not rows:
        return None
    kind, key, score, named, scores, attributes, updated = rows[0]
    records = [
        {"source": s, "raw": raw, "label": label, "score": sc, "seen": seen}
        for _, _, s, raw, label, sc, seen, _ in await risk.records(kind, key)
    ]
    history: list[dict[str, Any]] = [
        {"at": at, "score": s, "band": b} for at, s, b in await risk.history(kind, key, limit)
    ]
    return {"type": kind, "key": key, "score": score, "band": named, "scores": orjson.loads(scores),
            "attributes": orjson.loads(attributes), "updated": updated, "records": records,
            "history": history}  # fmt: skip


async def _show(args: argparse.Namespace, risk: RiskStore) -> int:
    data = await show_view(risk, args.type, args.key, args.limit)
    if data is None:
        key = args.key.lower() if args.type == "user" else args.key
        _print(args, {"entities": []}, f"{args.type} {key}: not scored")
        return 1
    updated = _when(float(data["updated"]))
    lines = [f"{data['type']} {data['key']}: {_score(data['score'])} ({data['band']}), updated {updated}"]
    lines += [
        f"  {r['source']}: {r['score']:.0f}"
        + (f" (raw {r['raw']:g})" if r["raw"] is not None else "")
        + (f" (label {r['label']})" if r["label"] else "")
        + f" seen {_when(r['seen'])}"
        for r in data["records"]
    ]
    lines += [f"  history {_when(h['at'])}: {_score(h['score'])} {h['band']}" for h in data["history"]]
    return _print(args, data, "\n".join(lines))


async def trend_view(risk: RiskStore, days: int) -> dict[str, Any]:
    """Per entity type: the daily averages of the last ``days`` days, the delta between the last two,
    the trend (least-squares slope per day), and today's average over the current scores."""
    since = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%d")
    daily = await risk.daily(since)
    now = [(k, b, n, a) for k, b, n, a in await risk.band_counts()]
    data: dict[str, Any] = {"since": since, "types": {}}
    for kind in sorted({d[0] for d in daily} | {k for k, *_ in now}):
        series = [(day, avg, n) for k, day, avg, n in daily if k == kind]
        averages = [avg for _, avg, _ in series]
        scored = [(n, a) for k, _, n, a in now if k == kind and a is not None]
        count = sum(n for n, _ in scored)
        data["types"][kind] = {
            "days": [{"day": d, "average": a, "entities": n} for d, a, n in series],
            "delta": averages[-1] - averages[-2] if len(averages) >= 2 else None,
            "trend_per_day": trend(averages),
            "today": {"day": day_of(time.time()), "entities": count,
                      "average": sum(n * a for n, a in scored) / count if count else None},
        }  # fmt: skip
    return data


async def _trend(args: argparse.Namespace, risk: RiskStore, settings: Risk | None) -> int:
    window = settings.snapshot.window if settings is not None else 30 * 86_400.0
    data = await trend_view(risk, max(1, int(args.days or window // 86_400)))
    lines: list[str] = []
    for kind, view in data["types"].items():
        averages = [d["average"] for d in view["days"]]
        delta, slope, today = view["delta"], view["trend_per_day"], view["today"]
        lines.append(
            f"{kind}: today {_score(today['average'])} over {today['entities']};"
            + (f" last day {averages[-1]:.1f}" if averages else " no day snapshotted yet")
            + (f", delta {delta:+.1f}" if delta is not None else "")
            + (f", trend {slope:+.2f}/day over {len(averages)} days" if slope is not None else "")
        )
        lines += [f"  {d['day']}  {d['average']:.1f}  ({d['entities']})" for d in view["days"]]
    return _print(args, data, "\n".join(lines) or "no risk data")


async def actions_view(
    risk: RiskStore, outcomes: tuple[str, ...], rule: str | None, key: str | None, limit: int
) -> list[dict[str, Any]]:
    """The action log, newest first, filtered."""
    return [_action(r) for r in await risk.actions(outcomes=outcomes, rule=rule, key=key, limit=limit)]


async def _actions(args: argparse.Namespace, risk: RiskStore) -> int:
    rows = await actions_view(risk, tuple(args.outcome or ()), args.rule, args.key, args.limit)
    lines = [
        f"#{r['id']} {_when(r['at'])} {r['rule']} {r['type']} {r['key']} {r['action']} {r['kind']}:"
        f" {r['outcome']}" + (f" ({r['detail']})" if r["detail"] else "")
        for r in rows
    ]
    return _print(args, {"actions": rows}, "\n".join(lines) or "no action logged")


async def decide_pending(
    risk: RiskStore, ids: set[int], every: bool, decline: bool, who: str = "by hand"
) -> tuple[list[int], set[int]]:
    """Approve (or decline) the pending actions ``ids`` (``every``: all of them): those changed, and the
    ids that were not pending."""
    outcome = "declined" if decline else "approved"
    pending = await risk.actions(outcomes=("pending_approval",), limit=100_000)
    chosen = [r for r in pending if every or r.id in ids]
    changed: list[int] = []
    for row in chosen:
        done = await risk.finish_action(
            row.id, outcome, detail=f"{outcome} {who}", only_from=("pending_approval",)
        )
        changed += [row.id] if done else []
    return changed, ids - {r.id for r in pending}


async def _approve(args: argparse.Namespace, risk: RiskStore) -> int:
    outcome = "declined" if args.decline else "approved"
    changed, missing = await decide_pending(risk, set(args.ids), args.all, args.decline)
    if missing:
        print(f"risk approve: no pending action #{', #'.join(map(str, sorted(missing)))}", file=sys.stderr)
    _print(args, {outcome: changed}, f"{len(changed)} action(s) {outcome}")
    return 1 if missing else 0


def what_if(
    records: list[tuple[Any, ...]],
    settings: Risk,
    weights: dict[str, float],
    now: float,
    kind: str | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per entity type, each band's share (0-1) of scored entities now and with ``weights`` applied."""
    stale = {s.name: s.stale_after for s in settings.sources}
    base = {s.name: s.weight for s in settings.sources}
    after = {**base, **weights}
    counts: dict[str, tuple[Counter[str], Counter[str]]] = {}
    current: dict[tuple[str, str], tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {}
    for t, k, source, _, _, score, seen, _ in records:
        if (kind and t != kind) or source not in base or now - seen > stale[source]:
            continue
        before_list, after_list = current.setdefault((t, k), ([], []))
        before_list.append((score, base[source]))
        if after[source] > 0:
            after_list.append((score, after[source]))
    for (t, _), (b, a) in current.items():
        was, will = counts.setdefault(t, (Counter(), Counter()))
        old, new = combine(b, settings.combine), combine(a, settings.combine)
        was[band(old) if old is not None else "none"] += 1
        will[band(new) if new is not None else "none"] += 1
    result: dict[str, dict[str, dict[str, float]]] = {}
    for t, (was, will) in sorted(counts.items()):
        total = sum(was.values()) or 1
        result[t] = {
            b: {"now": was[b] / total, "after": will[b] / total}
            for b in (*BANDS, "none")
            if was[b] or will[b]
        }
    return result


async def _what_if(args: argparse.Namespace, risk: RiskStore, settings: Risk) -> int:
    weights: dict[str, float] = {}
    names = {s.name for s in settings.sources}
    for item in args.weight or ():
        name, _, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            print(f"risk what-if: --weight {item!r} is not SOURCE=NUMBER", file=sys.stderr)
            return 2
        if name not in names or weights[name] < 0:
            print(
                f"risk what-if: no source named {name!r} (sources: {', '.join(sorted(names))})",
                file=sys.stderr,
            )
            return 2
    shares = what_if(await risk.records(args.type), settings, weights, time.time(), args.type)
    lines = []
    for t, bands in shares.items():
        lines.append(f"{t}:")
        lines += [
            f"  {b:<8} {v['now'] * 100:5.1f}% -> {v['after'] * 100:5.1f}%"
            f" ({(v['after'] - v['now']) * 100:+.1f})"
            for b, v in bands.items()
        ]
    return _print(args, {"weights": weights, "types": shares}, "\n".join(lines) or "no scored entity")


def _action(r: ActionRow) -> dict[str, Any]:
    return {"id": r.id, "rule": r.rule, "type": r.type, "key": r.key, "action": r.action, "kind": r.kind,
            "outcome": r.outcome, "detail": r.detail, "state": r.state, "score": r.score, "band": r.band,
            "at": r.at, "done": r.done}  # fmt: skip


def _score(score: float | None) -> str:
    return "-" if score is None else f"{score:.1f}"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    print(orjson.dumps(data).decode() if args.json else text)
    return 0


_ACTIONS = {"entities": _entities, "show": _show, "actions": _actions, "approve": _approve}
