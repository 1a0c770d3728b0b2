"""The Netskope risk actions (UCI impact and reset, SCIM group) against the tenant simulator over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from ce_netskope import NetskopeScimGroupAction, NetskopeUciImpactAction, NetskopeUciResetAction
from ce_netskope.risk import ScimGroupOptions, TenantRiskAction, UciImpactOptions, UciResetOptions, scim_quote
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ce_daemon.plugin import AuthError, PermanentError, PluginContext, RiskTarget, TransientError
from ce_daemon.registry import Registry
from ce_daemon.simulator.faults import Fault
from ce_daemon.simulator.tenant import DEFAULT_TOKEN, TenantSimulator, running_simulator

ALICE = "alice@example.com"
GROUP = "High Risk Users"


def target(key: str = ALICE, rule: str = "critical-users", state: dict[str, str] | None = None) -> RiskTarget:
    return RiskTarget("user", key, rule, 180.0, "critical", state=state or {})


@pytest.fixture
async def sim() -> AsyncIterator[TenantSimulator]:
    async with running_simulator(backlog=0, rate_limit=10_000) as simulator:
        yield simulator


Factory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def make(sim: TenantSimulator, tmp_path: Path) -> AsyncIterator[Factory]:
    """Open an action of ``cls`` on the simulator (options as keywords), closed after the test."""
    opened: list[TenantRiskAction[Any]] = []

    async def build(
        cls: type[TenantRiskAction[Any]], name: str = "risk", data: str = "data", **options: Any
    ) -> Any:
        settings = {"url": sim.url, "token": DEFAULT_TOKEN} | options
        action = cls(cls.Options.model_validate(settings), PluginContext(name, tmp_path, tmp_path / data))
        await action.open()
        opened.append(action)
        return action

    yield build
    for action in opened:
        await action.close()


def members(sim: TenantSimulator, group: str = GROUP) -> list[str]:
    found = [g for g in sim.scim.report()["groups"] if g["displayName"] == group]
    return found[0]["members"] if found else []


def test_the_actions_are_registered_as_risk_actions() -> None:
    found = {p.name: p for p in Registry.discover().all() if p.kind == "risk_action"}
    assert found["netskope_uci_impact"].cls is NetskopeUciImpactAction
    assert found["netskope_uci_reset"].cls is NetskopeUciResetAction
    assert found["netskope_scim_group"].cls is NetskopeScimGroupAction
    assert NetskopeUciImpactAction.revertible and NetskopeScimGroupAction.revertible
    assert not NetskopeUciResetAction.revertible
    assert NetskopeScimGroupAction.entities == {"user"}


# -- SCIM group ----------------------------------------------------------------------------------------


async def test_scim_group_creates_the_group_adds_the_user_and_removes_them(
    sim: TenantSimulator, make: Factory
) -> None:
    sim.scim.add_user(ALICE)
    action = await make(NetskopeScimGroupAction, group=GROUP)
    assert (await action.health()).ok
    state = await action.apply(target("Alice@Example.com"))
    assert members(sim) == [ALICE] and set(state) == {"group_id", "user_id"}
    patches = sim.scim.patches
    assert await action.apply(target()) == state  # already a member: success, nothing sent
    assert sim.scim.patches == patches
    await action.revert(target(state=dict(state)))
    assert members(sim) == []
    await action.revert(target(state=dict(state)))  # not a member: success
    assert sim.scim.patches == patches + 1
    assert len(sim.scim.groups) == 1


async def test_scim_group_uses_an_existing_group_and_keeps_its_members(
    sim: TenantSimulator, make: Factory
) -> None:
    bob = sim.scim.add_user("bob@example.com")
    sim.scim.add_user(ALICE)
    sim.scim.add_group("high risk users", [bob.id])
    action = await make(NetskopeScimGroupAction, group=GROUP, create_missing=False)
    await action.apply(target())
    assert sorted(members(sim, "high risk users")) == [ALICE, "bob@example.com"]
    await action.revert(target())
    assert members(sim, "high risk users") == ["bob@example.com"]


async def test_a_missing_user_or_group_is_a_permanent_error_naming_it(
    sim: TenantSimulator, make: Factory
) -> None:
    action = await make(NetskopeScimGroupAction, group=GROUP)
    with pytest.raises(PermanentError, match=r"ghost@example\.com"):
        await action.apply(target("ghost@example.com"))
    assert sim.scim.groups == {}  # nothing created for a user that is not there
    await action.revert(target("ghost@example.com"))  # nothing to remove: success
    sim.scim.add_user(ALICE)
    strict = await make(NetskopeScimGroupAction, group="Nope", create_missing=False)
    with pytest.raises(PermanentError, match="'Nope'"):
        await strict.apply(target())
    with pytest.raises(PermanentError, match="users"):
        await action.apply(RiskTarget("device", "host-1", "r", 100.0, "critical"))


async def test_scim_replays_after_a_lost_answer_change_nothing_twice(
    sim: TenantSimulator, make: Factory
) -> None:
    sim.scim.add_user(ALICE)
    action = await make(NetskopeScimGroupAction, group=GROUP)
    # The lookups pass, the group's creation lands but its answer is lost.
    sim.inject_endpoints("scim", Fault("status", status=503, count=1))
    with pytest.raises(TransientError):
        await action.apply(target())
    assert sim.scim.groups == {}
    calls = []
    original = action.client.call

    async def lose_writes(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        if method in ("POST", "PATCH"):
            sim.inject_endpoints("scim", Fault("truncate", keep_fraction=0.2))
        return await original(method, path, *args, **kwargs)

    action.client.call = lose_writes
    with pytest.raises(TransientError):
        await action.apply(target())  # the group is created, the answer lost
    assert len(sim.scim.groups) == 1 and members(sim) == []
    with pytest.raises(TransientError):
        await action.apply(target())  # found, not created again; the PATCH lands, its answer lost
    assert members(sim) == [ALICE] and len(sim.scim.groups) == 1
    action.client.call = original
    state = await action.apply(target())  # the replay sees the member: success
    assert members(sim) == [ALICE] and len(sim.scim.groups) == 1 and state["user_id"]
    assert calls.count("POST") == 1 and calls.count("PATCH") == 1


async def test_a_create_that_reports_a_conflict_uses_the_group_that_exists(
    sim: TenantSimulator, make: Factory
) -> None:
    sim.scim.add_user(ALICE)
    action = await make(NetskopeScimGroupAction, group=GROUP)
    original = action.client.call

    async def group_appears(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method == "POST" and not sim.scim.groups:
            sim.scim.add_group(GROUP)  # another writer, between our look and our create
        return await original(method, path, *args, **kwargs)

    action.client.call = group_appears
    await action.apply(target())
    assert members(sim) == [ALICE] and len(sim.scim.groups) == 1


# -- UCI impact ----------------------------------------------------------------------------------------


async def test_uci_impact_lowers_the_score_and_revert_restores_it(
    sim: TenantSimulator, make: Factory
) -> None:
    sim.uci.set_uci(ALICE, 900)
    action = await make(NetskopeUciImpactAction, reduction=250, source="ce-test")
    assert (await action.health()).ok
    state = await action.apply(target())
    assert sim.uci.score(ALICE) == 650
    (anomaly,) = sim.uci.anomalies.values()
    assert state["anomaly_id"] == anomaly.anomaly_id and anomaly.source == "ce-test"
    assert anomaly.reason.endswith("critical-users") and str(anomaly.timestamp) == state["timestamp"]
    assert await action.apply(target()) == state  # applied already: the same anomaly, nothing sent
    assert sim.uci.impacts_received == 1 and sim.uci.score(ALICE) == 650
    await action.revert(target(state=dict(state)))
    assert sim.uci.score(ALICE) == 900
    await action.revert(target(state=dict(state)))  # reverting twice does no harm
    assert sim.uci.score(ALICE) == 900
    again = await action.apply(target())  # the next edge: a new impact
    assert again["anomaly_id"] != state["anomaly_id"] and sim.uci.score(ALICE) == 650


async def test_uci_impact_replayed_after_a_lost_answer_reduces_once(
    sim: TenantSimulator, make: Factory, tmp_path: Path
) -> None:
    action = await make(NetskopeUciImpactAction, reduction=300)
    sim.inject_endpoints("uci", Fault("truncate", keep_fraction=0.1))
    with pytest.raises(TransientError):
        await action.apply(target())
    assert sim.uci.score(ALICE) == 700  # it landed
    # A new instance (the daemon restarted) reads the journal and sends the same request again.
    restarted = await make(NetskopeUciImpactAction, reduction=300)
    state = await restarted.apply(target())
    assert sim.uci.score(ALICE) == 700 and sim.uci.impacts_received == 2
    assert state["anomaly_id"] == next(iter(sim.uci.anomalies))
    # Answered this time: a third apply sends nothing.
    assert await (await make(NetskopeUciImpactAction, reduction=300)).apply(target()) == state
    assert sim.uci.impacts_received == 2
    await restarted.revert(target())  # the journal knows the anomaly when the state does not
    assert sim.uci.score(ALICE) == 1000


async def test_uci_impact_retried_on_another_node_reduces_once(sim: TenantSimulator, make: Factory) -> None:
    """The core's action-log entry (id and decision time) makes the request: a node that takes over an
    apply whose answer was lost elsewhere (its journal is not there) sends the same impact again."""
    decided = 1_780_000_000.25
    first = await make(NetskopeUciImpactAction, reduction=300, data="node-1")
    call = RiskTarget("user", ALICE, "critical-users", 180.0, "critical", action_id=41, decided=decided)
    sim.inject_endpoints("uci", Fault("truncate", keep_fraction=0.1))
    with pytest.raises(TransientError):
        await first.apply(call)
    assert sim.uci.score(ALICE) == 700
    other = await make(NetskopeUciImpactAction, reduction=300, data="node-2")
    state = await other.apply(call)
    assert sim.uci.score(ALICE) == 700 and sim.uci.impacts_received == 2
    (anomaly,) = sim.uci.anomalies.values()
    assert anomaly.timestamp == int(decided * 1000) and anomaly.reason.endswith("[#41]")
    assert state == {"anomaly_id": anomaly.anomaly_id, "timestamp": str(anomaly.timestamp), "action": "41"}
    # The next edge is another action-log entry: a new impact, even within the replay window.
    again = await other.apply(RiskTarget("user", ALICE, "critical-users", 150.0, "critical", action_id=57,
                                         decided=decided + 60))  # fmt: skip
    assert again["anomaly_id"] != state["anomaly_id"] and sim.uci.score(ALICE) == 400
    revert = RiskTarget("user", ALICE, "critical-users", 900.0, "low", state=state, action_id=58)
    await first.revert(revert)
    assert sim.uci.score(ALICE) == 700


async def test_uci_impact_refused_or_throttled_leaves_the_score(sim: TenantSimulator, make: Factory) -> None:
    action = await make(NetskopeUciImpactAction)
    sim.inject_endpoints("uci", Fault("rate_limit", retry_after=60))
    with pytest.raises(TransientError) as caught:
        await action.apply(target())
    assert caught.value.retry_after == 60 and sim.uci.score(ALICE) == 1000
    sim.inject_endpoints("uci", Fault("rate_limit", retry_after=0, count=2))
    await action.apply(target())  # short waits are waited out inside the call
    assert sim.uci.score(ALICE) == 900
    sim.inject_endpoints("uci", Fault("status", status=500))
    with pytest.raises(TransientError):
        await action.revert(target())
    await action.revert(target())
    assert sim.uci.score(ALICE) == 1000
    bad = await make(NetskopeUciImpactAction, name="bad", token="wrong-token")
    with pytest.raises(AuthError):
        await bad.apply(target())
    assert not (await bad.health()).ok


async def test_reverting_an_anomaly_the_tenant_forgot_is_done(sim: TenantSimulator, make: Factory) -> None:
    action = await make(NetskopeUciImpactAction)
    await action.revert(target(state={"anomaly_id": "unknown"}))
    await action.revert(target())  # no state, no journal: nothing to do


# -- UCI reset -----------------------------------------------------------------------------------------


async def test_uci_reset_looks_first_and_resets(sim: TenantSimulator, make: Factory) -> None:
    action = await make(NetskopeUciResetAction)
    assert await action.apply(target()) == {}  # no UCI: nothing to reset, no 400
    sim.uci.add_users([ALICE])
    await action.apply(target())  # at 1000 already
    sim.uci.set_uci(ALICE, 300)
    sim.uci.impact(ALICE, 100, 1, "x", "y")
    await action.apply(target())
    assert sim.uci.score(ALICE) == 1000
    bad = await make(NetskopeUciResetAction, name="bad", token="nope")
    with pytest.raises(AuthError):
        await bad.apply(target())


async def test_option_models_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="reduction"):
        UciImpactOptions.model_validate({"url": "https://t.example", "token": "t", "reduction": 0})
    with pytest.raises(ValueError, match="group"):
        ScimGroupOptions.model_validate({"url": "https://t.example", "token": "t"})
    with pytest.raises(ValueError, match="extra"):
        UciResetOptions.model_validate({"url": "https://t.example", "token": "t", "group": "x"})


# -- SCIM filter quoting -------------------------------------------------------------------------------

_LOCAL = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(local=_LOCAL)
async def test_any_email_is_found_by_its_quoted_filter(
    sim: TenantSimulator, make: Factory, local: str
) -> None:
    """Quotes, backslashes, spaces and unicode in a userName survive the filter: the right user is found."""
    email = f"{local}@example.com"
    user = sim.scim.user_named(email) or sim.scim.add_user(email)
    sim.scim.user_named("decoy@example.com") or sim.scim.add_user("decoy@example.com")
    action = await make(NetskopeScimGroupAction, group=GROUP)
    assert await action._user_id(email) == user.id
    assert scim_quote(email).startswith('"')
