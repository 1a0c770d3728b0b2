"""The evaluator's pass on the state (either backend): combined scores with weights, absent and stale
sources, minimum mode; daily snapshots with delta and trend over simulated days; edge-triggered actions
with revert, flap suppression, mute, the maintenance window, approval, and a crash between deciding an
action and recording its outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from ce_daemon.filter import compile_filter
from ce_daemon.plugin import RiskRecord, RiskScale, RiskTarget
from ce_daemon.risk.commands import what_if
from ce_daemon.risk.engine import Engine, RuleSpec, SourceWeight, day_of, trend
from ce_daemon.risk.normalise import normalise_poll
from ce_daemon.risk.settings import DAY, Maintenance, Risk
from ce_daemon.risk.store import RISK_MIGRATIONS, RiskStore
from ce_daemon.testing.state import open_test_store

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HOUR = 3600.0


@pytest.fixture
async def risk(tmp_path: Path) -> AsyncIterator[RiskStore]:
    store = await open_test_store(tmp_path / "state.db", RISK_MIGRATIONS)
    async with store:
        yield RiskStore(store)


class Clock:
    def __init__(self) -> None:
        self.now = T0 + 10 * HOUR

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An action runner that records its calls (and fails when told)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict[str, str]]] = []
        self.fail = False

    def revertible(self, action: str) -> bool:
        return action != "notify"

    async def apply(self, action: str, target: RiskTarget) -> Mapping[str, str]:
        if self.fail:
            raise ConnectionError("target down")
        self.calls.append(("apply", action, target.key, dict(target.state)))
        return {"member": f"{action}:{target.key}"}

    async def revert(self, action: str, target: RiskTarget) -> None:
        self.calls.append(("revert", action, target.key, dict(target.state)))


async def put(risk: RiskStore, source: str, scores: dict[str, float], now: float) -> None:
    records = [RiskRecord("user", key, score=value, seen=now) for key, value in scores.items()]
    await risk.store_poll(source, normalise_poll(RiskScale(), records), now=now)


async def combined(risk: RiskStore) -> dict[str, tuple[float | None, str]]:
    return {key: (score, named) for _, key, score, named, *_ in await risk.entities()}


async def test_weighted_mean_over_present_sources_with_absent_and_stale_ones(risk: RiskStore) -> None:
    clock = Clock()
    sources = {
        "a": SourceWeight("a", 1),
        "b": SourceWeight("b", 3),
        "c": SourceWeight("c", 1, stale_after=DAY),
    }
    engine = Engine(risk, sources, clock=clock)
    await put(risk, "a", {"u1@x.com": 800, "u2@x.com": 900}, clock.now)
    await put(risk, "b", {"u1@x.com": 400}, clock.now)
    await put(risk, "c", {"u1@x.com": 0, "u3@x.com": 100}, clock.now - 2 * DAY)  # stale: absent
    await put(risk, "unknown", {"u1@x.com": 0}, clock.now)  # a source no longer configured: ignored
    await engine.run_pass()
    assert await combined(risk) == {
        "u1@x.com": (500.0, "high"),  # (800 + 3 x 400) / 4, c stale
        "u2@x.com": (900.0, "low"),  # b absent: the weights renormalised
        "u3@x.com": (None, "none"),  # only a stale source: no combined score
    }
    clock.now += 60
    await put(risk, "c", {"u1@x.com": 0}, clock.now)  # fresh again
    await engine.run_pass()
    assert (await combined(risk))["u1@x.com"] == (400.0, "high")  # (800 + 1200 + 0) / 5
    clock.now += DAY + 1  # c goes stale again (a and b keep for 7 days)
    await engine.run_pass()
    assert (await combined(risk))["u1@x.com"] == (500.0, "high")
    history = await risk.history("user", "u1@x.com")
    assert [s for _, s, _ in history] == [500.0, 400.0, 500.0]


async def test_minimum_mode_takes_the_worst_signal(risk: RiskStore) -> None:
    clock = Clock()
    engine = Engine(risk, {"a": SourceWeight("a", 5), "b": SourceWeight("b", 1)}, how="minimum", clock=clock)
    await put(risk, "a", {"u@x.com": 900}, clock.now)
    await put(risk, "b", {"u@x.com": 240}, clock.now)
    await engine.run_pass()
    assert await combined(risk) == {"u@x.com": (240.0, "critical")}


async def test_daily_average_delta_and_trend_over_simulated_days(risk: RiskStore) -> None:
    clock = Clock()
    engine = Engine(risk, {"a": SourceWeight("a", stale_after=30 * DAY)}, clock=clock)
    days = []
    for n, (u1, u2) in enumerate(((800, 600), (700, 500), (500, 300), (550, 250))):
        clock.now = T0 + n * DAY + 10 * HOUR
        days.append(day_of(clock.now))
        await put(risk, "a", {"u1@x.com": u1, "u2@x.com": u2}, clock.now)
        result = await engine.run_pass()
        assert result.snapshot == (days[n - 1] if n else None)
    # later the same day, current values change: the day's snapshot is not written yet, the past ones stay
    await put(risk, "a", {"u1@x.com": 1000, "u2@x.com": 1000}, clock.now + HOUR)
    clock.now += HOUR
    await engine.run_pass()
    daily = await risk.daily(days[0])
    assert [(d, a, n) for _, d, a, n in daily] == [
        (days[0], 700.0, 2),
        (days[1], 600.0, 2),
        (days[2], 400.0, 2),
    ]
    averages = [a for *_, a, _ in daily]
    assert averages[-1] - averages[-2] == -200.0
    assert trend(averages) == pytest.approx(-150.0)
    clock.now = T0 + 4 * DAY + HOUR  # the next day: the last day snapshotted as it ended (1000s), once
    await engine.run_pass()
    await engine.run_pass()
    assert [(d, a) for _, d, a, _ in await risk.daily(days[3])] == [(days[3], 1000.0)]


RULE = {"score": {"$lt": 300}}


def engine_with(
    risk: RiskStore, clock: Clock, runner: Recorder, *, maintenance: Maintenance | None = None, **rule: Any
) -> Engine:
    spec = RuleSpec("low", "user", compile_filter(rule.pop("filter", RULE)), ("group", "notify"), **rule)
    return Engine(
        risk, {"a": SourceWeight("a")}, rules=[spec], maintenance=maintenance, runner=runner, clock=clock
    )


async def outcomes(risk: RiskStore) -> list[tuple[str, str, str, str]]:
    return [(r.key, r.action, r.kind, r.outcome) for r in reversed(await risk.actions())]


async def test_actions_fire_on_the_edge_and_revert_when_the_entity_stops_matching(risk: RiskStore) -> None:
    clock, runner = Clock(), Recorder()
    engine = engine_with(risk, clock, runner)
    await put(risk, "a", {"u@x.com": 800, "v@x.com": 900}, clock.now)
    await engine.run_pass()
    assert runner.calls == []
    await put(risk, "a", {"u@x.com": 200}, clock.now)
    await engine.run_pass()
    await engine.run_pass()  # still matching: nothing again
    await put(risk, "a", {"u@x.com": 100}, clock.now)  # changed, still matching: nothing again
    await engine.run_pass()
    assert runner.calls == [("apply", "group", "u@x.com", {}), ("apply", "notify", "u@x.com", {})]
    await put(risk, "a", {"u@x.com": 700}, clock.now)
    await engine.run_pass()
    # only the revertible action is reverted, with what its apply returned
    assert runner.calls[2:] == [("revert", "group", "u@x.com", {"member": "group:u@x.com"})]
    assert await outcomes(risk) == [
        ("u@x.com", "group", "apply", "success"),
        ("u@x.com", "notify", "apply", "success"),
        ("u@x.com", "group", "revert", "success"),
    ]
    # a fresh engine (a restart) knows the state: no second firing
    again = engine_with(risk, clock, runner)
    await again.run_pass()
    assert len(runner.calls) == 3


async def test_flap_suppression_consumes_an_edge_within_the_window(risk: RiskStore) -> None:
    clock, runner = Clock(), Recorder()
    engine = engine_with(risk, clock, runner, flap_suppression=HOUR)
    for score in (100, 900, 100):  # down, up, down within minutes
        await put(risk, "a", {"u@x.com": score}, clock.now)
        await engine.run_pass()
        clock.now += 60
    assert [c[:2] for c in runner.calls] == [("apply", "group"), ("apply", "notify"), ("revert", "group")]
    assert (await outcomes(risk))[-2:] == [
        ("u@x.com", "group", "apply", "suppressed"),
        ("u@x.com", "notify", "apply", "suppressed"),
    ]
    clock.now += 2 * HOUR
    for score in (900, 100):  # the next edge after the window fires again
        await put(risk, "a", {"u@x.com": score}, clock.now)
        await engine.run_pass()
    assert [c[:2] for c in runner.calls][3:] == [("apply", "group"), ("apply", "notify")]


async def test_a_muted_rule_logs_the_edge_and_acts_not(risk: RiskStore) -> None:
    clock, runner = Clock(), Recorder()
    engine = engine_with(risk, clock, runner, muted_until=clock.now + DAY)
    await put(risk, "a", {"u@x.com": 100}, clock.now)
    await engine.run_pass()
    assert runner.calls == []
    assert [o[3] for o in await outcomes(risk)] == ["muted", "muted"]


async def test_actions_inside_the_maintenance_window_wait_for_its_end(risk: RiskStore) -> None:
    clock, runner = Clock(), Recorder()  # 10:00 UTC
    engine = engine_with(risk, clock, runner, maintenance=Maintenance(start="09:30", end="11:00"))
    await put(risk, "a", {"u@x.com": 100, "v@x.com": 100}, clock.now)
    await engine.run_pass()
    assert runner.calls == [] and {o[3] for o in await outcomes(risk)} == {"deferred"}
    await put(risk, "a", {"v@x.com": 900}, clock.now)  # v recovers inside the window: its actions lapse
    clock.now += 30 * 60
    await engine.run_pass()
    assert runner.calls == []
    clock.now += 31 * 60  # 11:01: the window closed
    await engine.run_pass()
    assert sorted(c[:3] for c in runner.calls) == [
        ("apply", "group", "u@x.com"),
        ("apply", "notify", "u@x.com"),
    ]
    assert sorted(o for o in await outcomes(risk) if o[0] == "v@x.com") == [
        ("v@x.com", "group", "apply", "cancelled"),
        ("v@x.com", "notify", "apply", "cancelled"),
    ]
    await engine.run_pass()
    assert len(runner.calls) == 2


async def test_an_action_needing_approval_runs_once_approved(risk: RiskStore) -> None:
    clock, runner = Clock(), Recorder()
    engine = engine_with(risk, clock, runner, require_approval=True)
    await put(risk, "a", {"u@x.com": 100}, clock.now)
    await engine.run_pass()
    pending = await risk.actions(outcomes=("pending_approval",))
    assert len(pending) == 2 and runner.calls == []
    for row in pending:
        assert await risk.finish_action(row.id, "approved", only_from=("pending_approval",))
    await engine.run_pass()
    assert sorted(c[1] for c in runner.calls) == ["group", "notify"]
    await put(risk, "a", {"u@x.com": 900}, clock.now)
    await engine.run_pass()
    assert runner.calls[-1][:2] == ("revert", "group")


async def test_a_failed_action_is_logged_with_its_reason(risk: RiskStore) -> None:
    clock, runner = Clock(), Recorder()
    runner.fail = True
    engine = engine_with(risk, clock, runner)
    await put(risk, "a", {"u@x.com": 100}, clock.now)
    await engine.run_pass()
    rows = await risk.actions()
    assert {r.outcome for r in rows} == {"failed"} and "target down" in rows[0].detail


async def test_a_crash_between_deciding_and_recording_redoes_the_call_once(risk: RiskStore) -> None:
    """The intent row (`running`) is written before the call; a restart finds it and calls again (the
    action's apply is idempotent), then records the outcome: one entry per edge and action."""
    clock, runner = Clock(), Recorder()
    await put(risk, "a", {"u@x.com": 100}, clock.now)
    engine = engine_with(risk, clock, runner)
    await engine.run_pass()
    group = min(await risk.actions(), key=lambda r: r.action)
    await risk.finish_action(group.id, "running")  # as if the process died before recording its outcome
    restarted = engine_with(risk, clock, runner)
    await restarted.run_pass()
    await restarted.run_pass()
    assert [c[:3] for c in runner.calls].count(
        ("apply", "group", "u@x.com")
    ) == 2  # once more, not twice more
    assert sorted((r.action, r.outcome) for r in await risk.actions()) == [
        ("group", "success"),
        ("notify", "success"),
    ]


class Dying(Recorder):
    """Dies (as a SIGKILL would, mid-call) the first time it applies ``group``, after the target acted."""

    died = False

    async def apply(self, action: str, target: RiskTarget) -> Mapping[str, str]:
        result = await super().apply(action, target)
        if action == "group" and not self.died:
            self.died = True
            raise asyncio.CancelledError
        return result


async def test_a_crash_after_the_target_answered_gives_one_entry_per_edge(risk: RiskStore) -> None:
    """The edge's decision and its calls' intents commit together: after the restart the edge is not seen
    again, the interrupted call is redone (idempotent) and each action has one entry, a success."""
    clock, runner = Clock(), Dying()
    await put(risk, "a", {"u@x.com": 100}, clock.now)
    with pytest.raises(asyncio.CancelledError):
        await engine_with(risk, clock, runner).run_pass()
    assert [(r.action, r.outcome) for r in await risk.actions()] == [
        ("notify", "running"),
        ("group", "running"),
    ]
    restarted = engine_with(risk, clock, runner)
    await restarted.run_pass()
    await restarted.run_pass()
    assert sorted((r.action, r.kind, r.outcome) for r in await risk.actions()) == [
        ("group", "apply", "success"),
        ("notify", "apply", "success"),
    ]
    assert [c[1] for c in runner.calls] == ["group", "group", "notify"]
    await put(risk, "a", {"u@x.com": 900}, clock.now)
    await restarted.run_pass()
    assert runner.calls[-1] == ("revert", "group", "u@x.com", {"member": "group:u@x.com"})


async def test_what_if_shows_how_each_bands_share_would_move(risk: RiskStore) -> None:
    clock = Clock()
    await put(risk, "a", {"u1@x.com": 900, "u2@x.com": 900, "u3@x.com": 100}, clock.now)
    await put(risk, "b", {"u1@x.com": 100, "u2@x.com": 700}, clock.now)
    settings = Risk.model_validate(
        {"sources": [{"name": "a", "plugin": {"type": "x"}}, {"name": "b", "plugin": {"type": "x"}}]}
    )
    shares = what_if(await risk.records(), settings, {"b": 3}, clock.now)["user"]
    # now: u1 500 (high), u2 800 (low), u3 100 (critical); with b x3: u1 300 (high), u2 750 (medium)
    assert {b: (round(v["now"], 3), round(v["after"], 3)) for b, v in shares.items()} == {
        "critical": (0.333, 0.333),
        "high": (0.333, 0.333),
        "medium": (0.0, 0.333),
        "low": (0.333, 0.0),
    }
    assert what_if(await risk.records(), settings, {"b": 0}, clock.now)["user"]["low"][
        "after"
    ] == pytest.approx(2 / 3)
