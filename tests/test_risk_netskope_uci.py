"""``netskope_uci``: the users' UCI from the tenant simulator's ``getuci``, asked for the users the state
knows (every source's), in batches; the poller stores it; a failing or garbled tenant stores nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from ce_netskope import NetskopeUciSource, UciSourceOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ce_daemon.plugin import AuthError, PermanentError, PluginContext, RiskPage, RiskRecord, TransientError
from ce_daemon.registry import Registry
from ce_daemon.risk.components import RiskPoller
from ce_daemon.risk.normalise import normalise_poll
from ce_daemon.risk.resolve import ResolvedRiskSource
from ce_daemon.risk.settings import RiskSourceConfig
from ce_daemon.risk.store import RISK_MIGRATIONS, RiskStore
from ce_daemon.simulator.faults import Fault
from ce_daemon.simulator.tenant import DEFAULT_TOKEN, TenantSimulator, running_simulator
from ce_daemon.testing.fakes.base import FakeHttpServer, json_response
from ce_daemon.testing.state import open_test_store


@pytest.fixture
async def sim() -> AsyncIterator[TenantSimulator]:
    async with running_simulator(backlog=0, rate_limit=10_000) as simulator:
        yield simulator


def source(url: str, tmp_path: Path, token: str = DEFAULT_TOKEN, **options: Any) -> NetskopeUciSource:
    settings = UciSourceOptions.model_validate({"url": url, "token": token} | options)
    return NetskopeUciSource(settings, PluginContext("uci", tmp_path, tmp_path / "data"))


async def poll(plugin: NetskopeUciSource, users: list[str]) -> list[RiskPage]:
    plugin.known = {"user": users}
    await plugin.open()
    try:
        return [page async for page in plugin.pull()]
    finally:
        await plugin.close()


def test_it_is_registered_as_a_risk_source() -> None:
    found = Registry.discover().get("risk_source", "netskope_uci")
    assert found is not None and found.cls is NetskopeUciSource
    assert NetskopeUciSource.asks_about == frozenset({"user"})


async def test_known_users_are_asked_in_batches_and_scored(sim: TenantSimulator, tmp_path: Path) -> None:
    users = [f"user{n:04d}@example.com" for n in range(1200)]
    for n, user in enumerate(users[:1000]):
        sim.uci.set_uci(user, n % 1001)
    sim.uci.impact(users[3], 100, 1_700_000_000_000, "test", "lowered")  # 3 - 100: floor 0
    sim.uci.set_uci(users[5], 900)  # history: the last entry counts
    pages = await poll(source(sim.url, tmp_path, batch=500), users)
    assert [len(page.records) for page in pages] == [500, 500, 0]  # the last 200 have no UCI
    scored = {r.key: r.score for page in pages for r in page.records}
    assert scored[users[0]] == 0 and scored[users[3]] == 0 and scored[users[5]] == 900
    assert scored[users[999]] == 999 and users[1000] not in scored
    assert all(not page.refused for page in pages)
    poll_scores = normalise_poll(NetskopeUciSource.scale, [r for p in pages for r in p.records])
    assert {r.key: r.score for r in poll_scores.records}[users[5]] == 900  # on Netskope's scale already


async def test_the_tenants_refusals_are_errors_naming_them(sim: TenantSimulator, tmp_path: Path) -> None:
    with pytest.raises(AuthError):
        await poll(source(sim.url, tmp_path, token="not-the-token-0123456789"), ["a@x.com"])
    sim.inject_endpoints("uci", Fault("status", status=503))
    with pytest.raises(TransientError):
        await poll(source(sim.url, tmp_path), ["a@x.com"])
    sim.inject_endpoints("uci", Fault("truncate", keep_fraction=0.3))
    with pytest.raises(TransientError):
        await poll(source(sim.url, tmp_path), ["a@x.com"])
    probe = source(sim.url, tmp_path)
    try:
        assert (await probe.health()).ok
    finally:
        await probe.close()


class GarbledTenant(FakeHttpServer):
    """Answers ``getuci`` with whatever the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: Any = {"usersUci": []}
        self.status = 200

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/v2/incidents/uba/getuci", self._getuci)]

    async def _getuci(self, request: web.Request) -> web.Response:
        await request.read()
        return json_response(self.answer, self.status)


async def test_a_garbled_answer_fails_the_poll_or_is_refused_entry_by_entry(tmp_path: Path) -> None:
    tenant = GarbledTenant()
    async with tenant as url:
        tenant.answer = {"usersUci": "nope"}
        with pytest.raises(TransientError, match="usersUci"):
            await poll(source(url, tmp_path), ["a@x.com"])
        tenant.answer = {"usersUci": [
            {"userId": "a@x.com", "confidences": [{"confidenceScore": "high"}]},
            {"userId": "stranger@x.com", "confidences": [{"confidenceScore": 5}]},
            {"userId": "b@x.com", "confidences": [{"confidenceScore": 640, "timestamp": 1_700_000_000_000}]},
            "junk",
        ]}  # fmt: skip
        (page,) = await poll(source(url, tmp_path), ["a@x.com", "b@x.com"])
        assert [(r.key, r.score, r.seen) for r in page.records] == [("b@x.com", 640.0, 1_700_000_000.0)]
        assert len(page.refused) == 3
        tenant.answer, tenant.status = {"status": "error", "errors": ["users malformed"]}, 400
        with pytest.raises(PermanentError, match="users malformed"):
            await poll(source(url, tmp_path), ["a@x.com"])


async def test_the_poller_asks_for_the_users_every_source_gave(sim: TenantSimulator, tmp_path: Path) -> None:
    store = await open_test_store(tmp_path / "state.db", RISK_MIGRATIONS)
    async with store:
        risk = RiskStore(store)
        others = normalise_poll(NetskopeUciSource.scale, [
            RiskRecord("user", "Ann@Example.com", score=10), RiskRecord("user", "bob@example.com", score=10),
            RiskRecord("device", "host-1", score=10),
        ])  # fmt: skip
        await risk.store_poll("okta", others)
        sim.uci.set_uci("ann@example.com", 420)
        info = Registry.discover().get("risk_source", "netskope_uci")
        assert info is not None
        options = UciSourceOptions.model_validate({"url": sim.url, "token": DEFAULT_TOKEN})
        config = RiskSourceConfig(name="uci", plugin={"type": "netskope_uci"})
        resolved = ResolvedRiskSource(config, info, options, NetskopeUciSource.scale, (), "fp")
        runtime: Any = SimpleNamespace(store=store)
        context = PluginContext("uci", tmp_path, tmp_path)
        poller = RiskPoller("risk_source:uci", resolved, runtime, context=context, interval=60)
        try:
            assert await poller.once()
        finally:
            await poller.close()
        stored = {(key, source): score for _, key, source, score, *_ in await risk.scores()}
        assert stored[("ann@example.com", "uci")] == 420
        assert ("bob@example.com", "uci") not in stored  # no UCI: no score from this source


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=20,
    )
)
async def test_any_json_answer_is_scores_refusals_or_an_error(tmp_path: Path, answer: Any) -> None:
    tenant = GarbledTenant()
    async with tenant as url:
        tenant.answer = {"usersUci": answer} if isinstance(answer, list) else answer
        try:
            pages = await poll(source(url, tmp_path), ["a@x.com"])
        except TransientError:
            return
        for page in pages:
            assert all(r.key == "a@x.com" for r in page.records)
