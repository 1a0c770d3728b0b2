"""The tenant simulator's user-risk endpoints: UCI (getuci, uciimpact, allow, reset), SCIM users and
groups, their faults and test hooks, and the clientstatus stream's device records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.simulator.faults import Fault
from ce_daemon.simulator.process import simulator_process
from ce_daemon.simulator.records import RecordFactory
from ce_daemon.simulator.scim import ERROR_SCHEMA, LIST_SCHEMA, PATCH_SCHEMA, parse_filter
from ce_daemon.simulator.tenant import DEFAULT_TOKEN, TOKEN_HEADER, TenantSimulator, running_simulator
from ce_daemon.simulator.uba import ApiError

AUTH = {TOKEN_HEADER: DEFAULT_TOKEN}
GETUCI = "/api/v2/incidents/uba/getuci"
IMPACT = "/api/v2/incidents/user/uciimpact"
RESET = "/api/v2/incidents/users/uci/reset"
USERS = "/api/v2/scim/Users"
GROUPS = "/api/v2/scim/Groups"
ALICE = "alice@example.com"


class Clock:
    """Wall time the test moves (seconds)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sim(clock: Clock) -> AsyncIterator[TenantSimulator]:
    async with running_simulator(backlog=0, rate_limit=10_000, clock=clock) as simulator:
        yield simulator


