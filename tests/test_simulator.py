"""The Netskope tenant simulator: auth, iterator operations, rate limit, faults, records, control."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDictProxy

from ce_daemon.netskope.subtypes import (
    ALERT_DISPLAY_NAMES,
    DataKind,
    all_streams,
    dataexport_path,
    normalise_subtype,
)
from ce_daemon.simulator.command import add_simulate_arguments, run_simulator, simulator_from_arguments
from ce_daemon.simulator.faults import Fault
from ce_daemon.simulator.iterator import SlidingWindow, Timeline
from ce_daemon.simulator.records import RecordFactory, record_id
from ce_daemon.simulator.tenant import DEFAULT_TOKEN, TenantSimulator, running_simulator

START = 1_700_000_000.0
SEED = 42


class ManualClock:
    """A clock the test moves by hand, so nothing depends on how fast the machine is."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sim_options(**overrides: Any) -> dict[str, Any]:
    """A simulator frozen at START with a 100-record backlog, one record a second, no rate limit."""
    options: dict[str, Any] = {
        "seed": SEED,
        "backlog": 100,
        "backlog_span": 100,
        "arrival_rate": 0.0,
        "page_size": 30,
        "idle_wait_time": 0.25,
        "rate_limit": 10_000,
        "start_time": START,
        "clock": ManualClock(START),
        "monotonic": ManualClock(0.0),
    }
    options.update(overrides)
    return options


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def sim() -> AsyncIterator[TenantSimulator]:
    async with running_simulator(**sim_options()) as simulator:
        yield simulator


