"""SIGKILL the daemon while it pulls: every served `_id` reaches the consumers, ≤ 1 page doubled a crash.

Half the kills land at random moments (after a random number of committed pages); the other half
land inside the iterator's worst window: the simulator has built the page and moved its cursor,
and holds the answer back (a `slow` fault) until the daemon is dead, so the page is lost in
transit and only ``operation=resend`` can bring it back. The consumer is a JSON file route with
batches of half a page, and the output is cut into one segment per run (at the file's size after
each kill), so duplicates can be charged to the crash that caused them: at most one page per
subtype (the target), and in fact no more than the one batch the route had not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ce_daemon.netskope.subtypes import DataKind
from ce_daemon.simulator.faults import Fault
from ce_daemon.simulator.records import record_id
from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_simulator, pipeline_config

TOKEN = "crash-ingest-token-0123456789"
ENV = {"SIM_TOKEN": TOKEN}
SEED = 5
RATE = 20  # requests/s, simulator and tenant: the crashes, not the rate, are under test here
PAGE = 100
BACKLOG = 3000  # per stream: 90 pages in all, far more than the killed runs get through
KILLS = 6
BATCH = PAGE // 2  # the route batches by half pages, so batches end mid-page as well as on page ends
StreamId = tuple[DataKind, str]
STREAMS: tuple[StreamId, ...] = (("alerts", "dlp"), ("alerts", "malware"), ("events", "page"))
ID_PATTERN = re.compile(rb'"_id":"([0-9a-f]{24})"')


def pipeline(tmp_path: Path, url: str) -> dict[str, Any]:
    """One JSON route over the three streams into a file, in batches of half a page."""
    route = {
        "name": "all",
        "tenant": "sim",
        "alerts": [subtype for kind, subtype in STREAMS if kind == "alerts"],
        "events": [subtype for kind, subtype in STREAMS if kind == "events"],
        "format": "json",
        # half a page: a poller that spooled a page twice would show above what the route
        # re-sends after a crash (the one batch its sink had not acknowledged)
        "batch": {"max_records": BATCH, "max_wait": "0.1s"},
        "sink": {"type": "file", "path": "out/records.ndjson"},
    }
    # debug: each committed page is logged, which is what the random kills count
    logging = {"level": "debug", "format": "json"}
    return pipeline_config(tmp_path, url, [route], rate_limit=RATE, logging=logging)


def ids_in(data: bytes) -> list[str]:
    """Every record ``_id`` in a stretch of the sink's output, in order.

    Read by pattern rather than line by line: a SIGKILL can tear a write, and the next run appends
    after the torn bytes. A torn record was never acknowledged, so it is sent again whole later.
    """
    return [match.decode() for match in ID_PATTERN.findall(data)]


def served_pages(sim: TenantSimulator) -> dict[StreamId, list[tuple[str, int, int, str | None]]]:
    """Per stream, every page the simulator built: (operation, first seq, end seq, fault)."""
    return {
        stream: [(p.operation, p.first_seq, p.end_seq, p.fault) for p in sim.served(*stream)]
        for stream in STREAMS
    }


async def kill_after_pages(daemon: DaemonProcess, rng: random.Random) -> str:
    """SIGKILL once the run has committed a random number of pages."""
    pages = rng.randint(1, 8)
    await daemon.wait_for_event("poller.page_committed", timeout=40, count=pages)
    await daemon.kill()
    return f"after {pages} pages"


async def kill_with_answer_in_flight(
    daemon: DaemonProcess, sim: TenantSimulator, stream: StreamId, rng: random.Random
) -> str:
    """SIGKILL while the simulator holds back a page of ``stream`` it has already built."""
    pages = rng.randint(0, 4)
    if pages:
        await daemon.wait_for_event("poller.page_committed", timeout=40, count=pages)
    else:
        await daemon.wait_for_event("daemon.ready", timeout=40)
    sim.inject(*stream, Fault("slow", delay=120))  # held until the simulator stops
    async with asyncio.timeout(40):
        info = await sim.wait_for_request(*stream)
    assert info.fault == "slow"
    await daemon.kill()
    return f"{info.kind}/{info.subtype} {info.operation} answer lost after {pages} pages"


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_sigkill_while_pulling_loses_nothing_and_doubles_at_most_a_page(tmp_path: Path) -> None:
    """Six SIGKILLs while pulling; after restarts every served `_id` is shipped, ≤ 1 page doubled a crash."""
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    stream_of = {
        record_id(SEED, kind, subtype, seq): (kind, subtype)
        for kind, subtype in STREAMS
        for seq in range(BACKLOG)
    }
    output = tmp_path / "out" / "records.ndjson"
    async with backlog_simulator(TOKEN, BACKLOG, STREAMS, seed=SEED, page_size=PAGE, rate_limit=RATE) as sim:
        assert sim.url is not None
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url))
        moments: list[str] = []
        cuts: list[int] = []  # the sink file's size after each kill: where each run's output ends
        held: set[StreamId] = set()
        resumed: list[dict[str, Any]] = []  # restarts that found an intent without its page
        for kill in range(KILLS):
            # the answer-lost window only where the first pull is done (a `next` was served), so that
            # what is lost is a cursor move that only `resend` recovers; each stream once at most
            ready = [
                s for s in STREAMS if s not in held and any(p.operation == "next" for p in sim.served(*s))
            ]
            async with DaemonProcess(config, env=ENV) as daemon:
                if kill % 2 and ready:
                    stream = rng.choice(ready)
                    held.add(stream)
                    moments.append(await kill_with_answer_in_flight(daemon, sim, stream, rng))
                else:
                    moments.append(await kill_after_pages(daemon, rng))
            assert daemon.process is not None and daemon.process.returncode == -signal.SIGKILL
            resumed += daemon.events("poller.resuming_with_resend")
            cuts.append(output.stat().st_size if output.exists() else 0)
        context = f"CRASH_SEED={seed}; kills: {moments}"

        # The last run is left alone until the sink holds every record, then stopped cleanly. The sink
        # is a file another process writes: it can only be polled. A timeout falls through to the
        # assertions below, which say what is missing.
        async with DaemonProcess(config, env=ENV) as daemon:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(90):
                    while not set(stream_of) <= set(ids_in(output.read_bytes()) if output.exists() else []):  # noqa: ASYNC110 - a file of another process
                        await asyncio.sleep(0.2)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0, context
            resumed += daemon.events("poller.resuming_with_resend")
        pages = served_pages(sim)
        pending = sim.pending_faults()

    assert pending == {}, context
    assert len(held) >= 2, context  # the answer-lost window was exercised, not just planned
    served = {
        record_id(SEED, kind, subtype, seq)
        for (kind, subtype), listed in pages.items()
        for _, first, end, _ in listed
        for seq in range(first, end)
    }
    assert served == set(stream_of), context  # the whole backlog was served, none skipped

    data = output.read_bytes()
    segments = [ids_in(data[start:end]) for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    shipped = {id_ for segment in segments for id_ in segment}
    assert served <= shipped, f"{len(served - shipped)} served ids never shipped; {context}"
    assert shipped <= set(stream_of), context
    for run, segment in enumerate(segments):
        doubled = [id_ for id_, count in Counter(segment).items() if count > 1]
        assert not doubled, f"run {run} shipped {len(doubled)} records twice without a crash; {context}"
    for crash in range(KILLS):
        before = {id_ for segment in segments[: crash + 1] for id_ in segment}
        again = Counter(stream_of[id_] for id_ in segments[crash + 1] if id_ in before)
        # the design's bound: the route acknowledges every whole page at once (mid-page positions within
        # a second), so a crash replays at most the unfinished page of each subtype
        assert all(count <= PAGE for count in again.values()), f"crash {crash}: {dict(again)}; {context}"

    # every page lost in transit was asked for again with `resend` and came back unchanged
    for stream, listed in pages.items():
        for position, (operation, first, end, fault) in enumerate(listed):
            if fault == "slow":
                assert operation in ("next", "resend"), context
                assert ("resend", first, end, None) in listed[position + 1 :], f"{stream}; {context}"
    assert resumed, context  # restarts found an intent without its page and asked resend
