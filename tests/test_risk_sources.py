"""A risk source's poller: a poll is stored whole; a source that is down, times out or returns garbage
leaves the last good scores in place (its error recorded), and they go stale by age."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from ce_daemon.metrics import Metrics
from ce_daemon.plugin import PluginContext, PluginOptions, RiskPage, RiskRecord, RiskScale, RiskSource
from ce_daemon.registry import PluginInfo
from ce_daemon.risk.components import RiskPoller, uba_records
from ce_daemon.risk.engine import Engine
from ce_daemon.risk.job import RiskJob
from ce_daemon.risk.normalise import normalise_poll
from ce_daemon.risk.resolve import ResolvedRiskSource, RiskPlan
from ce_daemon.risk.settings import DAY, Risk, RiskSourceConfig
from ce_daemon.risk.store import RISK_MIGRATIONS, RiskStore
from ce_daemon.testing.state import open_test_store


class Options(PluginOptions):
    pass


class Scripted(RiskSource[Options]):
    """Answers what the test scripts: pages, an error, or garbage."""

    api_version = 1
    entities = frozenset({"user"})
    scale = RiskScale(low=0, high=100, higher_is_safer=False)  # KnowBe4-like
    script: ClassVar[list[Any]] = []

    async def pull(self) -> AsyncIterator[RiskPage]:  # type: ignore[override]
        step = self.script.pop(0)
        if isinstance(step, Exception):
            yield RiskPage([RiskRecord("user", "half@x.com", score=1)])
            raise step
        for page in step:
            yield page


@pytest.fixture
async def poller(tmp_path: Path) -> AsyncIterator[tuple[RiskPoller, RiskStore]]:
    store = await open_test_store(tmp_path / "state.db", RISK_MIGRATIONS)
    async with store:
        info = PluginInfo("risk_source", "scripted", "tests:Scripted", "tests", "0", Scripted, None, 1)
        config = RiskSourceConfig(name="kb4", plugin={"type": "scripted"})
        source = ResolvedRiskSource(config, info, Options(), Scripted.scale, (), "fp")
        runtime: Any = SimpleNamespace(store=store)
        context = PluginContext("kb4", tmp_path, tmp_path)
        yield RiskPoller("risk_source:kb4", source, runtime, context=context, interval=60), RiskStore(store)


async def scores(risk: RiskStore) -> dict[str, float]:
    return {key: score for _, key, _, _, _, score, *_ in await risk.records()}


async def test_a_failing_or_garbage_source_keeps_the_last_good_scores(
    poller: tuple[RiskPoller, RiskStore],
) -> None:
    component, risk = poller
    good = [RiskPage([RiskRecord("user", "A@x.com", score=10), RiskRecord("user", "b@x.com", score=120)],
                     refused=[("row 3", "no email")])]  # fmt: skip
    Scripted.script[:] = [
        good,
        ConnectionError("vendor down"),  # fails after a page: nothing of this poll is stored
        [RiskPage([RiskRecord("user", "a@x.com", score=-5), RiskRecord("user", "b@x.com", label="??")])],
        ["not a page"],
    ]
    assert await component.once()
    assert await scores(risk) == {"a@x.com": 900.0}  # 120 is out of KnowBe4's range: skipped
    [row] = await risk.sources()
    assert (row.polls, row.records, row.skipped, row.error) == (1, 1, 2, "")
    for _ in range(3):
        assert not await component.once()
        assert await scores(risk) == {"a@x.com": 900.0}
    [row] = await risk.sources()
    assert row.polls == 4 and row.last_ok > 0 and "not a RiskPage" in row.error
    assert component.status.counters["failures"] == 3


async def test_scores_of_a_source_that_stays_down_go_stale(poller: tuple[RiskPoller, RiskStore]) -> None:
    component, risk = poller
    Scripted.script[:] = [[RiskPage([RiskRecord("user", "a@x.com", score=10)])]]
    assert await component.once()
    now = [max((await risk.source_freshness()).values())]
    engine = Engine(risk, {"kb4": component.source.weight()}, clock=lambda: now[0])
    await engine.run_pass()
    assert [(k, s) for _, k, s, *_ in await risk.entities()] == [("a@x.com", 900.0)]
    now[0] += 7 * DAY + 1
    await engine.run_pass()
    assert [(k, s, b) for _, k, s, b, *_ in await risk.entities()] == [("a@x.com", None, "none")]


def test_uba_alerts_give_the_users_latest_score() -> None:
    alerts = [
        {"user": "Ana@Demo.example.com", "score": 900, "timestamp": 100, "policy": "p"},
        {"user": "ana@demo.example.com", "score": "100", "timestamp": 200},
        {"user": "bo@x.com", "score": None, "timestamp": 200},
        {"score": 5},
        {"user": "not a user", "score": 5},
    ]
    records, missing = uba_records(alerts, "score")
    assert [(r.key, r.score, r.seen) for r in records] == [
        ("Ana@Demo.example.com", 900.0, 100.0),
        ("ana@demo.example.com", 100.0, 200.0),
    ]
    assert missing == 3


async def test_status_reports_a_failing_source_and_its_stale_scores(
    poller: tuple[RiskPoller, RiskStore],
) -> None:
    component, risk = poller
    week_ago = time.time() - 8 * DAY
    Scripted.script[:] = [ConnectionError("vendor down")]
    poll = normalise_poll(Scripted.scale, [RiskRecord("user", "a@x.com", score=10, seen=week_ago)])
    await risk.store_poll("kb4", poll, now=week_ago)
    assert not await component.once()
    plan = RiskPlan(Risk(), {"kb4": component.source}, {}, (), "fp")
    runtime: Any = SimpleNamespace(store=risk.store, metrics=Metrics())
    await Engine(risk, plan.weights()).run_pass()
    status = await RiskJob().status(None, plan, runtime)  # type: ignore[arg-type]
    assert "vendor down" in status["source_kb4_error"]
    assert status["source_kb4_stale_days"] >= 8
    assert status["users_none"] == 1
