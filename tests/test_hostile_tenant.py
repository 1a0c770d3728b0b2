"""A hostile tenant: every way an answer can go wrong, and what the pollers do about it.

A proxy (`ce_daemon.testing.hostile.HostileTenant`) stands in front of the tenant simulator, so the
cursors, ``resend`` and the pages served stay the simulator's. It spoils the answers to one stream
(DLP) on cue while another stream of the same tenant (MALWARE) is pulled beside it; then it behaves
again. Each test checks that every record the simulator served reaches the consumer once, in order;
that the failure was counted and shown in the poller's status; and that MALWARE kept committing pages
while DLP was failing (counted, never timed).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ce_daemon.health import State
from ce_daemon.netskope.pages import RECORD_DEPTH_LIMIT
from ce_daemon.simulator.faults import Fault
from ce_daemon.simulator.records import record_id
from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.testing.hostile import Decoy, HostileTenant, Trick
from ce_daemon.testing.ingest import Ingest, StreamId, ingesting, route, tenant
from ce_daemon.testing.pipelines import backlog_simulator

SEED = 23
TOKEN = "hostile-token-0123456789"
PAGE = 100  # records per page (a page of 100 alerts is ~130 KB of JSON)
DLP: StreamId = ("alerts", "dlp")
MALWARE: StreamId = ("alerts", "malware")
PAGES = 20  # per stream: MALWARE is still busy when DLP starts failing after its first page
BACKLOG = {DLP: PAGES * PAGE, MALWARE: PAGES * PAGE}
FAST = 20  # requests/s, simulator and tenant: the rate is not what these tests are about
# Small bounds, so that a test trips them cheaply: one second for an answer, a megabyte a page,
# short pauses between retries.
TENANT = {"rate_limit": FAST, "timeout": "1s", "max_page_bytes": "1MiB", "max_retry_delay": "0.5s"}


def expected_ids(stream: StreamId) -> list[str]:
    """Every ``_id`` of ``stream``'s backlog, in order."""
    return [record_id(SEED, *stream, seq) for seq in range(BACKLOG[stream])]


@dataclass
class Setup:
    """The simulator, the proxy in front of it, and the pollers reading through the proxy."""

    sim: TenantSimulator
    proxy: HostileTenant
    ingest: Ingest

    def all_arrived(self) -> bool:
        """Whether both streams' whole backlogs were consumed."""
        return self.ingest.has_all({stream: expected_ids(stream) for stream in BACKLOG})

    def assert_all_arrived_once_in_order(self) -> None:
        """Every served record consumed once, in order: nothing lost, skipped or doubled."""
        for stream in BACKLOG:
            assert self.ingest.ids(stream) == expected_ids(stream), stream


@asynccontextmanager
async def proxied(
    redirect_to: str = "http://127.0.0.1:9",
) -> AsyncIterator[tuple[TenantSimulator, HostileTenant]]:
    """The simulator holding both backlogs, and the proxy in front of it."""
    async with backlog_simulator(
        TOKEN, PAGES * PAGE, list(BACKLOG), seed=SEED, page_size=PAGE, rate_limit=FAST, idle_wait_time=0.05
    ) as sim:
        assert sim.url is not None
        async with HostileTenant(sim.url, redirect_to=redirect_to) as proxy:
            yield sim, proxy


def pulling(tmp_path: Path, proxy: HostileTenant, **settings: Any) -> AbstractAsyncContextManager[Ingest]:
    """The pollers of a tenant at the proxy, one route over both streams (a second call: a restart)."""
    assert proxy.url is not None
    return ingesting(
        tmp_path,
        [tenant("sim", proxy.url, **(TENANT | settings))],
        [route("all", "sim", list(BACKLOG))],
        environ={"SIM_TOKEN": TOKEN},
    )


