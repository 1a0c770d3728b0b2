"""The simulator's lease ledger: who drove each iterator index, and when two holders overlapped."""

from __future__ import annotations

import aiohttp
import orjson

from ce_daemon.cluster.handle import LEASE_HEADER
from ce_daemon.simulator.leases import LeaseLedger
from ce_daemon.simulator.tenant import DEFAULT_TOKEN, TOKEN_HEADER, running_simulator

ENDPOINT = "events/page"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drive(ledger: LeaseLedger, clock: Clock, header: str, start: float, end: float) -> None:
    """One request on index ``i`` under ``header``, in flight from ``start`` to ``end``."""
    clock.now = start
    request = ledger.begin(ENDPOINT, "i", header)
    clock.now = end
    ledger.end(request)


def test_a_clean_handover_makes_two_runs_and_no_violation() -> None:
    """Requests of one holder, then of its successor with a greater token: two runs, nothing flagged."""
    clock = Clock()
    ledger = LeaseLedger(clock)
    drive(ledger, clock, "node-a;3", 1.0, 1.5)
    drive(ledger, clock, "node-a;3", 2.0, 2.5)
    drive(ledger, clock, "node-b;7", 20.0, 20.5)
    index = ledger.report()[ENDPOINT]["i"]
    assert index["runs"] == [
        {"node": "node-a", "token": 3, "first": 1.0, "last": 2.5, "count": 2},
        {"node": "node-b", "token": 7, "first": 20.0, "last": 20.5, "count": 1},
    ]
    assert index["violations"] == []


def test_a_stale_holder_driving_after_a_takeover_is_flagged() -> None:
    """A request with a token lower than one already seen on the index is a stale holder driving."""
    clock = Clock()
    ledger = LeaseLedger(clock)
    drive(ledger, clock, "node-b;7", 1.0, 1.5)
    drive(ledger, clock, "node-a;3", 2.0, 2.5)
    (violation,) = ledger.violations()
    assert (violation.kind, violation.node, violation.token, violation.other_token) == (
        "stale",
        "node-a",
        3,
        7,
    )


def test_overlapping_requests_of_two_holders_are_flagged() -> None:
    """A request arriving while another holder's is in flight on the same index is concurrent driving."""
    clock = Clock()
    ledger = LeaseLedger(clock)
    clock.now = 1.0
    old = ledger.begin(ENDPOINT, "i", "node-a;3")
    clock.now = 2.0
    new = ledger.begin(ENDPOINT, "i", "node-b;4")
    ledger.end(old)
    ledger.end(new)
    (violation,) = ledger.violations()
    assert (violation.kind, violation.node, violation.other_node, violation.at) == (
        "concurrent",
        "node-b",
        "node-a",
        2.0,
    )


def test_other_indexes_and_headerless_requests_are_independent() -> None:
    """Overlap on different indexes is fine; requests without the header are not recorded."""
    clock = Clock()
    ledger = LeaseLedger(clock)
    first = ledger.begin(ENDPOINT, "i", "node-a;3")
    second = ledger.begin(ENDPOINT, "j", "node-b;4")
    assert ledger.begin(ENDPOINT, "i", None) is None
    ledger.end(first)
    ledger.end(second)
    assert ledger.violations() == []
    assert sorted(ledger.report()[ENDPOINT]) == ["i", "j"]


def test_a_malformed_header_is_flagged() -> None:
    """A lease header that is not <node>;<token> is reported, not guessed at."""
    ledger = LeaseLedger(Clock())
    assert ledger.begin(ENDPOINT, "i", "node-a") is None
    assert [v.kind for v in ledger.violations()] == ["malformed"]


async def test_the_simulator_reports_leases_over_http() -> None:
    """Requests carrying the lease header show up in GET /_sim/leases."""
    async with running_simulator(backlog=0) as sim, aiohttp.ClientSession() as session:
        for token in (5, 4):
            headers = {TOKEN_HEADER: DEFAULT_TOKEN, LEASE_HEADER: f"node-a;{token}"}
            url = f"{sim.url}/api/v2/events/dataexport/events/page"
            async with session.get(url, params={"index": "x", "operation": "next"}, headers=headers) as resp:
                assert resp.status == 200
        async with session.get(f"{sim.url}/_sim/leases") as resp:
            report = orjson.loads(await resp.read())
    runs = report["events/page"]["x"]["runs"]
    assert [(run["token"], run["count"]) for run in runs] == [(5, 1), (4, 1)]
    assert [v["kind"] for v in report["events/page"]["x"]["violations"]] == ["stale"]
