"""Combined scores, daily snapshots and edge-triggered rules: what the evaluator does each pass.

Combined score: over the sources *present* for an entity (a record of a configured source, not older
than that source's ``stale_after``), the weighted mean ``Σ w·s / Σ w`` (``combine: weighted_mean``) or
the lowest score (``minimum``: the worst signal wins). An entity with no present source has no
combined score (band ``none``) and matches no rule.

Daily snapshot: when a pass runs on a later UTC day than the last recompute, the day that ended is
snapshotted from the entities' combined scores as that day left them (before anything is recomputed),
once; a day the daemon never ran has no snapshot.

Rules are edge-triggered per (rule, entity): an entity that starts matching fires the rule's actions
unless the rule is muted (edge consumed, logged ``muted``), fired for that entity within
``flap_suppression`` (``suppressed``), needs approval (``pending_approval`` until ``risk approve``),
or the maintenance window is open (``deferred`` until it closes). An entity that stops matching has
the rule's applied, revertible actions reverted; its pending actions are ``cancelled``. A disabled
rule is not evaluated (its entities keep their state). Only changed entities are evaluated after the
first pass. Every plugin call is logged ``running`` first and given its outcome after: a ``running``
entry found at start (a crash in between) is redone, apply and revert being idempotent.
A call that fails is logged ``failed`` with its reason and not retried: an apply that failed leaves
nothing to revert, the entity's next edge tries again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import orjson
import structlog

from ce_daemon.errors import describe
from ce_daemon.filter import Predicate
from ce_daemon.plugin import RiskTarget
from ce_daemon.redact import scrub
from ce_daemon.risk.normalise import band
from ce_daemon.risk.settings import Maintenance
from ce_daemon.risk.store import RiskStore, RuleState
from ce_daemon.store import Fence

__all__ = ["ActionRunner", "Engine", "RuleSpec", "SourceWeight", "day_of", "trend"]

log = structlog.get_logger("ce_daemon.risk")

NO_BAND: Final = "none"
YIELD_EVERY: Final = 5000
"""Entities evaluated between two yields to the event loop."""
EntityKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class SourceWeight:
    """What the combined score needs of a source."""

    name: str
    weight: float = 1.0
    stale_after: float = 7 * 86_400.0


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A rule as the engine runs it."""

    name: str
    entity: str
    predicate: Predicate | None
    actions: tuple[str, ...] = ()
    flap_suppression: float = 0.0
    muted_until: float | None = None
    require_approval: bool = False
    enabled: bool = True


class ActionRunner(Protocol):
    """Runs named actions (the evaluator's opened ``risk_action`` plugins)."""

    def revertible(self, action: str) -> bool: ...

    async def apply(self, action: str, target: RiskTarget) -> Mapping[str, str]: ...

    async def revert(self, action: str, target: RiskTarget) -> None: ...