@asynccontextmanager
async def hostile(tmp_path: Path, **settings: Any) -> AsyncIterator[Setup]:
    """DLP and MALWARE pulled through a proxy to the simulator; ``settings`` override the tenant's."""
    async with proxied() as (sim, proxy), pulling(tmp_path, proxy, **settings) as ingest:
        yield Setup(sim, proxy, ingest)


@dataclass(frozen=True)
class Case:
    """A trick, the status counter it must move, and words the poller's status must say meanwhile."""

    trick: Trick
    counter: str
    says: str


CASES = {
    "answer later than the timeout": Case(Trick("late", count=1000), "timeouts", "no complete answer"),
    "body dribbling past the timeout": Case(Trick("dribble", count=1000), "timeouts", "no complete answer"),
    "connection dropped before the status": Case(
        Trick("drop_before_status", count=1000), "lost_answers", "connection lost"
    ),
    "connection dropped before the body": Case(
        Trick("drop_before_body", count=1000), "broken_pages", "body broken after 200"
    ),
    "connection dropped in the body": Case(
        Trick("drop_mid_body", count=1000), "broken_pages", "body broken after 200"
    ),
    "gateway error after the page was built": Case(
        Trick("server_error", count=1000, status=502), "server_errors", "HTTP 502"
    ),
    "compression bomb": Case(
        Trick("bomb", count=1000, size=64 * 1024**2), "oversized_pages", "more than max_page_bytes"
    ),
    "oversized page": Case(
        Trick("oversized", count=1000, size=2 * 1024**2), "oversized_pages", "more than max_page_bytes"
    ),
    "HTML with 200": Case(Trick("html", count=1000), "broken_pages", "Content-Type text/html"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
async def test_an_uncertain_answer_is_asked_again_with_resend_and_nothing_is_lost(
    tmp_path: Path, case: Case
) -> None:
    """Each spoilt answer is counted, shown in status, asked again with resend; MALWARE goes on."""
    async with hostile(tmp_path) as setup:
        ingest, proxy = setup.ingest, setup.proxy
        await ingest.watch.until(lambda: len(ingest.ids(DLP)) >= PAGE)
        proxy.play(*DLP, case.trick)
        await proxy.wait_until(lambda: len(proxy.tricked(*DLP)) >= 1)
        committed = (ingest.counters(DLP).get("records"), len(ingest.ids(MALWARE)))
        # four spoilt requests: three have failed, which shows in status, and the fourth is on its way
        await proxy.wait_until(lambda: len(proxy.tricked(*DLP)) >= 4, timeout=45)
        failing = (ingest.state(DLP), ingest.poller(DLP).status.detail)
        await ingest.watch.until(lambda: len(ingest.ids(MALWARE)) > committed[1])
        dlp_meanwhile = ingest.counters(DLP).get("records")
        proxy.behave()
        await ingest.watch.until(setup.all_arrived)
        counters, state = ingest.counters(DLP), ingest.state(DLP)
        tricked = len(proxy.tricked(*DLP))
        served = [(p.operation, p.first_seq, p.end_seq) for p in setup.sim.served(*DLP)]
        first_spoilt = [p.trick for p in proxy.played if p.stream == DLP].index(case.trick.kind)
    assert failing[0] is State.DEGRADED
    assert case.says in failing[1], failing[1]
    assert dlp_meanwhile == committed[0]  # DLP stood still while MALWARE committed pages
    assert counters.get(case.counter) == tricked >= 4
    assert state is State.OK
    setup.assert_all_arrived_once_in_order()
    # the page the first spoilt `next` moved the cursor past was asked for with resend until it came whole
    operation, *seqs = served[first_spoilt]
    assert operation == "next"
    assert served[first_spoilt + 1 : first_spoilt + tricked + 1] == [("resend", *seqs)] * tricked


async def test_the_simulators_slow_fault_beyond_the_timeout_loses_no_page(tmp_path: Path) -> None:
    """The issue's reproduction: a page held past the client timeout is asked again with resend."""
    async with hostile(tmp_path) as setup:
        ingest = setup.ingest
        await ingest.watch.until(lambda: len(ingest.ids(DLP)) >= PAGE)
        setup.sim.inject(*DLP, Fault("slow", delay=5))  # the client gives up after 1 s
        await ingest.watch.until(setup.all_arrived)
        counters = ingest.counters(DLP)
        served = [(p.operation, p.first_seq, p.end_seq, p.fault) for p in setup.sim.served(*DLP)]
    setup.assert_all_arrived_once_in_order()
    assert counters.get("timeouts") == 1
    slow = next(i for i, (*_, fault) in enumerate(served) if fault == "slow")
    operation, first, end, _ = served[slow]
    assert operation == "next"
    assert served[slow + 1] == ("resend", first, end, None)


async def test_a_redirect_fails_the_poller_naming_its_target_and_the_token_stays_home(tmp_path: Path) -> None:
    """A 302 to another host is not followed: that poller fails saying where; after a restart all arrives."""
    decoy = Decoy()
    async with decoy as decoy_url, proxied(redirect_to=decoy_url) as (sim, proxy):
        async with pulling(tmp_path, proxy) as ingest:
            await ingest.watch.until(lambda: len(ingest.ids(DLP)) >= PAGE)
            proxy.play(*DLP, Trick("redirect"))
            await ingest.watch.until(lambda: ingest.state(DLP) is State.FAILED)
            detail = ingest.poller(DLP).status.detail
            asked = sim.stats().requests["alerts/dlp"]
            malware_then = len(ingest.ids(MALWARE))
            await ingest.watch.until(lambda: len(ingest.ids(MALWARE)) > malware_then)
            meanwhile = (ingest.state(DLP), len(proxy.tricked(*DLP)), sim.stats().requests["alerts/dlp"])
        first = {stream: ingest.ids(stream) for stream in BACKLOG}  # all the first run consumed
        # the operator points `url` where the API answers and restarts: the poller goes on where it stood
        async with pulling(tmp_path, proxy) as restarted:
            rest = {stream: BACKLOG[stream] - len(first[stream]) for stream in BACKLOG}
            await restarted.watch.until(lambda: all(len(restarted.ids(s)) >= n for s, n in rest.items()))
            after = {stream: restarted.ids(stream) for stream in BACKLOG}
            restarted_state = restarted.state(DLP)
    assert f"answered HTTP 302, a redirect to {decoy_url}/api/v2/events/dataexport/alerts/dlp?" in detail
    assert "set the tenant's `url`" in detail
    assert TOKEN not in detail
    # failed means failed: no retry storm while MALWARE went on (one redirect answered, then nothing)
    assert meanwhile == (State.FAILED, 1, asked)
    assert decoy.requests == []  # never followed: the other host saw neither a request nor the token
    for stream in BACKLOG:
        assert first[stream] + after[stream] == expected_ids(stream), stream
    assert restarted_state is State.OK


async def test_absurd_wait_times_are_corrected_counted_and_never_stall_the_poller(tmp_path: Path) -> None:
    """Huge, negative, infinite, NaN, string, bool and list wait_times: corrected, counted, no stall."""
    absurd = [b"1e12", b"-5", b"1e400", b"NaN", b'"inf"', b'"NaN"', b'"soon"', b"true", b"[1]", b"{}"]
    async with hostile(tmp_path, max_wait_time="0.2s") as setup:
        ingest, proxy = setup.ingest, setup.proxy
        await ingest.watch.until(lambda: len(ingest.ids(DLP)) >= PAGE)
        for value in absurd:
            proxy.play(*DLP, Trick("wait_time", value=value))
        await ingest.watch.until(setup.all_arrived)
        # the poller goes on asking (its stream is idle now): each request is a moment to look again
        await proxy.wait_until(lambda: ingest.counters(DLP).get("wait_time_corrected") == len(absurd))
        counters, state, pending = ingest.counters(DLP), ingest.state(DLP), proxy.pending()
    setup.assert_all_arrived_once_in_order()
    assert counters.get("wait_time_corrected") == len(absurd)
    assert (state, pending) == (State.OK, 0)


async def test_records_the_spool_cannot_encode_are_kept_as_json_text_and_the_stream_advances(
    tmp_path: Path,
) -> None:
    """Too deep, lone surrogates, NaN, a 30-digit integer: stored as JSON text, counted, nothing stalls."""
    deep = b"[" * (RECORD_DEPTH_LIMIT + 50) + b"1" + b"]" * (RECORD_DEPTH_LIMIT + 50)
    # seq of a DLP record: (field, raw JSON). 150 and 160 share a page, which orjson refuses (the surrogate)
    planted = {
        150: ("text", b'"caf\\ud800e"'),
        160: ("big", b"123456789012345678901234567890"),
        250: ("deep", deep),
        350: ("score", b"NaN"),
    }
    async with hostile(tmp_path) as setup:
        ingest, proxy = setup.ingest, setup.proxy
        for seq, (field, raw) in planted.items():
            proxy.inject(record_id(SEED, *DLP, seq), field, raw)
        await ingest.watch.until(setup.all_arrived)
        counters, state, restarts = (
            ingest.counters(DLP),
            ingest.state(DLP),
            ingest.poller(DLP).status.restarts,
        )
        records = ingest.stream_records(DLP)
    setup.assert_all_arrived_once_in_order()
    assert counters.get("records_repaired") == len(planted)
    assert counters.get("pages_parsed") == 3  # 150 and 160 share one; the other pages took the fast path
    assert (state, restarts) == (State.OK, 0)
    kept = {seq: records[seq][field] for seq, (field, _) in planted.items()}
    assert {seq: kept[seq] for seq in (150, 160, 350)} == {
        150: '"caf\\ud800e"',
        160: "123456789012345678901234567890",
        350: "NaN",
    }
    # nothing lost: the JSON text reads back as the value
    assert json.loads(kept[150]) == "caf\ud800e"
    assert reassembled(kept[250]) == json.loads(deep)


def reassembled(value: Any) -> Any:
    """A nest of one-item lists whose innermost item is JSON text (a repaired deep nest), put back whole.

    Also checks that the nest was cut where the limit says: the record is level 1, its field level 2.
    """
    levels = 0
    while isinstance(value, list):
        (value,) = value
        levels += 1
    assert levels == RECORD_DEPTH_LIMIT - 1
    whole = json.loads(value)
    for _ in range(levels):
        whole = [whole]
    return whole


async def test_a_poller_without_a_page_for_too_long_is_degraded_and_recovers(tmp_path: Path) -> None:
    """Answers that never come: after its stall limit the poller says so in status; then back to ok."""
    settings = {"timeout": "0.5s", "max_wait_time": "0.1s", "max_retry_delay": "0.1s"}
    async with hostile(tmp_path, **settings) as setup:
        ingest, proxy = setup.ingest, setup.proxy
        await ingest.watch.until(lambda: len(ingest.ids(DLP)) >= PAGE)
        proxy.play(*DLP, Trick("late", count=1000))
        status = ingest.poller(DLP).status
        await proxy.wait_until(lambda: status.detail.startswith("no page for"), timeout=45)
        stalled = (status.state, status.detail)
        proxy.behave()
        await ingest.watch.until(setup.all_arrived)
        recovered = status.state
    assert stalled[0] is State.DEGRADED
    # what it is doing: retrying after a timeout, or waiting for the answer to its resend
    doing = r"(retrying: no complete answer on alerts/dlp within 0\.5s.*|asking the tenant \(resend\))"
    assert re.fullmatch(rf"no page for [\d.]+s \(at most [\d.]+s expected\): {doing}", stalled[1]), stalled[1]
    assert recovered is State.OK
    setup.assert_all_arrived_once_in_order()
