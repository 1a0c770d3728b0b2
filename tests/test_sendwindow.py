"""The tenant's send window: never more than the rate in any second of actual sends, whatever the stalls."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ce_daemon.netskope.sendwindow import CALM_SENDS, MARGIN, MAX_MARGIN, SendWindow, Slot
from ce_daemon.simulator.records import record_id
from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.testing.ingest import StreamId, ingesting, route, tenant

TOKEN = "window-token-0123456789"
SEED = 3


def most_in_any_window(stamps: list[float], width: float = 1.0) -> int:
    """The most stamps any half-open window ``(t - width, t]`` holds (the tenant's count)."""
    return max((sum(1 for other in stamps if stamp - width < other <= stamp) for stamp in stamps), default=0)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 6),
    paced=st.booleans(),
    requests=st.lists(
        st.tuples(
            st.floats(0, 0.6),  # time until the next request asks for a slot
            st.floats(0, 0.4),  # the stall between its grant and its send
            st.booleans(),  # its connection could not be made: it never leaves
            st.booleans(),  # the tenant answered it 429 (the margin widens)
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_no_one_second_window_of_sends_ever_holds_more_than_the_rate(
    limit: int, paced: bool, requests: list[tuple[float, float, bool, bool]]
) -> None:
    """Requests granted at random moments leave after random stalls: no second of sends exceeds the limit."""
    window = SendWindow(limit, margin=0.0, paced=paced)  # from no margin: it holds on the bare window
    now = 0.0
    in_flight: list[tuple[float, Slot]] = []  # (when it leaves, its slot)
    sent: list[float] = []

    def leave_until(moment: float) -> None:
        in_flight.sort(key=lambda item: item[0])
        while in_flight and in_flight[0][0] <= moment:
            leaves, slot = in_flight.pop(0)
            slot.sent(leaves)
            sent.append(leaves)

    for gap, stall, never_leaves, refused in requests:
        now += gap
        leave_until(now)
        while (wait := window.delay(now)) > 0:
            next_leave = min(leaves for leaves, _ in in_flight) if in_flight else math.inf
            now = min(now + wait, next_leave)  # time runs on to whatever frees a slot first
            leave_until(now)
        slot = window.grant(now)
        if never_leaves:
            slot.unused()
        else:
            in_flight.append((now + stall, slot))
        if refused:
            window.refused()
    leave_until(math.inf)
    assert most_in_any_window(sent) <= limit


def test_a_full_window_waits_for_its_oldest_send_to_leave() -> None:
    """Four sends at 0, .1, .2, .3 in a window of 4: the fifth may go at 1.0, not before."""
    window = SendWindow(4, margin=0.0, paced=False)
    for moment in (0.0, 0.1, 0.2, 0.3):
        assert window.delay(moment) == 0
        window.grant(moment).sent(moment)
    assert window.delay(0.5) == 0.5
    assert window.delay(1.0) == 0


def test_a_takeover_counts_the_window_as_full_for_one_window() -> None:
    """A node taking a tenant over starts with a full window: nothing for one width, then the whole rate,
    whatever it sent itself before (the previous holder's last second is unknown to it)."""
    window = SendWindow(4, margin=0.0, paced=False)
    window.grant(9.5).sent(9.5)
    window.assume_full(10.0)
    assert window.delay(10.0) == 1.0 and window.delay(10.99) > 0
    for _ in range(4):
        assert window.delay(11.0) == 0
        window.grant(11.0).sent(11.0)
    assert window.delay(11.0) == 1.0


def test_granted_requests_not_yet_sent_count_until_they_leave_or_are_given_back() -> None:
    """A grant holds its place: the window is full with pending ones, and frees at once when one is let go."""
    window = SendWindow(2, margin=0.0, paced=False)
    first, second = window.grant(10.0), window.grant(10.0)
    assert window.delay(10.0) == math.inf  # only a send or a give-back can change that
    second.unused()
    assert window.delay(10.0) == 0
    first.sent(10.0)
    first.sent(10.5)  # stamped once only
    assert window.stamps(10.9) == [10.0]


def test_grants_keep_an_even_pace_making_up_half_a_late_turn() -> None:
    """Four a second: one grant per 0.25 s; after a late one, the next may come 0.125 s early."""
    window = SendWindow(4, margin=0.0)
    window.grant(5.0).sent(5.0)
    assert window.delay(5.0) == 0.125  # never two at once
    window.grant(5.125).sent(5.125)
    assert window.delay(5.125) == 0.25  # its turn came at 5.25 after all: the next is due at 5.5
    window.grant(6.0).sent(6.0)  # late: no one asked at 5.5
    assert window.delay(6.0) == 0.125  # half of the lost time made up


def test_a_429_widens_the_margin_and_calm_sends_narrow_it_back() -> None:
    """Each 429 doubles the margin up to its cap; every CALM_SENDS sends without one halve it again."""
    window = SendWindow(4)
    window.refused()
    assert window.margin == 2 * MARGIN
    for _ in range(10):
        window.refused()
    assert window.margin == MAX_MARGIN
    now = 0.0
    for _ in range(CALM_SENDS):
        window.grant(now).sent(now)
        now += 1.0
    assert window.margin == MAX_MARGIN / 2
    for _ in range(10 * CALM_SENDS):
        window.grant(now).sent(now)
        now += 1.0
    assert window.margin == MARGIN


def test_the_window_for_a_rate_keeps_whole_requests_per_second_and_the_margin() -> None:
    """4/s: 4 per second and a margin; 2.5/s: 2 per second (never 3 in a second); 0.5/s: 1 per 2 s."""
    assert [(w.limit, w.width) for w in map(SendWindow.for_rate, (4, 2.5, 0.5))] == [
        (4, 1 + MARGIN),
        (2, 1 + MARGIN),
        (1, 2 + MARGIN),
    ]


async def test_callers_are_served_in_the_order_they_asked() -> None:
    """Five callers of a window of one: each gets the slot after the one before gave it back."""
    window = SendWindow(1, paced=False)
    order: list[int] = []

    async def caller(number: int) -> None:
        slot = await window.acquire()
        order.append(number)
        await asyncio.sleep(0)  # let the others queue behind it
        slot.unused()

    await asyncio.gather(*(caller(number) for number in range(5)))
    assert order == [0, 1, 2, 3, 4]


# -- against the simulator, with the event loop stalling ------------------------------------------


@contextmanager
def simulator_in_a_thread(**options: Any) -> Iterator[TenantSimulator]:
    """A simulator on an event loop of its own thread: when the test's loop stalls, the tenant does not."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="simulator", daemon=True)
    thread.start()

    async def start() -> TenantSimulator:
        sim = TenantSimulator(**options)
        await sim.start()
        return sim

    sim = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield sim
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


async def stall_the_loop_again_and_again() -> None:
    """Block the event loop for 200 ms every 130 ms: what parsing a 10,000-record page does to it."""
    while True:
        await asyncio.sleep(0.13)  # the pace of the stalls, not a synchronisation
        time.sleep(0.2)  # noqa: ASYNC251 - the stall under test: the loop is blocked on purpose


async def test_event_loop_stalls_never_crowd_the_tenants_window(tmp_path: Path) -> None:
    """Pollers at full speed through repeated 200 ms loop stalls: the tenant never answers 429."""
    rate, pages = 10, 6
    streams: list[StreamId] = [
        ("alerts", "dlp"),
        ("alerts", "malware"),
        ("alerts", "policy"),
        ("events", "page"),
    ]
    options = {
        "tokens": {TOKEN: None},
        "seed": SEED,
        "backlog": pages * 100,
        "page_size": 100,
        "arrival_rate": 0,
        "idle_wait_time": 0.05,
        "rate_limit": rate,
        "subtypes": [f"{kind}/{subtype}" for kind, subtype in streams],
    }
    expected = {s: [record_id(SEED, *s, seq) for seq in range(pages * 100)] for s in streams}
    with simulator_in_a_thread(**options) as sim:
        assert sim.url is not None
        tenants = [tenant("sim", sim.url, rate_limit=rate)]
        async with ingesting(
            tmp_path, tenants, [route("all", "sim", streams)], environ={"SIM_TOKEN": TOKEN}
        ) as ingest:
            # Our stalls are under test, not the tenant's: a margin wide enough for the scheduling jitter
            # of a busy test machine on the tenant's side (a 200 ms stall dwarfs it either way).
            window = ingest.client.window
            window.margin = window.base_margin = 0.05
            stalls = asyncio.create_task(stall_the_loop_again_and_again())
            try:
                await ingest.watch.until(lambda: ingest.has_all(expected), timeout=45)
            finally:
                stalls.cancel()
                await asyncio.gather(stalls, return_exceptions=True)
            throttled, waited = ingest.client.throttled, ingest.client.bucket_wait_seconds
    stats = sim.stats()
    assert (stats.rate_limited, throttled) == (0, 0)
    assert stats.max_requests_per_second <= rate
    assert waited > 0  # the window did hold requests back: the pollers wanted more than the rate
    for stream, ids in expected.items():
        assert ingest.ids(stream) == ids, stream