async def call(
    session: aiohttp.ClientSession,
    sim: TenantSimulator,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    async with session.request(
        method, f"{sim.url}{path}", data=data, headers=AUTH if headers is None else headers, params=params
    ) as response:
        raw = await response.read()
        return response.status, orjson.loads(raw) if response.content_type == "application/json" else raw


def impact(user: str = ALICE, score: int = 300, timestamp: int = 1, reason: str = "r") -> dict[str, Any]:
    return {"user": user, "score": score, "timestamp": timestamp, "source": "ce", "reason": reason}


# -- UCI ---------------------------------------------------------------------------------------------


async def test_impact_lowers_the_uci_getuci_reads_it_and_allow_gives_it_back(
    session: aiohttp.ClientSession, sim: TenantSimulator, clock: Clock
) -> None:
    status, answer = await call(
        session, sim, "POST", GETUCI, {"users": [ALICE], "fromTime": 0, "capPerUser": 1}
    )
    assert (status, answer) == (200, {"usersUci": []})  # no UCI yet
    status, answer = await call(session, sim, "POST", IMPACT, impact())
    assert status == 200
    anomaly = answer["anomalyId"]
    clock.now += 1
    status, answer = await call(
        session, sim, "POST", GETUCI, {"users": ["Alice@Example.com"], "capPerUser": 1}
    )
    assert answer == {
        "usersUci": [
            {"userId": ALICE, "confidences": [{"confidenceScore": 700, "timestamp": 1_700_000_000_000}]}
        ]
    }
    status, answer = await call(session, sim, "POST", f"/api/v2/incidents/anomalies/{anomaly}/allow")
    assert status == 200 and sim.uci.score(ALICE) == 1000
    status, _ = await call(session, sim, "POST", f"/api/v2/incidents/anomalies/{anomaly}/allow")
    assert status == 200 and sim.uci.score(ALICE) == 1000  # allowing twice changes nothing
    _, answer = await call(session, sim, "POST", GETUCI, {"users": [ALICE], "fromTime": 0, "capPerUser": 5})
    assert [c["confidenceScore"] for c in answer["usersUci"][0]["confidences"]] == [700, 1000]
    _, answer = await call(
        session, sim, "POST", GETUCI, {"users": [ALICE], "fromTime": 1_700_000_000_500, "capPerUser": 5}
    )
    assert [c["confidenceScore"] for c in answer["usersUci"][0]["confidences"]] == [1000]


async def test_an_identical_impact_is_the_same_anomaly_and_reductions_floor_at_zero(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    _, first = await call(session, sim, "POST", IMPACT, impact(score=600))
    _, again = await call(session, sim, "POST", IMPACT, impact(score=600))
    assert first == again and sim.uci.score(ALICE) == 400
    _, other = await call(session, sim, "POST", IMPACT, impact(score=600, timestamp=2))
    assert other != first and sim.uci.score(ALICE) == 0
    await call(session, sim, "POST", f"/api/v2/incidents/anomalies/{other['anomalyId']}/allow")
    assert sim.uci.score(ALICE) == 400
    assert sim.uci.report()["impacts_received"] == 3


async def test_reset_brings_the_uci_to_1000_and_refuses_users_without_one(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    _, answer = await call(session, sim, "POST", IMPACT, impact(score=500))
    status, refused = await call(session, sim, "POST", RESET, {"users": [ALICE, "nobody@example.com"]})
    assert status == 400 and refused["status"] == "error" and "nobody@example.com" in refused["errors"][0]
    assert sim.uci.score(ALICE) == 500  # a refused reset changes nothing
    status, _ = await call(session, sim, "POST", RESET, {"users": [ALICE]})
    assert status == 200 and sim.uci.score(ALICE) == 1000
    await call(session, sim, "POST", f"/api/v2/incidents/anomalies/{answer['anomalyId']}/allow")
    assert sim.uci.score(ALICE) == 1000  # an anomaly reset away gives nothing back


async def test_uci_refusals_have_the_api_error_shape(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    status, answer = await call(session, sim, "POST", IMPACT, impact(), headers={TOKEN_HEADER: "wrong"})
    assert status == 401 and answer["errorCode"] == "Unauthorized"
    status, answer = await call(session, sim, "POST", IMPACT, impact(score=0))
    assert status == 400 and answer["status"] == "error"
    status, answer = await call(session, sim, "POST", IMPACT, {"user": ALICE})
    assert status == 400
    status, answer = await call(session, sim, "POST", "/api/v2/incidents/anomalies/nope/allow")
    assert status == 404 and answer["errorCode"] == "Not Found"
    async with session.post(f"{sim.url}{IMPACT}", data=b"{not json", headers=AUTH) as response:
        assert response.status == 400
    assert sim.uci.report()["anomalies"] == []


async def test_uci_faults_refuse_or_apply_and_lose_the_answer(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    status, _ = await call(
        session,
        sim,
        "POST",
        "/_sim/faults",
        {"endpoint": "uci", "fault": {"type": "rate_limit", "retry_after": 7}},
    )
    assert status == 200 and sim.pending_faults()["uci"][0]["type"] == "rate_limit"
    async with session.post(f"{sim.url}{IMPACT}", data=orjson.dumps(impact()), headers=AUTH) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "7"
    assert sim.uci.score(ALICE) == 1000
    sim.inject_endpoints("uci", Fault("truncate", keep_fraction=0.3))
    with pytest.raises(aiohttp.ClientPayloadError):
        await call(session, sim, "POST", IMPACT, impact())
    assert sim.uci.score(ALICE) == 700  # applied, answer lost
    with pytest.raises(ValueError, match="faults"):
        sim.inject_endpoints("uci", Fault("malformed_json"))
    with pytest.raises(ValueError, match="unknown endpoints"):
        sim.inject_endpoints("nope", Fault("status"))


async def test_the_uci_hook_moves_a_score_and_sim_uci_reports_it(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    status, answer = await call(session, sim, "POST", "/_sim/uci", {"user": "Bob@example.com", "score": 420})
    assert (status, answer["score"]) == (200, 420)
    _, answer = await call(session, sim, "POST", "/_sim/uci", {"user": "bob@example.com", "delta": -500})
    assert answer["score"] == 0
    _, answer = await call(session, sim, "POST", "/_sim/uci", {"user": "bob@example.com", "delta": 700})
    assert answer["score"] == 700
    status, _ = await call(session, sim, "POST", "/_sim/uci", {"user": "bob@example.com", "score": 1001})
    assert status == 400
    _, report = await call(session, sim, "GET", "/_sim/uci")
    assert report["users"]["bob@example.com"]["score"] == 700
    assert [h["confidenceScore"] for h in report["users"]["bob@example.com"]["history"]] == [420, 0, 700]


# -- SCIM --------------------------------------------------------------------------------------------


async def test_scim_users_are_created_and_found_by_username(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    status, user = await call(session, sim, "POST", USERS, {"userName": ALICE})
    assert status == 201 and user["userName"] == ALICE and user["id"]
    status, dup = await call(session, sim, "POST", USERS, {"userName": ALICE.upper()})
    assert status == 409 and dup == {
        "schemas": [ERROR_SCHEMA],
        "status": "409",
        "detail": f"User with userName {ALICE.upper()!r} already exists",
        "scimType": "uniqueness",
    }
    status, found = await call(
        session, sim, "GET", USERS, params={"filter": 'userName eq "ALICE@example.com"'}
    )
    assert status == 200 and found["schemas"] == [LIST_SCHEMA]
    assert found["totalResults"] == 1 and found["Resources"][0]["id"] == user["id"]
    _, none = await call(session, sim, "GET", USERS, params={"filter": 'userName eq "bob@example.com"'})
    assert none["totalResults"] == 0 and none["Resources"] == []
    status, got = await call(session, sim, "GET", f"{USERS}/{user['id']}")
    assert status == 200 and got["userName"] == ALICE


async def test_scim_errors_have_the_scim_shape(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    status, answer = await call(session, sim, "GET", USERS, params={"filter": "userName sw 'a'"})
    assert status == 400 and answer["schemas"] == [ERROR_SCHEMA] and answer["scimType"] == "invalidFilter"
    status, answer = await call(session, sim, "GET", USERS, params={"filter": 'emails eq "a"'})
    assert status == 400 and answer["scimType"] == "invalidFilter"
    status, answer = await call(session, sim, "GET", f"{GROUPS}/missing")
    assert status == 404 and answer == {
        "schemas": [ERROR_SCHEMA],
        "status": "404",
        "detail": "Group 'missing' not found",
    }
    status, answer = await call(session, sim, "GET", USERS, headers={TOKEN_HEADER: "wrong"})
    assert status == 401 and answer["schemas"] == [ERROR_SCHEMA] and answer["status"] == "401"
    sim.inject_endpoints("scim", Fault("rate_limit", retry_after=3))
    status, answer = await call(session, sim, "GET", USERS)
    assert status == 429 and answer["schemas"] == [ERROR_SCHEMA] and answer["status"] == "429"


async def test_scim_groups_are_created_and_patched_per_rfc_7644(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    alice, bob = sim.scim.add_user(ALICE), sim.scim.add_user("bob@example.com")
    status, group = await call(session, sim, "POST", GROUPS, {"displayName": "Risky Users", "members": []})
    assert status == 201 and group["members"] == []
    status, dup = await call(session, sim, "POST", GROUPS, {"displayName": "risky users"})
    assert status == 409 and dup["scimType"] == "uniqueness"
    path = f"{GROUPS}/{group['id']}"

    def patch(op: str, *ids: str, path: str = "members") -> dict[str, Any]:
        operation: dict[str, Any] = {"op": op, "path": path}
        if ids:
            operation["value"] = [{"value": uid} for uid in ids]
        return {"schemas": [PATCH_SCHEMA], "Operations": [operation]}

    status, answer = await call(session, sim, "PATCH", path, patch("add", alice.id, bob.id))
    assert status == 200 and [m["value"] for m in answer["members"]] == [alice.id, bob.id]
    _, answer = await call(session, sim, "PATCH", path, patch("add", alice.id))
    assert len(answer["members"]) == 2  # no member twice
    _, answer = await call(session, sim, "PATCH", path, patch("remove", alice.id))
    assert [m["display"] for m in answer["members"]] == ["bob@example.com"]
    _, answer = await call(session, sim, "PATCH", path, patch("remove", alice.id))
    assert len(answer["members"]) == 1  # removing a non-member is no error
    _, answer = await call(session, sim, "PATCH", path, patch("remove", path=f'members[value eq "{bob.id}"]'))
    assert answer["members"] == []
    status, answer = await call(session, sim, "PATCH", path, patch("add", "no-such-user"))
    assert status == 400 and answer["scimType"] == "invalidValue"
    status, answer = await call(session, sim, "PATCH", path, {"Operations": []})
    assert status == 400 and answer["scimType"] == "invalidSyntax"
    status, answer = await call(session, sim, "PATCH", f"{GROUPS}/nope", patch("add", alice.id))
    assert status == 404
    _, found = await call(session, sim, "GET", GROUPS, params={"filter": 'displayName eq "RISKY USERS"'})
    assert [g["id"] for g in found["Resources"]] == [group["id"]]
    await call(session, sim, "PATCH", path, patch("add", bob.id))
    _, report = await call(session, sim, "GET", "/_sim/scim")
    assert report["groups"] == [
        {"id": group["id"], "displayName": "Risky Users", "members": ["bob@example.com"]}
    ]
    status, added = await call(session, sim, "POST", "/_sim/scim/users", {"userNames": ["c@example.com"]})
    assert status == 200 and len(added["ids"]) == 1 and sim.scim.user_named("C@example.com") is not None


@given(st.text(max_size=60))
def test_a_filter_value_quoted_as_a_json_string_reads_back_whole(value: str) -> None:
    """Any string, quotes, backslashes and control characters included, survives the filter's quoting."""
    quoted = orjson.dumps(value).decode()
    assert parse_filter(f"userName eq {quoted}", ("userName",)) == ("userName", value)
    assert parse_filter(f"  USERNAME  EQ {quoted} ", ("userName",)) == ("userName", value)


def test_a_filter_that_is_not_one_comparison_is_refused() -> None:
    for text in ('userName eq "a" and active eq true', "userName eq a", 'userName eq "a', ""):
        with pytest.raises(ApiError, match="filter"):
            parse_filter(text, ("userName",))


# -- clientstatus --------------------------------------------------------------------------------------


def test_clientstatus_records_name_a_recurring_device() -> None:
    """Each record carries the device's host id (``device_id``, CE's Devices key) and a host that recurs."""
    factory = RecordFactory(7)
    records = [factory.make("events", "clientstatus", seq, 1000 + seq) for seq in range(600)]
    devices: dict[str, tuple[str, str]] = {}
    for record in records:
        host = record["host_info"]
        assert {"hostname", "nsdeviceuid", "serial_number", "mac_addresses", "os"} <= set(host)
        assert host["last_update_timestamp"] == record["timestamp"]
        identity = (host["hostname"], record["user"])
        assert devices.setdefault(record["device_id"], identity) == identity  # one host, one user per id
    assert 1 < len(devices) < len(records)  # devices recur


async def test_the_clientstatus_stream_serves_device_records(
    session: aiohttp.ClientSession,
) -> None:
    async with running_simulator(backlog=20, subtypes=["events/clientstatus"]) as sim:
        async with session.get(
            f"{sim.url}/api/v2/events/dataexport/events/clientstatus",
            params={"index": "i", "operation": "head"},
            headers=AUTH,
        ) as response:
            page = await response.json()
    assert page["result"] and all(r["device_id"] and r["host_info"]["nsdeviceuid"] for r in page["result"])


async def test_a_simulator_process_moves_a_uci_and_reports_users_and_groups() -> None:
    """``ce-daemon simulate`` serves the hooks a daemon-level test drives (the child's own API)."""
    async with simulator_process({"backlog": 0}) as child:
        assert await child.move_uci(ALICE, score=600) == 600
        assert await child.move_uci(ALICE, delta=-100) == 500
        assert (await child.uci())["users"][ALICE]["score"] == 500
        (user_id,) = await child.add_scim_users(ALICE)
        assert (await child.scim())["users"] == [{"id": user_id, "userName": ALICE}]
