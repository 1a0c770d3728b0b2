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

__all__ = ["risk_command", "what_if"]


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


async def _entities(args: argparse.Namespace, risk: RiskStore) -> int:
    rows = await risk.entities(args.type)
    found = []
    for kind, key, score, named, scores, _, updated in rows:
        if args.band and named != args.band:
            continue
        per_source = orjson.loads(scores)
        if args.source and args.source not in per_source:
            continue
        found.append({"type": kind, "key": key, "score": score, "band": named, "scores": per_source,
                      "updated": updated})  # fmt: skip
        if len(found) >= args.limit:
            break
    lines = [
        f"{e['type']}  {e['key']}  {_score(e['score'])}  {e['band']}  "
        + " ".join(f"{s}={v:.0f}" for s, v in e["scores"].items())
        for e in found
    ]
    return _print(args, {"entities": found}, "\n".join(lines) or "no entity matches")


async def _show(args: argparse.Namespace, risk: RiskStore) -> int:
    key = args.key.lower() if args.type == "user" else args.key
    rows = await risk.entities(args.type, key)
    if not rows:
        _print(args, {"entities": []}, f"{args.type} {key}: not scored")
        return 1
    kind, key, score, named, scores, attributes, updated = rows[0]
    records = [
        {"source": s, "raw": raw, "label": label, "score": sc, "seen": seen}
        for _, _, s, raw, label, sc, seen, _ in await risk.records(kind, key)
    ]
    history: list[dict[str, Any]] = [
        {"at": at, "score": s, "band": b} for at, s, b in await risk.history(kind, key, args.limit)
    ]
    data = {"type": kind, "key": key, "score": score, "band": named, "scores": orjson.loads(scores),
            "attributes": orjson.loads(attributes), "updated": updated, "records": records,
            "history": history}  # fmt: skip
    lines = [f"{kind} {key}: {_score(score)} ({named}), updated {_when(float(updated))}"]
    lines += [
        f"  {r['source']}: {r['score']:.0f}"
        + (f" (raw {r['raw']:g})" if r["raw"] is not None else "")
        + (f" (label {r['label']})" if r["label"] else "")
        + f" seen {_when(r['seen'])}"
        for r in records
    ]
    lines += [f"  history {_when(h['at'])}: {_score(h['score'])} {h['band']}" for h in history]
    return _print(args, data, "\n".join(lines))


async def _trend(args: argparse.Namespace, risk: RiskStore, settings: Risk | None) -> int:
    window = settings.snapshot.window if settings is not None else 30 * 86_400.0
    days = max(1, int(args.days or window // 86_400))
    since = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%d")
    daily = await risk.daily(since)
    now = [(k, b, n, a) for k, b, n, a in await risk.band_counts()]
    data: dict[str, Any] = {"since": since, "types": {}}
    lines: list[str] = []
    for kind in sorted({d[0] for d in daily} | {k for k, *_ in now}):
        series = [(day, avg, n) for k, day, avg, n in daily if k == kind]
        averages = [avg for _, avg, _ in series]
        delta = averages[-1] - averages[-2] if len(averages) >= 2 else None
        slope = trend(averages)
        scored = [(n, a) for k, _, n, a in now if k == kind and a is not None]
        count = sum(n for n, _ in scored)
        today = sum(n * a for n, a in scored) / count if count else None
        data["types"][kind] = {
            "days": [{"day": d, "average": a, "entities": n} for d, a, n in series],
            "delta": delta, "trend_per_day": slope, "today": {"day": day_of(time.time()), "average": today,
                                                              "entities": count},
        }  # fmt: skip
        lines.append(
            f"{kind}: today {_score(today)} over {count};"
            + (f" last day {averages[-1]:.1f}" if averages else " no day snapshotted yet")
            + (f", delta {delta:+.1f}" if delta is not None else "")
            + (f", trend {slope:+.2f}/day over {len(averages)} days" if slope is not None else "")
        )
        lines += [f"  {d}  {a:.1f}  ({n})" for d, a, n in series]
    return _print(args, data, "\n".join(lines) or "no risk data")


async def _actions(args: argparse.Namespace, risk: RiskStore) -> int:
    rows = await risk.actions(
        outcomes=tuple(args.outcome or ()), rule=args.rule, key=args.key, limit=args.limit
    )
    data = {"actions": [_action(r) for r in rows]}
    lines = [
        f"#{r.id} {_when(r.at)} {r.rule} {r.type} {r.key} {r.action} {r.kind}: {r.outcome}"
        + (f" ({r.detail})" if r.detail else "")
        for r in rows
    ]
    return _print(args, data, "\n".join(lines) or "no action logged")


async def _approve(args: argparse.Namespace, risk: RiskStore) -> int:
    outcome = "declined" if args.decline else "approved"
    pending = await risk.actions(outcomes=("pending_approval",), limit=100_000)
    chosen = [r for r in pending if args.all or r.id in set(args.ids)]
    missing = set(args.ids) - {r.id for r in pending}
    changed: list[int] = []
    for row in chosen:
        done = await risk.finish_action(
            row.id, outcome, detail=f"{outcome} by hand", only_from=("pending_approval",)
        )
        changed += [row.id] if done else []
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