async def get(
    session: aiohttp.ClientSession,
    simulator: TenantSimulator,
    kind: DataKind = "alerts",
    subtype: str = "dlp",
    operation: str = "next",
    index: str = "ix",
    token: str | None = DEFAULT_TOKEN,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """One data-export request: status, body (parsed when JSON), headers."""
    headers = {"Netskope-Api-Token": token} if token is not None else {}
    url = f"{simulator.url}{dataexport_path(kind, subtype)}"
    async with session.get(url, params={"index": index, "operation": operation}, headers=headers) as resp:
        body = await resp.read()
        if resp.content_type != "application/json":
            return resp.status, body.decode(), resp.headers
        return resp.status, orjson.loads(body), resp.headers


def seqs_of(records: list[dict[str, Any]], kind: DataKind = "alerts", subtype: str = "dlp") -> list[int]:
    """Recover each record's seq by recomputing ids (the simulator's backlog is small)."""
    by_id = {record_id(SEED, kind, subtype, seq): seq for seq in range(1000)}
    return [by_id[r["_id"]] for r in records]


# -- auth and request validation ------------------------------------------------------------


async def test_missing_token_is_401_with_json_error(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """A request without Netskope-Api-Token is refused with 401 and a JSON error body."""
    status, body, headers = await get(session, sim, token=None)
    assert status == 401
    assert body["status"] == "error"
    assert "Unauthorized" in body["errors"][0]
    assert {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"} <= set(headers)


async def test_unknown_token_is_401(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """A token the tenant does not know is refused with 401."""
    status, _, _ = await get(session, sim, token="not-a-token")
    assert status == 401


async def test_token_not_allowed_an_endpoint_is_403(session: aiohttp.ClientSession) -> None:
    """A token limited to some streams gets 403 elsewhere and 200 on its own streams."""
    tokens = {"dlp-only": {("alerts", "dlp")}}
    async with running_simulator(**sim_options(tokens=tokens)) as simulator:
        denied, body, _ = await get(session, simulator, "events", "page", token="dlp-only")
        allowed, _, _ = await get(session, simulator, "alerts", "dlp", token="dlp-only")
    assert (denied, allowed) == (403, 200)
    assert "Forbidden" in body["errors"][0]


async def test_unknown_subtype_missing_index_and_bad_operation_are_refused(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """Unknown subtypes answer 404; a missing index or an invalid operation answers 400."""
    unknown, _, _ = await get(session, sim, "alerts", "nosuch")
    no_index, _, _ = await get(session, sim, index="")
    bad_op, body, _ = await get(session, sim, operation="later")
    assert (unknown, no_index, bad_op) == (404, 400, 400)
    assert "later" in body["errors"][0]


# -- iterator operations -------------------------------------------------------------------


async def test_head_returns_the_oldest_page(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """`head` serves records 0..page_size-1, and says more is waiting with wait_time 0."""
    status, body, _ = await get(session, sim, operation="head")
    assert status == 200 and body["ok"] == 1
    assert [r["_id"] for r in body["result"]] == [record_id(SEED, "alerts", "dlp", s) for s in range(30)]
    assert body["wait_time"] == 0
    assert body["timestamp_hwm"] == body["result"][-1]["timestamp"]


async def test_next_continues_after_the_last_page(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """`next` serves the page after the last one delivered, until the backlog runs out."""
    pages = [(await get(session, sim, operation=op))[1] for op in ("head", "next", "next", "next", "next")]
    seqs = [seqs_of(page["result"]) for page in pages]
    assert seqs[:4] == [list(range(30)), list(range(30, 60)), list(range(60, 90)), list(range(90, 100))]
    assert seqs[4] == []
    assert [p["wait_time"] for p in pages] == [0, 0, 0, 0.25, 0.25]


async def test_page_size_caps_every_page(session: aiohttp.ClientSession) -> None:
    """No page holds more than page_size records, whatever is waiting."""
    async with running_simulator(**sim_options(page_size=7, backlog=50)) as simulator:
        sizes = [
            len((await get(session, simulator, operation=op))[1]["result"]) for op in ["head"] + ["next"] * 8
        ]
    assert sizes == [7, 7, 7, 7, 7, 7, 7, 1, 0]


async def test_default_page_size_is_ten_thousand_records(session: aiohttp.ClientSession) -> None:
    """By default a page holds 10,000 records; the rest of the backlog comes with the next page."""
    options = sim_options(backlog=12_000)
    del options["page_size"]
    async with running_simulator(**options) as simulator:
        _, first, _ = await get(session, simulator, operation="head")
        _, second, _ = await get(session, simulator, operation="next")
    assert (len(first["result"]), first["wait_time"]) == (10_000, 0)
    assert (len(second["result"]), second["wait_time"]) == (2_000, 0.25)
    assert second["result"][-1]["_id"] == record_id(SEED, "alerts", "dlp", 11_999)


async def test_a_large_page_is_written_byte_for_byte_as_orjson_writes_it() -> None:
    """A page written a slice at a time (the simulator's loop keeps taking requests) is the same JSON."""
    options = sim_options(backlog=1_234, page_size=2_000, gzip=False)
    async with running_simulator(**options) as simulator, aiohttp.ClientSession() as client:
        url = f"{simulator.url}{dataexport_path('alerts', 'dlp')}"
        headers = {"Netskope-Api-Token": DEFAULT_TOKEN}
        async with client.get(url, params={"index": "ix", "operation": "head"}, headers=headers) as resp:
            body = await resp.read()
    timeline, seqs = Timeline(START, 1_234, 100), range(1_234)
    records = RecordFactory(SEED, "demo").make_many("alerts", "dlp", seqs, timeline.timestamps(seqs))
    page = {"ok": 1, "result": records, "wait_time": 0.25, "timestamp_hwm": timeline.timestamp(1_233)}
    assert body == orjson.dumps(page)


async def test_resend_repeats_the_last_page_exactly_without_moving(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """`resend` answers the same body as the last page and the next `next` continues after it."""
    await get(session, sim, operation="head")
    _, second, _ = await get(session, sim, operation="next")
    _, again, _ = await get(session, sim, operation="resend")
    _, third, _ = await get(session, sim, operation="next")
    assert again == second
    assert seqs_of(third["result"]) == list(range(60, 90))


async def test_resend_before_any_page_is_empty(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """`resend` on an index that was never served answers an empty page."""
    status, body, _ = await get(session, sim, operation="resend", index="fresh")
    assert status == 200 and body["result"] == []


async def test_epoch_positions_at_the_first_record_at_or_after_it(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """An epoch operation serves from the first record stamped at or after that second, and moves there."""
    epoch = int(START) - 40  # the backlog spreads one record a second over the last 100 s
    _, body, _ = await get(session, sim, operation=str(epoch))
    _, following, _ = await get(session, sim, operation="next")
    assert seqs_of(body["result"]) == list(range(60, 90))
    assert body["result"][0]["timestamp"] == epoch
    assert seqs_of(following["result"]) == list(range(90, 100))


async def test_new_index_next_starts_from_now_like_tail(session: aiohttp.ClientSession) -> None:
    """A brand-new index's `next`, like `tail`, skips the backlog and then follows new arrivals."""
    clock = ManualClock(START)
    async with running_simulator(**sim_options(arrival_rate=2.0, clock=clock)) as simulator:
        _, first_next, _ = await get(session, simulator, index="a")
        _, first_tail, _ = await get(session, simulator, index="b", operation="tail")
        clock.now = START + 5
        _, after_next, _ = await get(session, simulator, index="a")
        _, after_tail, _ = await get(session, simulator, index="b")
    assert first_next["result"] == first_tail["result"] == []
    assert first_next["timestamp_hwm"] == int(START)
    assert seqs_of(after_next["result"]) == seqs_of(after_tail["result"]) == list(range(100, 110))


async def test_records_exist_only_once_their_timestamp_has_passed(session: aiohttp.ClientSession) -> None:
    """Arrivals after start are served only when the clock reaches their timestamp."""
    clock = ManualClock(START)
    async with running_simulator(**sim_options(arrival_rate=1.0, page_size=1000, clock=clock)) as simulator:
        _, at_start, _ = await get(session, simulator, operation="head")
        clock.now = START + 3.5
        _, later, _ = await get(session, simulator, operation="next")
    assert len(at_start["result"]) == 100
    assert [r["timestamp"] for r in later["result"]] == [int(START) + 1, int(START) + 2, int(START) + 3]


async def test_timestamps_never_decrease_and_hwm_follows_the_page(session: aiohttp.ClientSession) -> None:
    """Across pages timestamps are non-decreasing; hwm is the last record's, or now when empty."""
    clock = ManualClock(START + 0.5)
    async with running_simulator(**sim_options(arrival_rate=3.0, clock=clock)) as simulator:
        pages = [(await get(session, simulator, operation=op))[1] for op in ["head"] + ["next"] * 4]
    stamps = [r["timestamp"] for p in pages for r in p["result"]]
    assert stamps == sorted(stamps)
    for page in pages:
        expected = page["result"][-1]["timestamp"] if page["result"] else int(START + 0.5)
        assert page["timestamp_hwm"] == expected


async def test_each_endpoint_and_index_keeps_its_own_cursor(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """Two indexes, or two endpoints, never move each other's cursor."""
    await get(session, sim, operation="head", index="one")
    _, other_index, _ = await get(session, sim, operation="head", index="two")
    _, other_endpoint, _ = await get(session, sim, "alerts", "malware", operation="head", index="one")
    _, one, _ = await get(session, sim, operation="next", index="one")
    assert seqs_of(other_index["result"]) == list(range(30))
    assert seqs_of(other_endpoint["result"], "alerts", "malware") == list(range(30))
    assert seqs_of(one["result"]) == list(range(30, 60))


async def test_streams_not_listed_in_subtypes_answer_empty_pages(session: aiohttp.ClientSession) -> None:
    """Only the streams given in `subtypes` have data."""
    async with running_simulator(**sim_options(subtypes=["alerts/DLP"])) as simulator:
        _, dlp, _ = await get(session, simulator, operation="head")
        _, page, _ = await get(session, simulator, "events", "page", operation="head")
    assert len(dlp["result"]) == 30
    assert page["result"] == []


# -- rate limit -----------------------------------------------------------------------------


async def test_fifth_request_in_one_second_is_429_with_retry_after(session: aiohttp.ClientSession) -> None:
    """With rate_limit 4, four back-to-back requests pass and the fifth gets a real 429."""
    async with running_simulator(**sim_options(rate_limit=4)) as simulator:
        answers = [await get(session, simulator) for _ in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200, 429]
    assert [h["ratelimit-remaining"] for _, _, h in answers] == ["3", "2", "1", "0", "0"]
    assert all(h["ratelimit-limit"] == "4" for _, _, h in answers)
    _, body, headers = answers[4]
    assert int(headers["Retry-After"]) >= 1
    assert int(headers["ratelimit-reset"]) >= 1
    assert body["errorCode"] == "Too Many Requests"


async def test_window_slides_and_rejected_requests_do_not_count(session: aiohttp.ClientSession) -> None:
    """A slot frees exactly one second after an accepted request; 429s never fill the window."""
    monotonic = ManualClock(10.0)
    async with running_simulator(**sim_options(rate_limit=2, monotonic=monotonic)) as simulator:
        first = [(await get(session, simulator))[0] for _ in range(2)]
        monotonic.now = 10.5
        refused = [(await get(session, simulator))[0] for _ in range(3)]
        monotonic.now = 11.0  # the two accepted at 10.0 leave the half-open window (10.0, 11.0]
        again = [(await get(session, simulator))[0] for _ in range(3)]
        stats = simulator.stats()
    assert (first, refused, again) == ([200, 200], [429, 429, 429], [200, 200, 429])
    assert stats.rate_limited == 4
    assert stats.max_requests_per_second == 6  # 3 at 10.5 plus 3 at 11.0
    assert stats.max_accepted_per_second == 2


async def test_each_token_has_its_own_rate_limit_window(session: aiohttp.ClientSession) -> None:
    """One token being throttled leaves another token's budget intact."""
    options = sim_options(rate_limit=1, tokens={"a": None, "b": None})
    async with running_simulator(**options) as simulator:
        statuses = [(await get(session, simulator, token=t))[0] for t in ("a", "a", "b")]
    assert statuses == [200, 429, 200]


async def test_max_requests_per_second_counts_requests_received(session: aiohttp.ClientSession) -> None:
    """Requests received within one second all count toward max_requests_per_second."""
    async with running_simulator(**sim_options(monotonic=ManualClock(5.0))) as simulator:
        for _ in range(7):
            await get(session, simulator)
        stats = simulator.stats()
    assert stats.max_requests_per_second == 7
    assert stats.requests_total == 7
    assert stats.requests == {"alerts/dlp": 7}


# -- faults ---------------------------------------------------------------------------------


async def test_status_fault_answers_the_status_and_leaves_the_cursor(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """An injected 503 burst answers 503 (HTML, like a gateway) and the next `next` loses nothing."""
    await get(session, sim, operation="head")
    sim.inject("alerts", "dlp", Fault("status", status=503, count=2))
    first, html, _ = await get(session, sim)
    second, _, _ = await get(session, sim)
    third, body, _ = await get(session, sim)
    assert (first, second, third) == (503, 503, 200)
    assert "503 Service Unavailable" in html
    assert seqs_of(body["result"]) == list(range(30, 60))


async def test_faults_are_consumed_in_order(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """Faults queued for an endpoint hit the following requests first in, first out."""
    sim.inject("alerts", "dlp", Fault("status", status=500))
    sim.inject("alerts", "dlp", Fault("status", status=502))
    sim.inject("alerts", "dlp", Fault("not_ok"))
    statuses = [(await get(session, sim))[0] for _ in range(2)]
    _, not_ok, _ = await get(session, sim)
    assert statuses == [500, 502]
    assert not_ok["ok"] == 0
    assert sim.pending_faults() == {}


async def test_not_ok_fault_reports_failure_without_moving_the_cursor(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """`not_ok` answers 200 with ok 0 and a message, and serves nothing."""
    sim.inject("alerts", "dlp", Fault("not_ok", message="Internal error"))
    status, body, _ = await get(session, sim, operation="head")
    _, resend, _ = await get(session, sim, operation="resend")
    assert status == 200
    assert body["ok"] == 0 and "Internal error" in body["message"]
    assert resend["result"] == []


async def test_rate_limit_fault_sends_429_with_the_given_retry_after(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """An injected 429 storm carries its Retry-After and counts as a 429 sent."""
    sim.inject("alerts", "dlp", Fault("rate_limit", retry_after=7, count=3))
    answers = [await get(session, sim) for _ in range(4)]
    assert [status for status, _, _ in answers] == [429, 429, 429, 200]
    assert answers[0][2]["Retry-After"] == "7"
    assert sim.stats().rate_limited == 3


async def test_slow_fault_holds_the_answer_after_the_cursor_moved(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """While a `slow` answer is in flight its page is already spent; a client that gives up must `resend`."""
    sim.inject("alerts", "dlp", Fault("slow", delay=60))
    request = asyncio.create_task(get(session, sim, operation="head"))
    info = await sim.wait_for_request("alerts", "dlp", "head")
    assert info.fault == "slow"
    assert not request.done()
    assert [p.seqs for p in sim.served("alerts", "dlp")] == [range(30)]
    request.cancel()  # the client dies mid-response
    with pytest.raises(asyncio.CancelledError):
        await request
    _, resent, _ = await get(session, sim, operation="resend")
    assert seqs_of(resent["result"]) == list(range(30))


async def test_truncate_fault_breaks_the_body_after_the_cursor_moved(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """`truncate` sends 200 and part of the body, then drops the connection; `resend` recovers the page."""
    sim.inject("alerts", "dlp", Fault("truncate", keep_fraction=0.3))
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(session, sim, operation="head")
    _, resent, _ = await get(session, sim, operation="resend")
    _, following, _ = await get(session, sim, operation="next")
    assert seqs_of(resent["result"]) == list(range(30))
    assert seqs_of(following["result"]) == list(range(30, 60))


async def test_malformed_json_fault_sends_an_unparsable_page(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """`malformed_json` answers 200 with a body no JSON parser accepts; the cursor has moved."""
    sim.inject("alerts", "dlp", Fault("malformed_json"))
    url = f"{sim.url}{dataexport_path('alerts', 'dlp')}"
    params = {"index": "ix", "operation": "head"}
    async with session.get(url, params=params, headers={"Netskope-Api-Token": DEFAULT_TOKEN}) as resp:
        assert resp.status == 200
        raw = await resp.read()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    _, following, _ = await get(session, sim, operation="next")
    assert seqs_of(following["result"]) == list(range(30, 60))


async def test_bad_records_fault_breaks_some_records(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """`bad_records` delivers the page with some records missing `_id`/`timestamp` or mistyped."""
    sim.inject("alerts", "dlp", Fault("bad_records", every=3))
    _, body, _ = await get(session, sim, operation="head")
    records = body["result"]
    broken = [
        r for r in records if not isinstance(r.get("_id"), str) or not isinstance(r.get("timestamp"), int)
    ]
    assert len(records) == 30
    assert len(broken) == 10
    assert any("_id" not in r for r in broken) and any("timestamp" not in r for r in broken)
    assert any(isinstance(r.get("timestamp"), str) for r in broken) and any(r.get("_id") == 0 for r in broken)
    assert sim.served("alerts", "dlp")[0].fault == "bad_records"


async def test_faults_can_be_scripted_over_http(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """POST /_sim/faults queues faults, GET lists them, DELETE drops them; bad requests are 400."""
    control = f"{sim.url}/_sim/faults"
    payload = [
        {"kind": "alerts", "subtype": "Malware", "fault": {"type": "status", "status": 502, "count": 2}},
        {"kind": "events", "subtype": "page", "fault": {"type": "slow", "delay": 0.0}},
    ]
    async with session.post(control, data=orjson.dumps(payload)) as resp:
        assert resp.status == 200
    async with session.get(control) as resp:
        pending = await resp.json()
    status, _, _ = await get(session, sim, "alerts", "malware")
    async with session.post(
        control, data=orjson.dumps({"kind": "alerts", "subtype": "dlp", "fault": {"type": "boom"}})
    ) as resp:
        refused = resp.status
    async with session.delete(control) as resp:
        assert resp.status == 200
    assert pending["alerts/malware"][0]["remaining"] == 2
    assert pending["events/page"][0]["type"] == "slow"
    assert status == 502
    assert refused == 400
    assert sim.pending_faults() == {}


def test_fault_rejects_unknown_parameters_and_bad_values() -> None:
    """A fault with an unknown key, an unknown type or a non-error status is refused."""
    with pytest.raises(ValueError, match="unknown fault parameter"):
        Fault.from_dict({"type": "status", "code": 500})
    with pytest.raises(ValueError, match="unknown fault type"):
        Fault.from_dict({"type": "explode"})
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Fault("status", status=200)


# -- observability --------------------------------------------------------------------------


async def test_served_ranges_recompute_to_every_id_served(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """The seq ranges of `served` (Python and HTTP) recompute to exactly the ids the client received."""
    received: list[str] = []
    for op in ("head", "next", "resend", "next", "next", "next"):
        received += [r["_id"] for r in (await get(session, sim, operation=op))[1]["result"]]
    pages = sim.served("alerts", "dlp", index="ix")
    recomputed = [record_id(SEED, "alerts", "dlp", seq) for page in pages for seq in page.seqs]
    async with session.get(f"{sim.url}/_sim/served", params={"kind": "alerts", "subtype": "dlp"}) as resp:
        over_http = (await resp.json())["alerts/dlp"]
    assert recomputed == received
    assert [p.operation for p in pages] == ["head", "next", "resend", "next", "next", "next"]
    assert [(p["first_seq"], p["end_seq"]) for p in over_http] == [(p.first_seq, p.end_seq) for p in pages]


async def test_stats_count_records_served_per_endpoint_and_index(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """Stats count requests per endpoint, responses per status and records per (endpoint, index)."""
    await get(session, sim, operation="head", index="a")
    await get(session, sim, operation="resend", index="a")
    await get(session, sim, "events", "page", operation="head", index="b")
    await get(session, sim, token=None)
    async with session.get(f"{sim.url}/_sim/stats") as resp:
        over_http = await resp.json()
    stats = sim.stats()
    assert stats.records_served == {"alerts/dlp": {"a": 60}, "events/page": {"b": 30}}
    assert stats.requests == {"alerts/dlp": 3, "events/page": 1}
    assert stats.responses == {200: 3, 401: 1}
    assert over_http == stats.to_dict()


async def test_wait_for_request_matches_the_operation_asked(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """wait_for_request resolves on a matching request only, and reports how it was answered."""
    waiter = asyncio.create_task(sim.wait_for_request("alerts", "dlp", operation="epoch"))
    await get(session, sim, operation="head")
    assert not waiter.done()
    await get(session, sim, operation=str(int(START) - 10))
    info = await waiter
    assert (info.operation, info.status, info.index) == (str(int(START) - 10), 200, "ix")


# -- encoding, determinism and records ------------------------------------------------------


async def test_pages_are_gzipped_when_the_client_accepts_it(session: aiohttp.ClientSession) -> None:
    """gzip is used when asked for and enabled; never when disabled or not accepted."""
    path = dataexport_path("alerts", "dlp")
    encodings = []
    for enabled, accept in ((True, "gzip, deflate"), (True, "identity"), (False, "gzip")):
        async with running_simulator(**sim_options(gzip=enabled)) as simulator:
            headers = {"Netskope-Api-Token": DEFAULT_TOKEN, "Accept-Encoding": accept}
            params = {"index": "i", "operation": "head"}
            async with session.get(
                f"{simulator.url}{path}", params=params, headers=headers, auto_decompress=False
            ) as resp:
                raw = await resp.read()
                encodings.append(resp.headers.get("Content-Encoding"))
        if encodings[-1] == "gzip":
            raw = gzip.decompress(raw)
        assert len(orjson.loads(raw)["result"]) == 30
    assert encodings == ["gzip", None, None]


async def test_same_seed_gives_the_same_records_and_another_seed_does_not(
    session: aiohttp.ClientSession,
) -> None:
    """Two simulators with one seed serve identical pages; a different seed changes the records."""
    bodies = []
    for seed in (SEED, SEED, SEED + 1):
        async with running_simulator(**sim_options(seed=seed)) as simulator:
            bodies.append((await get(session, simulator, "events", "alert", operation="head"))[1])
    assert bodies[0] == bodies[1]
    assert [r["_id"] for r in bodies[0]["result"]] != [r["_id"] for r in bodies[2]["result"]]


async def test_every_subtype_serves_records_with_id_and_timestamp(session: aiohttp.ClientSession) -> None:
    """Every alerts and events endpoint serves records carrying a 24-hex `_id` and an int `timestamp`."""
    async with running_simulator(**sim_options(page_size=5)) as simulator:
        for kind, subtype in all_streams():
            status, body, _ = await get(session, simulator, kind, subtype, operation="head")
            assert status == 200, (kind, subtype)
            for seq, record in enumerate(body["result"]):
                assert record["_id"] == record_id(SEED, kind, subtype, seq)
                assert isinstance(record["timestamp"], int)


CHARACTERISTIC_FIELDS = {
    ("alerts", "malware"): {"md5", "sha256", "malware_name", "malware_type", "local_md5", "local_sha256"},
    ("alerts", "malsite"): {"url", "severity_level", "malsite_category"},
    ("alerts", "dlp"): {"dlp_profile", "dlp_rule", "dlp_rule_severity", "dlp_incident_id", "dlp_file"},
    ("alerts", "uba"): {"score", "risk_level"},
    ("alerts", "compromisedcredential"): {"breach_id", "breach_date"},
    ("alerts", "securityassessment"): {"sa_rule_name", "sa_profile_name"},
    ("alerts", "ctep"): {"signature_id", "srcport", "dstport"},
    ("alerts", "quarantine"): {"quarantine_profile", "q_original_filename"},
    ("alerts", "remediation"): {"remediation_action"},
    ("alerts", "policy"): {"policy", "action", "activity"},
    ("alerts", "watchlist"): {"watchlist_name"},
    ("alerts", "device"): {"device_classification"},
    ("alerts", "content"): {"file_name"},
    ("events", "alert"): {"alert_type", "alert_name"},
    ("events", "page"): {"page_starttime", "page_endtime", "numbytes", "dstport", "transaction_id"},
    ("events", "application"): {"activity", "object", "app_session_id"},
    ("events", "audit"): {"audit_log_event", "supporting_data", "severity_level"},
    ("events", "clientstatus"): {"host_info", "user_info", "client_version"},
    ("events", "connection"): {"srcport", "dstport", "conn_starttime", "connection_id"},
    ("events", "endpoint"): {"process_name", "file_path"},
    ("events", "incident"): {"incident_id", "dlp_incident_id"},
    ("events", "infrastructure"): {"supporting_data", "alarm_name"},
    ("events", "network"): {"srcport", "dstport", "ip_protocol", "network_session_id"},
}


@pytest.mark.parametrize(("kind", "subtype"), all_streams())
def test_records_carry_their_subtype_fields(kind: DataKind, subtype: str) -> None:
    """Each subtype's records carry the common fields and those characteristic of the subtype."""
    factory = RecordFactory(SEED)
    record = factory.make(kind, subtype, 3, int(START))
    assert {"_id", "timestamp", "type", "user", "srcip", "app", "appcategory"} <= set(record)
    assert CHARACTERISTIC_FIELDS[(kind, subtype)] <= set(record)
    if kind == "alerts":
        assert record["alert"] == "yes"
        assert normalise_subtype("alerts", record["alert_type"]) == subtype
        assert record["alert_type"] == ALERT_DISPLAY_NAMES[subtype]


def test_records_vary_and_exercise_escaping_and_missing_fields() -> None:
    """Severities vary, strings hold | = \\ newline and unicode, and optional fields go missing."""
    factory = RecordFactory(SEED)
    records = [
        factory.make(kind, subtype, seq, int(START)) for kind, subtype in all_streams() for seq in range(200)
    ]
    strings = [v for r in records for v in r.values() if isinstance(v, str)]
    assert {r.get("severity") for r in records} >= {"low", "medium", "high", "critical"}
    for needle in ("|", "=", "\\", "\n"):
        assert any(needle in s for s in strings), needle
    assert any(not s.isascii() for s in strings)
    assert any("userip" not in r for r in records) and any("userip" in r for r in records)
    assert all(isinstance(r.get("severity_level", 0), int) for r in records)
    assert all(r[f].isdigit() for r in records for f in ("transaction_id", "dlp_incident_id") if f in r)


def test_records_are_deterministic_and_nested_values_are_not_shared() -> None:
    """A record depends only on (seed, kind, subtype, seq, timestamp); nested dicts are per record."""
    first, second = RecordFactory(SEED), RecordFactory(SEED)
    assert first.make("events", "clientstatus", 9, 1) == second.make("events", "clientstatus", 9, 1)
    one, two = first.make("events", "clientstatus", 1, 1), first.make("events", "clientstatus", 1, 1)
    one["host_info"]["hostname"] = "changed"
    assert two["host_info"]["hostname"] != "changed"


# -- building blocks -------------------------------------------------------------------------


@settings(deadline=None)  # timing varies on a shared machine; the property is what matters
@given(
    backlog=st.integers(0, 300),
    span=st.integers(1, 5000),
    rate=st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.5]),
    offset=st.integers(-6000, 200),
)
def test_timeline_positions_epochs_like_a_linear_scan(
    backlog: int, span: int, rate: float, offset: int
) -> None:
    """first_at_or_after agrees with a scan over the timestamps, which never decrease."""
    timeline = Timeline(START + 0.3, backlog, span, rate)
    epoch = int(START) + offset
    limit = backlog + (int(rate * 250) if rate else 0)
    stamps = timeline.timestamps(range(limit))
    assert stamps == sorted(stamps) == [timeline.timestamp(s) for s in range(limit)]
    expected = next((s for s, ts in enumerate(stamps) if ts >= epoch), None)
    if expected is not None:
        assert timeline.first_at_or_after(epoch) == expected
    elif rate == 0:
        assert timeline.first_at_or_after(epoch) == backlog


def test_sliding_window_is_half_open() -> None:
    """An event leaves the window exactly `width` seconds after it was counted."""
    window = SlidingWindow(limit=1)
    assert window.try_acquire(1.0)
    assert not window.try_acquire(1.999)
    assert window.try_acquire(2.0)


def test_normalise_subtype_accepts_ce_names_and_suggests_the_nearest() -> None:
    """Path names and CE display names are accepted in any case; a typo gets a suggestion."""
    assert normalise_subtype("alerts", "Compromised Credential") == "compromisedcredential"
    assert normalise_subtype("alerts", "security assessment") == "securityassessment"
    assert normalise_subtype("alerts", "DLP") == "dlp"
    assert normalise_subtype("events", "Page") == "page"
    with pytest.raises(ValueError, match="Did you mean 'malware'") as caught:
        normalise_subtype("alerts", "malwre")
    assert "compromisedcredential" in str(caught.value)


# -- command line ----------------------------------------------------------------------------


def test_simulate_arguments_build_the_simulator_they_describe() -> None:
    """--token with streams, --subtypes and the numeric options reach the simulator."""
    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    argv = ["--token", "t1=alerts/DLP,events/page", "--token", "t2", "--subtypes", "alerts/dlp"]
    args = parser.parse_args([*argv, "--page-size", "5", "--rate-limit", "9", "--no-gzip"])
    simulator = simulator_from_arguments(args)
    assert args.token == [("t1", frozenset({("alerts", "dlp"), ("events", "page")})), ("t2", None)]
    assert args.subtypes == [("alerts", "dlp")]
    assert (args.page_size, args.rate_limit, args.no_gzip) == (5, 9, True)
    assert simulator.stats().requests_total == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["--subtypes", "alerts/nosuch"])


async def test_run_simulator_prints_its_url_and_stops_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    """run_simulator prints the base URL alone on a line and returns 0 once `stop` is set."""
    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    stop = asyncio.Event()
    stop.set()
    code = await run_simulator(parser.parse_args(["--backlog", "0"]), stop)
    urls = [line for line in capsys.readouterr().out.splitlines() if line.startswith("http")]
    assert code == 0
    assert len(urls) == 1
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", urls[0])
