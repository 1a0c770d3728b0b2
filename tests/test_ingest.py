"""Netskope ingestion under faults: pollers, their shared token bucket and the spool, against the simulator.

The pollers are planned from a real pipeline file (`plan_components`) and run under the real
`Supervisor`, over real sockets to an in-process tenant simulator; the test itself is the spool's
only consumer, so it sees exactly what the pollers committed, in order. Every backlog here is
finite (``arrival_rate=0``), so "nothing lost, nothing skipped, nothing doubled" is checked as:
each stream's records arrive once each, in sequence order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from ce_daemon.health import State
from ce_daemon.netskope.subtypes import ALERT_SUBTYPES
from ce_daemon.simulator.faults import Fault, corrupt_records
from ce_daemon.simulator.records import record_id
from ce_daemon.simulator.reports import RequestInfo
from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.testing.ingest import Ingest, StreamId, Watch, route, tenant
from ce_daemon.testing.ingest import ingesting as ingesting_with
from ce_daemon.testing.pipelines import backlog_simulator

SEED = 11
TOKEN = "ingest-token-0123456789"
PAGE = 100  # records per page: many pages quickly, and small enough to render on the simulator's loop
DLP: StreamId = ("alerts", "dlp")
MALWARE: StreamId = ("alerts", "malware")
POLICY: StreamId = ("alerts", "policy")


def expected_ids(stream: StreamId, count: int) -> list[str]:
    """The ``_id`` of the first ``count`` records of ``stream``, in order."""
    return [record_id(SEED, stream[0], stream[1], seq) for seq in range(count)]


def simulator(
    streams: Iterable[StreamId], backlog: int, **options: Any
) -> AbstractAsyncContextManager[TenantSimulator]:
    """A simulator holding ``backlog`` records in each of ``streams`` and nothing more to come."""
    settings: dict[str, Any] = {"seed": SEED, "page_size": PAGE, "idle_wait_time": 0.05}
    return backlog_simulator(TOKEN, backlog, streams, **(settings | options))


def ingesting(
    tmp_path: Path,
    tenants: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    *,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> AbstractAsyncContextManager[Ingest]:
    """The pollers of a pipeline file with ``tenants`` and ``routes`` (the tenants' token: ``$SIM_TOKEN``)."""
    return ingesting_with(tmp_path, tenants, routes, environ=environ or {"SIM_TOKEN": TOKEN}, **options)


@asynccontextmanager
async def one_tenant(
    tmp_path: Path, sim: TenantSimulator, streams: Iterable[StreamId], **options: Any
) -> AsyncIterator[Ingest]:
    """One tenant (``options`` go to its settings) with one route over ``streams``."""
    spool_options = {key: options.pop(key) for key in ("max_bytes", "consuming") if key in options}
    assert sim.url is not None
    async with ingesting(
        tmp_path, [tenant("sim", sim.url, **options)], [route("all", "sim", streams)], **spool_options
    ) as ingest:
        yield ingest


class RequestLog:
    """Every data-export request the simulator decides on, with the loop time it was decided at.

    Pages here are small, so the simulator answers without suspending in between: a request is
    never still in flight when a follower asks again, and none is seen twice.
    """

    def __init__(self, sim: TenantSimulator, streams: Iterable[StreamId]) -> None:
        self.watch = Watch()
        self.entries: list[tuple[float, StreamId, RequestInfo]] = []
        self._tasks = [asyncio.create_task(self._follow(sim, stream)) for stream in streams]

    async def _follow(self, sim: TenantSimulator, stream: StreamId) -> None:
        loop = asyncio.get_running_loop()
        while True:
            info = await sim.wait_for_request(*stream)
            self.entries.append((loop.time(), stream, info))
            self.watch.changed()

    async def close(self) -> None:
        """Stop following."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- the rate limit ------------------------------------------------------------------------------

TEN_SUBTYPES: list[StreamId] = [("alerts", subtype) for subtype in ALERT_SUBTYPES[:10]]


async def test_ten_pollers_of_one_tenant_stay_within_its_rate_limit(tmp_path: Path) -> None:
    """Ten busy pollers share one bucket: the tenant never sees more than 4 requests in any second."""
    backlog = 2 * PAGE  # two full pages each: 20+ requests queue at the bucket for several seconds
    async with simulator(TEN_SUBTYPES, backlog) as sim:  # the documented 4 requests/s
        expected = {stream: expected_ids(stream, backlog) for stream in TEN_SUBTYPES}
        async with one_tenant(tmp_path, sim, TEN_SUBTYPES) as ingest:  # rate_limit: the default 4
            await ingest.watch.until(lambda: ingest.has_all(expected))
            stats = sim.stats()
            throttled = ingest.client.throttled
        for stream, ids in expected.items():
            assert ingest.ids(stream) == ids, stream
    assert stats.requests_total >= len(TEN_SUBTYPES) * 2
    assert stats.max_requests_per_second <= 4
    assert stats.rate_limited == 0
    assert throttled == 0


async def test_retry_after_of_a_429_holds_back_every_poller_of_the_tenant(tmp_path: Path) -> None:
    """After a 429 with Retry-After: 2, no poller of the tenant asks again for 2 s; nothing is lost."""
    streams = [DLP, MALWARE, POLICY]
    backlog = 6 * PAGE
    async with simulator(streams, backlog) as sim:
        expected = {stream: expected_ids(stream, backlog) for stream in streams}
        requests = RequestLog(sim, streams)
        try:
            async with one_tenant(tmp_path, sim, streams) as ingest:
                await ingest.watch.until(lambda: len(ingest.ids(DLP)) >= PAGE)
                sim.inject(*DLP, Fault("rate_limit", retry_after=2))
                await requests.watch.until(lambda: any(e[2].status == 429 for e in requests.entries))
                refused = next(i for i, e in enumerate(requests.entries) if e[2].status == 429)
                # the retried page and at least one request of each other poller
                await requests.watch.until(
                    lambda: {e[1] for e in requests.entries[refused + 1 :]} == set(streams)
                )
                await ingest.watch.until(lambda: ingest.has_all(expected))
                retries = {
                    stream: ingest.poller(stream).status.counters.get("retries", 0) for stream in streams
                }
                throttled = ingest.client.throttled
        finally:
            await requests.close()
    refused_at = requests.entries[refused][0]
    after = [(round(at - refused_at, 3), stream) for at, stream, _ in requests.entries[refused + 1 :]]
    # 50 ms: both times are taken when a follower task runs, a loop iteration after the decision
    assert all(gap >= 2.0 - 0.05 for gap, _ in after), after
    assert [e[2].status for e in requests.entries].count(429) == 1
    assert throttled == 1
    assert retries == {DLP: 1, MALWARE: 0, POLICY: 0}
    for stream, ids in expected.items():
        assert ingest.ids(stream) == ids, stream


async def test_a_tenant_set_faster_than_the_server_allows_is_throttled_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """At twice the allowed rate the server answers real 429s; the pollers back off and lose nothing."""
    streams = [DLP, MALWARE, POLICY]
    backlog = 4 * PAGE
    async with simulator(streams, backlog) as sim:  # 4 requests/s
        expected = {stream: expected_ids(stream, backlog) for stream in streams}
        async with one_tenant(tmp_path, sim, streams, rate_limit=8) as ingest:
            await ingest.watch.until(lambda: ingest.has_all(expected))
            client = ingest.client
            states = {stream: ingest.state(stream) for stream in streams}
        stats = sim.stats()  # the pollers have stopped: every answer sent was also received
    assert stats.rate_limited >= 1
    assert client.throttled == stats.rate_limited
    assert stats.max_accepted_per_second <= 4
    assert set(states.values()) <= {State.OK, State.DEGRADED}  # retrying, never failed
    for stream, ids in expected.items():
        assert ingest.ids(stream) == ids, stream


# -- broken pages --------------------------------------------------------------------------------

FAST = 20  # requests/s, simulator and tenant: the rate is not what these tests are about


async def test_truncated_bodies_are_recovered_with_resend_without_loss_or_skip(tmp_path: Path) -> None:
    """A body cut after the 200 (twice in a row, or before its first byte) is asked again with resend."""
    streams = [DLP, MALWARE]
    backlog = 5 * PAGE
    async with simulator(streams, backlog, rate_limit=FAST) as sim:
        expected = {stream: expected_ids(stream, backlog) for stream in streams}
        async with one_tenant(tmp_path, sim, streams, rate_limit=FAST) as ingest:
            await ingest.watch.until(
                lambda: len(ingest.ids(DLP)) >= PAGE and len(ingest.ids(MALWARE)) >= PAGE
            )
            sim.inject(*DLP, Fault("truncate", count=2, keep_fraction=0.5))
            sim.inject(*MALWARE, Fault("truncate", keep_fraction=0.0))
            await ingest.watch.until(lambda: ingest.has_all(expected))
            broken = {
                stream: ingest.poller(stream).status.counters.get("broken_pages", 0) for stream in streams
            }
            restarts = [poller.status.restarts for poller in ingest.pollers.values()]
        served = {stream: sim.served(*stream) for stream in streams}
    assert broken == {DLP: 2, MALWARE: 1}
    assert restarts == [0, 0]
    for stream, ids in expected.items():
        assert ingest.ids(stream) == ids, stream  # once each, in order: nothing lost, skipped or doubled
    # the server saw the cut page asked again, unchanged, until it arrived whole
    dlp = [(p.operation, p.first_seq, p.end_seq, p.fault) for p in served[DLP]]
    cut = next(i for i, page in enumerate(dlp) if page[3] == "truncate")
    seqs = dlp[cut][1:3]
    assert dlp[cut + 1 : cut + 3] == [("resend", *seqs, "truncate"), ("resend", *seqs, None)]
    malware = [(p.operation, p.first_seq, p.end_seq, p.fault) for p in served[MALWARE]]
    cut = next(i for i, page in enumerate(malware) if page[3] == "truncate")
    assert malware[cut + 1] == ("resend", *malware[cut][1:3], None)


async def test_malformed_and_failed_pages_are_counted_and_retried_never_crashing(tmp_path: Path) -> None:
    """Malformed JSON, ok=0 and 5xx answers are counted and retried; no poller crashes or loses a record."""
    streams = [DLP, MALWARE, POLICY]
    backlog = 3 * PAGE
    async with simulator(streams, backlog, rate_limit=FAST) as sim:
        expected = {stream: expected_ids(stream, backlog) for stream in streams}
        # queued before the first request: the very first page of each stream is the one that breaks
        sim.inject(*DLP, Fault("malformed_json", count=2))
        sim.inject(*MALWARE, Fault("not_ok", count=2))
        sim.inject(*POLICY, Fault("status", status=500))
        sim.inject(*POLICY, Fault("status", status=502))
        async with one_tenant(tmp_path, sim, streams, rate_limit=FAST) as ingest:
            await ingest.watch.until(lambda: ingest.has_all(expected))
            counters = {stream: dict(ingest.poller(stream).status.counters) for stream in streams}
            health = {
                stream: (ingest.state(stream), ingest.poller(stream).status.restarts) for stream in streams
            }
        pending = sim.pending_faults()
    assert pending == {}
    assert counters[DLP].get("broken_pages") == 2  # the cursor had moved: both were asked again with resend
    assert counters[MALWARE].get("broken_pages", 0) == 0  # ok=0 delivered no page: the same request again
    assert [counters[stream].get("retries") for stream in streams] == [2, 2, 2]
    assert health == dict.fromkeys(streams, (State.OK, 0))
    for stream, ids in expected.items():
        assert ingest.ids(stream) == ids, stream


async def test_records_missing_id_or_timestamp_are_counted_and_still_spooled(tmp_path: Path) -> None:
    """A page with broken records is spooled whole, the broken ones counted; the poller carries on."""
    backlog = 3 * PAGE
    async with simulator([DLP], backlog, rate_limit=FAST) as sim:
        sim.inject(*DLP, Fault("bad_records", every=5))  # the first page
        async with one_tenant(tmp_path, sim, [DLP], rate_limit=FAST) as ingest:
            await ingest.watch.until(lambda: len(ingest.ids(DLP)) >= backlog)
            counters = dict(ingest.poller(DLP).status.counters)
            state = ingest.state(DLP)
    first_page = [{"_id": id_, "timestamp": 0} for id_ in expected_ids(DLP, PAGE)]
    corrupt_records(first_page, every=5)  # what the simulator did to the first page, by the same rule
    missing = sum(1 for record in first_page if "_id" not in record or "timestamp" not in record)
    expected = [record.get("_id") for record in first_page] + expected_ids(DLP, backlog)[PAGE:]
    assert ingest.ids(DLP) == expected
    assert counters.get("records_missing_fields") == missing > 0
    assert counters.get("pages_parsed", 0) == 0  # objects all: the fast path took every page
    assert counters.get("records") == backlog
    assert state is State.OK


# -- auth ----------------------------------------------------------------------------------------


async def test_401_stops_that_poller_with_a_clear_message_while_the_others_continue(tmp_path: Path) -> None:
    """A token refused mid-stream fails that poller for good (no retries); the tenant's others go on."""
    streams = [DLP, MALWARE, POLICY]
    backlog = 4 * PAGE
    async with simulator(streams, backlog, rate_limit=FAST) as sim:
        others = {stream: expected_ids(stream, backlog) for stream in (MALWARE, POLICY)}
        async with one_tenant(tmp_path, sim, streams, rate_limit=FAST) as ingest:
            await ingest.watch.until(lambda: len(ingest.ids(DLP)) >= PAGE)
            sim.inject(*DLP, Fault("status", status=401))
            await ingest.watch.until(lambda: ingest.state(DLP) is State.FAILED)
            asked = sim.stats().requests["alerts/dlp"]
            await ingest.watch.until(lambda: ingest.has_all(others))
            dlp = ingest.poller(DLP).status
            detail, retries = dlp.detail, dlp.counters.get("retries", 0)
            states = {stream: ingest.state(stream) for stream in (MALWARE, POLICY)}
        asked_after = sim.stats().requests["alerts/dlp"]
    assert "token refused (401) on alerts/dlp" in detail
    assert "check the API token" in detail
    assert TOKEN not in detail
    assert retries == 0
    assert asked_after == asked  # failed means failed: no retry storm against a refusing tenant
    assert states == {MALWARE: State.OK, POLICY: State.OK}
    for stream, ids in others.items():
        assert ingest.ids(stream) == ids, stream


async def test_403_on_a_subtype_the_token_may_not_read_fails_only_that_poller(tmp_path: Path) -> None:
    """A token scoped to other endpoints gets 403 on one subtype: that poller fails, saying what to fix."""
    streams = [DLP, MALWARE, POLICY]
    backlog = 2 * PAGE
    async with simulator(streams, backlog, rate_limit=FAST, tokens={TOKEN: [MALWARE, POLICY]}) as sim:
        others = {stream: expected_ids(stream, backlog) for stream in (MALWARE, POLICY)}
        async with one_tenant(tmp_path, sim, streams, rate_limit=FAST) as ingest:
            await ingest.watch.until(lambda: ingest.state(DLP) is State.FAILED and ingest.has_all(others))
            detail = ingest.poller(DLP).status.detail
        stats = sim.stats()
    assert "token may not read alerts/dlp (403)" in detail
    assert "grant the endpoint or drop the subtype" in detail
    assert stats.responses.get(403) == 1
    assert stats.requests["alerts/dlp"] == 1
    for stream, ids in others.items():
        assert ingest.ids(stream) == ids, stream


async def test_a_tenant_with_a_wrong_token_fails_while_another_tenant_ships_everything(
    tmp_path: Path,
) -> None:
    """Two tenants: the one whose token is refused fails its pollers once each; the other loses nothing."""
    streams = [DLP, MALWARE]
    backlog = 3 * PAGE
    async with simulator(streams, backlog, rate_limit=FAST) as sim:
        assert sim.url is not None
        expected = {stream: expected_ids(stream, backlog) for stream in streams}
        tenants = [
            tenant("good", sim.url, rate_limit=FAST),
            tenant("bad", sim.url, token_env="BAD_TOKEN", rate_limit=FAST),
        ]
        routes = [route("good", "good", streams), route("bad", "bad", streams)]
        environ = {"SIM_TOKEN": TOKEN, "BAD_TOKEN": "revoked-token-0000"}
        async with ingesting(tmp_path, tenants, routes, environ=environ) as ingest:
            await ingest.watch.until(
                lambda: (
                    ingest.has_all(expected, "good")
                    and all(ingest.state(stream, "bad") is State.FAILED for stream in streams)
                )
            )
            details = [ingest.poller(stream, "bad").status.detail for stream in streams]
            good = {stream: ingest.state(stream, "good") for stream in streams}
        refused = sim.stats().responses.get(401)
    assert details == [
        f"tenant bad: token refused (401) on {kind}/{subtype}; check the API token"
        for kind, subtype in streams
    ]
    assert refused == len(streams)  # one request each, then nothing
    assert good == dict.fromkeys(streams, State.OK)
    for stream, ids in expected.items():
        assert ingest.ids(stream, "good") == ids, stream


# -- back-pressure -------------------------------------------------------------------------------


async def test_a_full_spool_pauses_polling_and_resumes_when_consumers_catch_up(tmp_path: Path) -> None:
    """With nobody reading, pollers pause at the byte cap and ask nothing; once read, all arrives once."""
    streams = [DLP, MALWARE]
    backlog = 6 * PAGE
    async with simulator(streams, backlog, rate_limit=FAST) as sim:
        expected = {stream: expected_ids(stream, backlog) for stream in streams}
        # a page of 100 alerts is ~25 KB in the spool: full after the first page or two
        async with one_tenant(
            tmp_path, sim, streams, rate_limit=FAST, max_bytes=30_000, consuming=False
        ) as ingest:
            paused = "paused: spool full, waiting for consumers"
            await ingest.watch.until(lambda: all(ingest.poller(s).status.detail == paused for s in streams))
            held = await ingest.spool.stats()
            asked = sim.stats().requests_total
            # paused means silent: no request at all for a while (bounded; any request ends the wait)
            follow = [asyncio.create_task(sim.wait_for_request(*stream)) for stream in streams]
            done, _ = await asyncio.wait(follow, timeout=1.0)
            for task in follow:
                task.cancel()
            await asyncio.gather(*follow, return_exceptions=True)
            assert not done, "a paused poller asked the tenant"
            assert sim.stats().requests_total == asked

            ingest.consuming.set()
            await ingest.watch.until(lambda: ingest.has_all(expected))
            resumed = [
                t for t in ingest.transitions if t[1] is State.OK and t[2] == "resumed: spool has space"
            ]
    assert held["full"] is True
    # the cap is checked before each request, so it is overshot by at most one page per poller
    assert held["pages"] <= len(streams) + 1
    assert {name for name, _, _ in resumed} == {f"poller:sim/{k}/{s}" for k, s in streams}
    for stream, ids in expected.items():
        assert ingest.ids(stream) == ids, stream  # nothing dropped while paused, nothing doubled
