"""A risk source's poller: a poll is stored whole; a source that is down, times out or returns garbage
leaves the last good scores in place (its error recorded), and they go stale by age."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ce_daemon.keys import StreamKey
from ce_daemon.metrics import Metrics
from ce_daemon.plugin import PluginContext, PluginOptions, RiskPage, RiskRecord, RiskScale, RiskSource
from ce_daemon.registry import PluginInfo
from ce_daemon.risk.components import RiskPoller
from ce_daemon.risk.engine import Engine
from ce_daemon.risk.job import RiskJob
from ce_daemon.risk.netskope import STREAMS, reader_for, spool_records
from ce_daemon.risk.normalise import normalise_poll
from ce_daemon.risk.resolve import ResolvedRiskSource, RiskPlan
from ce_daemon.risk.settings import DAY, NetskopeUba, Risk, RiskSourceConfig
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
    records, missing = spool_records(alerts, STREAMS["uba"])
    assert [(r.entity, r.key, r.score, r.seen) for r in records] == [
        ("user", "Ana@Demo.example.com", 900.0, 100.0),
        ("user", "ana@demo.example.com", 100.0, 200.0),
    ]
    assert records[0].attributes == {"policy": "p"}
    assert missing == 3
    poll = normalise_poll(STREAMS["uba"].scale, records, ("user",))
    assert sorted(r.score for r in poll.records) == [100.0, 900.0]  # 1000 - the anomaly's risk


def test_application_events_score_applications_by_their_cci() -> None:
    events = [
        {"app": "Dropbox", "cci": 81, "ccl": "high", "appcategory": "Cloud Storage", "timestamp": 5},
        {"app": "Shady Share", "cci": "12", "timestamp": 6},
        {"app": "No Index"},
        {"cci": 50},
        {"app": "Odd", "cci": True},
    ]
    records, missing = spool_records(events, STREAMS["application"])
    assert missing == 3
    poll = normalise_poll(STREAMS["application"].scale, records, ("application",))
    scored = {r.key: r.score for r in poll.records}
    assert scored == {"Dropbox": 810.0, "Shady Share": 120.0}  # CCI 0-100, higher = safer
    assert records[0].entity == "application"
    assert records[0].attributes == {"ccl": "high", "category": "Cloud Storage"}


def test_client_status_scores_devices_by_the_clients_state() -> None:
    events = [
        {"device_id": "A1-0001", "status": "Enabled", "user": "u@x.com", "timestamp": 9,
         "host_info": {"hostname": "LAPTOP-A1", "os": "Windows 11"},
         "user_info": {"device_classification_status": "managed"}},
        {"device_id": "B2-0002", "status": "Disabled"},
        {"device_id": "C3-0003", "status": "Upgrade failed"},
        {"device_id": "D4-0004", "status": "Rebooting"},
        {"status": "Enabled"},
    ]  # fmt: skip
    records, missing = spool_records(events, STREAMS["clientstatus"])
    assert missing == 1
    poll = normalise_poll(STREAMS["clientstatus"].scale, records, ("device",))
    assert {r.key: r.score for r in poll.records} == {"A1-0001": 875.0, "B2-0002": 125.0, "C3-0003": 375.0}
    assert sum(poll.skipped.values()) == 1  # a status the scale has no word for is skipped and counted
    assert records[0].attributes == {"hostname": "LAPTOP-A1", "os": "Windows 11", "user": "u@x.com",
                                     "classification": "managed"}  # fmt: skip


def test_the_yaml_names_other_fields_and_direction() -> None:
    chosen = NetskopeUba(tenant="t", stream="clientstatus", key="host_info.hostname", field="score")
    reader = reader_for(chosen)
    assert reader.keys == ("host_info.hostname",) and reader.field == "score"
    records, _ = spool_records([{"host_info": {"hostname": "H"}, "score": "Enabled"}], reader)
    assert [(r.key, r.label) for r in records] == [("H", "Enabled")]
    flipped = reader_for(NetskopeUba(tenant="t", stream="application", higher_is_safer=False))
    assert not flipped.scale.higher_is_safer and flipped.stream("t") == StreamKey(
        "t", "events", "application"
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["user", "app", "device_id", "score", "cci", "status",
                                                 "timestamp", "host_info"]),
                                st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                          st.text(max_size=400), st.dictionaries(st.text(max_size=5),
                                                                                  st.text(max_size=5))),
                                max_size=8), max_size=20),
       st.sampled_from(sorted(STREAMS)))  # fmt: skip
def test_any_record_is_scored_or_counted_never_an_error(records: list[dict[str, Any]], stream: str) -> None:
    reader = STREAMS[stream]
    found, missing = spool_records(records, reader)
    assert len(found) + missing == len(records)
    for record in found:
        assert record.entity == reader.entity and 0 < len(record.key) <= 320
        assert all(len(v) <= 200 for v in record.attributes.values())
    normalise_poll(reader.scale, found, (reader.entity,))


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