def day_of(epoch: float) -> str:
    """The UTC day of ``epoch`` as ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


def trend(values: Sequence[float]) -> float | None:
    """The least-squares slope of ``values`` (one a day): score points a day, None under two values."""
    n = len(values)
    if n < 2:
        return None
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def combine(present: Sequence[tuple[float, float]], how: str) -> float | None:
    """The combined score of ``(score, weight)`` pairs (None when there are none)."""
    if not present:
        return None
    if how == "minimum":
        return min(s for s, _ in present)
    total = sum(w for _, w in present)
    return sum(s * w for s, w in present) / total


@dataclass(slots=True)
class PassResult:
    """What one pass did."""

    entities: int = 0
    changed: int = 0
    edges: int = 0
    actions: int = 0
    snapshot: str | None = None


class Engine:
    """Recompute, snapshot and evaluate over one :class:`RiskStore`."""

    def __init__(
        self,
        store: RiskStore,
        sources: Mapping[str, SourceWeight],
        *,
        how: str = "weighted_mean",
        rules: Sequence[RuleSpec] = (),
        maintenance: Maintenance | None = None,
        runner: ActionRunner | None = None,
        clock: Callable[[], float] = time.time,
        bound: Any = None,
    ) -> None:
        self.store = store
        self.sources = dict(sources)
        self.how = how
        self.rules = list(rules)
        self.maintenance = maintenance
        self.runner = runner
        self.clock = clock
        self.log = bound if bound is not None else log
        self.views: dict[EntityKey, dict[str, Any]] = {}
        self.states: dict[tuple[str, str, str], RuleState] | None = None
        self.matches: dict[str, set[EntityKey]] = {}
        self.pending: tuple[list[dict[str, object]], list[dict[str, object]]] = ([], [])
        self.evaluated_all = False
        self.recovered = False

    # -- recompute -------------------------------------------------------------------------

    async def recompute(  # noqa: C901, PLR0915 - the hot loop of a pass, kept in one piece for speed
        self, fence: Fence | None = None, *, write: bool = True
    ) -> set[EntityKey]:
        """Every entity's combined score from the stored records; the entities that changed.

        With ``write`` False the changed rows are left in :attr:`pending` for :meth:`flush` (a pass
        writes them while it evaluates the rules: SQLite works in its own thread meanwhile).
        """
        now = self.clock()
        records = await self.store.scores()
        previous = {(t, k): (s, sc, at) for t, k, s, _, sc, at, _ in await self.store.entities()}
        minimum = self.how == "minimum"
        sources = {name: (s.weight, now - s.stale_after) for name, s in self.sources.items()}
        rows: list[dict[str, object]] = []
        history: list[dict[str, object]] = []
        changed: set[EntityKey] = set()
        views: dict[EntityKey, dict[str, Any]] = {}
        dumps, loads = orjson.dumps, orjson.loads
        parsed: dict[str, dict[str, Any]] = {}

        def attributes_of(texts: list[str]) -> tuple[dict[str, Any], str]:
            if not texts:
                return {}, "{}"
            first = texts[0]
            if all(t == first for t in texts):
                found = parsed.get(first)
                if found is None:
                    found = parsed[first] = loads(first)
                return found, first
            merged: dict[str, Any] = {}
            for text in texts:
                merged.update(parsed.get(text) or parsed.setdefault(text, loads(text)))
            return merged, dumps(merged, option=orjson.OPT_SORT_KEYS).decode()

        def finish(
            kind: str, key: str, scores: dict[str, float], combined: float | None, texts: list[str]
        ) -> None:
            ident = (kind, key)
            attributes, attributes_text = attributes_of(texts)
            named = NO_BAND if combined is None else band(combined)
            view = {**attributes, "type": kind, "key": key, "score": combined, "band": named,
                    "scores": scores, "sources": list(scores), "attributes": attributes}  # fmt: skip
            views[ident] = view
            was = previous.get(ident)
            scores_text = dumps(scores).decode()
            if was is not None and was[0] == combined and was[1] == scores_text and was[2] == attributes_text:
                return
            changed.add(ident)
            rows.append({"type": kind, "key": key, "score": combined, "band": named, "scores": scores_text,
                         "attributes": attributes_text, "updated": now})  # fmt: skip
            if was is None or was[0] != combined:
                history.append({"type": kind, "key": key, "at": now, "score": combined, "band": named})

        current_kind = current_key = None
        scores: dict[str, float] = {}
        texts: list[str] = []
        total = weights = 0.0
        lowest = 0.0
        for kind, key, source, score, seen, attrs in records:
            if key != current_key or kind != current_kind:
                if current_key is not None:
                    combined = (round(lowest if minimum else total / weights, 1)) if scores else None
                    finish(current_kind, current_key, scores, combined, texts)  # type: ignore[arg-type]
                current_kind, current_key = kind, key
                scores, texts = {}, []
                total = weights = 0.0
                lowest = 1e9
            config = sources.get(source)
            if config is None:
                continue
            if attrs != "{}":
                texts.append(attrs)
            weight, cut = config
            if seen < cut:
                continue
            scores[source] = score
            total += score * weight
            weights += weight
            if score < lowest:  # noqa: PLR1730 - faster than min() in the hot loop
                lowest = score
        if current_key is not None:
            combined = (round(lowest if minimum else total / weights, 1)) if scores else None
            finish(current_kind, current_key, scores, combined, texts)  # type: ignore[arg-type]
        self.views = views
        self.pending = (rows, history)
        if write:
            await self.flush(fence)
        return changed

    async def flush(self, fence: Fence | None = None) -> None:
        """Write what :meth:`recompute` left pending."""
        rows, history = self.pending
        self.pending = ([], [])
        if rows or history:
            await self.store.write_entities(rows, history, fence=fence)

    async def snapshot_if_due(self, fence: Fence | None = None) -> str | None:
        """Snapshot the day the entities were last recomputed on, once a later day began; that day."""
        today = day_of(self.clock())
        last = await self.store.store.get_meta("risk.day")
        written = None
        if last is not None and last < today:
            averages: dict[str, list[float]] = {}
            for kind, _, score, *_ in await self.store.entities():
                if score is not None:
                    averages.setdefault(str(kind), []).append(float(score))
            await self.store.snapshot(
                last, [(k, sum(v) / len(v), len(v)) for k, v in sorted(averages.items())], fence=fence
            )
            written = last
        if last != today:
            await self.store.store.set_meta("risk.day", today)
        return written

    # -- a pass ---------------------------------------------------------------------------

    async def run_pass(self, fence: Fence | None = None) -> PassResult:
        """Snapshot when due, recompute, evaluate the rules (every entity the first time), run what waits."""
        result = PassResult()
        result.snapshot = await self.snapshot_if_due(fence)
        changed = await self.recompute(fence, write=False)
        writing = asyncio.ensure_future(self.flush(fence))
        await asyncio.sleep(0)
        result.entities, result.changed = len(self.views), len(changed)
        if self.states is None:
            self.states = await self.store.rule_states()
        if not self.recovered:
            result.actions += await self.recover(fence)
            self.recovered = True
        subjects = (
            self.views if not self.evaluated_all else {k: self.views[k] for k in changed if k in self.views}
        )
        self.evaluated_all = True
        try:
            edges, acted = await self.evaluate(subjects, fence)
        finally:
            await writing
        result.edges, result.actions = edges, result.actions + acted
        result.actions += await self.run_waiting(fence)
        return result

    def in_maintenance(self) -> bool:
        return self.maintenance is not None and self.maintenance.inside(self.clock())

    async def evaluate(
        self, views: Mapping[EntityKey, Mapping[str, Any]], fence: Fence | None
    ) -> tuple[int, int]:
        """Evaluate every enabled rule over ``views``: ``(edges, action calls)``.

        A rule without actions has nothing to fire: its matches are kept in memory only.
        """
        assert self.states is not None
        now = self.clock()
        states = self.states
        starts: list[tuple[RuleSpec, EntityKey]] = []
        stops: list[tuple[RuleSpec, EntityKey, RuleState]] = []
        by_type: dict[str, list[tuple[EntityKey, Mapping[str, Any]]]] = {}
        for ident, view in views.items():
            if view["score"] is not None:  # an entity without a combined score matches no rule
                by_type.setdefault(ident[0], []).append((ident, view))
        edges = 0
        for rule in self.rules:
            if not rule.enabled:
                continue
            name = rule.name
            matching = self._matching(name)
            started, stopped = await self._edges(rule, by_type.get(rule.entity, []), matching, views)
            edges += len(started) + len(stopped)
            if not rule.actions:
                matching |= started
                matching -= stopped
                continue
            starts.extend((rule, ident) for ident in sorted(started))
            stops.extend((rule, ident, states[(name, *ident)]) for ident in sorted(stopped))
        acted = 0
        for rule, ident in starts:
            acted += await self._start(rule, ident, now, fence)
        for rule, ident, state in stops:
            acted += await self._stop(rule, ident, state, now, fence)
        return edges, acted

    def _remember(self, writes: Mapping[tuple[str, str, str], RuleState | None]) -> None:
        """Keep the in-memory states and matches in step with what is written."""
        assert self.states is not None
        for k, v in writes.items():
            matching = self._matching(k[0])
            if v is None:
                self.states.pop(k, None)
            else:
                self.states[k] = v
            if v is not None and v.matching:
                matching.add((k[1], k[2]))
            else:
                matching.discard((k[1], k[2]))

    @staticmethod
    async def _edges(
        rule: RuleSpec,
        scored: list[tuple[EntityKey, Mapping[str, Any]]],
        matching: set[EntityKey],
        views: Mapping[EntityKey, Any],
    ) -> tuple[set[EntityKey], set[EntityKey]]:
        """The entities of ``scored`` that start matching ``rule``, and those of ``views`` that stop."""
        predicate = rule.predicate
        matched: set[EntityKey] = set()
        for start in range(0, len(scored), YIELD_EVERY):
            await asyncio.sleep(0)  # the state database's writes go on meanwhile; so does the daemon
            chunk = scored[start : start + YIELD_EVERY]
            if predicate is None:
                matched.update(ident for ident, _ in chunk)
            else:
                matched.update([ident for ident, view in chunk if predicate(view)])
        return matched - matching, {ident for ident in matching & views.keys() if ident not in matched}

    def _matching(self, rule: str) -> set[EntityKey]:
        """The entities ``rule`` matches now (built from the stored states on first use)."""
        found = self.matches.get(rule)
        if found is None:
            assert self.states is not None
            found = self.matches[rule] = {
                (t, k) for (r, t, k), s in self.states.items() if r == rule and s.matching
            }
        return found

    def _entry(
        self, rule: str, ident: EntityKey, action: str, kind: str, outcome: str, detail: str = ""
    ) -> dict[str, object]:
        view = self.views.get(ident, {})
        return {"rule": rule, "type": ident[0], "key": ident[1], "action": action, "kind": kind,
                "outcome": outcome, "detail": detail, "score": view.get("score"),
                "band": str(view.get("band", NO_BAND))}  # fmt: skip

    async def _decide(
        self,
        states: dict[tuple[str, str, str], RuleState | None],
        entries: list[dict[str, object]],
        fence: Fence | None,
        outcomes: Sequence[tuple[int, str, str]] = (),
        now: float | None = None,
    ) -> list[int]:
        when = self.clock() if now is None else now
        ids = await self.store.decide(states, entries, outcomes=outcomes, now=when, fence=fence)
        self._remember(states)
        return ids

    async def _start(self, rule: RuleSpec, ident: EntityKey, now: float, fence: Fence | None) -> int:
        """An entity started matching ``rule``: fire its actions, or say why not."""
        assert self.states is not None
        key = (rule.name, *ident)
        old = self.states.get(key)
        state = RuleState(True, now, old.fired if old else 0.0, old.applied if old else False)
        outcome, detail = "running", ""
        if rule.muted_until is not None and rule.muted_until > now:
            outcome, detail = "muted", f"rule muted until {_iso(rule.muted_until)}"
        elif (
            rule.flap_suppression
            and old is not None
            and old.fired
            and now - old.fired < rule.flap_suppression
        ):
            outcome, detail = "suppressed", f"fired {now - old.fired:.0f}s ago (flap suppression)"
        elif rule.require_approval:
            outcome, detail = "pending_approval", "awaiting `ce-daemon risk approve`"
        elif self.in_maintenance():
            outcome, detail = "deferred", "inside the maintenance window"
        else:
            state.fired, state.applied = now, True  # what the calls about to be made leave, once redone
        entries = [self._entry(rule.name, ident, a, "apply", outcome, detail) for a in rule.actions]
        decided = self.clock()
        ids = await self._decide({key: state}, entries, fence, now=decided)
        if outcome != "running":
            return 0
        succeeded = [
            await self._call(rule.name, ident, action, "apply", row, fence, decided)
            for action, row in zip(rule.actions, ids, strict=True)
        ]
        if not any(succeeded):
            state.applied = old.applied if old else False
            await self._decide({key: state}, [], fence)
        return len(ids)

    async def _stop(
        self, rule: RuleSpec, ident: EntityKey, old: RuleState, now: float, fence: Fence | None
    ) -> int:
        """An entity stopped matching ``rule``: its waiting actions lapse, its applied ones are reverted."""
        key = (rule.name, *ident)
        state = RuleState(False, now, old.fired, False)
        lapsed = [
            (row.id, "cancelled", "no longer matches")
            for row in await self.store.actions(
                outcomes=("pending_approval", "deferred", "approved"),
                rule=rule.name,
                kind_=ident[0],
                key=ident[1],
            )
            if row.kind == "apply"
        ]
        reverting: list[str] = []
        if old.applied and self.runner is not None:
            reverting = [a for a in rule.actions if self.runner.revertible(a)]
        deferred = self.in_maintenance()
        outcome, detail = ("deferred", "inside the maintenance window") if deferred else ("running", "")
        entries = [self._entry(rule.name, ident, a, "revert", outcome, detail) for a in reverting]
        keep = rule.flap_suppression and now - state.fired < rule.flap_suppression
        decided = self.clock()
        ids = await self._decide({key: state if keep else None}, entries, fence, lapsed, now=decided)
        if deferred:
            return 0
        for action, row in zip(reverting, ids, strict=True):
            await self._call(rule.name, ident, action, "revert", row, fence, decided)
        return len(ids)

    async def _call(
        self,
        rule: str,
        ident: EntityKey,
        action: str,
        kind: str,
        row: int,
        fence: Fence | None,
        decided: float,
    ) -> bool:
        """Make the call entry ``row`` (``running``, decided at ``decided``) stands for, record its
        outcome; whether it succeeded. A call redone (crash recovery, another node) gets the same
        ``row`` and ``decided``, which an action may use to make its request the same again."""
        view = self.views.get(ident, {})
        score, named = view.get("score"), str(view.get("band", NO_BAND))
        state: dict[str, str] = {}
        if kind == "revert":
            applied = [
                r
                for r in await self.store.actions(
                    outcomes=("success",), rule=rule, kind_=ident[0], key=ident[1]
                )
                if r.kind == "apply" and r.action == action
            ]
            state = applied[0].state if applied else {}
        target = RiskTarget(
            ident[0], ident[1], rule, float(score) if score is not None else -1.0, named,
            {k: str(v) for k, v in dict(view.get("attributes") or {}).items()}, state, row, decided,
        )  # fmt: skip
        if self.runner is None:
            await self.store.finish_action(row, "failed", detail="no action runner", fence=fence)
            return False
        try:
            if kind == "apply":
                returned = await self.runner.apply(action, target)
                state = {str(k)[:100]: str(v)[:1000] for k, v in dict(returned or {}).items()}
            else:
                await self.runner.revert(action, target)
        except Exception as exc:  # noqa: BLE001 - a plugin's failure is logged as the action's outcome
            reason = scrub(describe(exc))
            self.log.warning(
                "risk.action_failed", rule=rule, entity=ident[1], action=action, kind=kind, error=reason
            )
            await self.store.finish_action(row, "failed", detail=reason, fence=fence)
            return False
        await self.store.finish_action(row, "success", state=state if kind == "apply" else None, fence=fence)
        self.log.info("risk.action", rule=rule, entity=ident[1], action=action, kind=kind, outcome="success")
        return True

    async def recover(self, fence: Fence | None) -> int:
        """Redo the calls a crash interrupted (``running`` entries: apply and revert are idempotent)."""
        calls = 0
        for row in reversed(await self.store.actions(outcomes=("running",))):
            await self._call(row.rule, (row.type, row.key), row.action, row.kind, row.id, fence, row.at)
            calls += 1
        return calls

    async def run_waiting(self, fence: Fence | None) -> int:
        """Run approved actions, and deferred ones once the maintenance window closed (still due)."""
        if self.in_maintenance():
            return 0
        assert self.states is not None
        calls = 0
        for row in reversed(await self.store.actions(outcomes=("deferred", "approved"))):
            key = (row.rule, row.type, row.key)
            old = self.states.get(key)
            if (row.kind == "apply") != (old is not None and old.matching):
                await self.store.finish_action(row.id, "cancelled", detail="no longer due", fence=fence)
                continue
            states: dict[tuple[str, str, str], RuleState | None] = {}
            if old is not None and row.kind == "apply":
                states[key] = RuleState(True, old.since, self.clock(), True)
            await self._decide(states, [], fence, [(row.id, "running", "")])
            await self._call(row.rule, (row.type, row.key), row.action, row.kind, row.id, fence, row.at)
            calls += 1
        return calls


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
