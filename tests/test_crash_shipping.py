"""SIGKILL the daemon at random moments while it ships: after restarts every served `_id` is in every sink."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ce_daemon.netskope.subtypes import DataKind
from ce_daemon.simulator.records import record_id
from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_simulator, pipeline_config

TOKEN = "crash-shipping-token-0123456789"
ENV = {"SIM_TOKEN": TOKEN}
RATE = 20  # requests per second, simulator and tenant alike
STREAMS: tuple[tuple[DataKind, str], ...] = (("alerts", "dlp"), ("alerts", "malware"), ("events", "page"))
BACKLOG = 3000  # per stream; pages of 100, so 90 pages in all: far more than the kills consume
PAGE_SIZE = 100
QUIET = 3.0  # seconds without a page commit, once the whole backlog was served, that end a wait for more
KILLS = 6
ROUTES = {"small": 70, "large": 450}  # route name -> batch.max_records: kills land in different states


def pipeline(tmp_path: Path, url: str) -> dict[str, Any]:
    """Two JSON routes over the same three streams, each to its own file."""
    routes = [
        {
            "name": name,
            "tenant": "sim",
            "alerts": [s for k, s in STREAMS if k == "alerts"],
            "events": [s for k, s in STREAMS if k == "events"],
            "format": "json",
            "batch": {"max_records": size, "max_wait": "0.2s"},
            "sink": {"type": "file", "path": f"out/{name}.ndjson"},
        }
        for name, size in ROUTES.items()
    ]
    # debug: the poller logs each committed page, which is what the kills are timed on
    logging = {"level": "debug", "format": "json"}
    return pipeline_config(tmp_path, url, routes, rate_limit=RATE, logging=logging)


def shipped_ids(path: Path) -> tuple[set[str], int, int]:
    """The ``_id`` of every complete record in a sink file, how many lines it has, how many were torn.

    A SIGKILL can cut a ``write`` short; the next run appends after the torn bytes, so such a line
    holds the start of one record followed by a whole one. The torn record was never acknowledged,
    so it is shipped again in full later; the whole one after it is counted.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set(), 0, 0
    ids: set[str] = set()
    lines = data.split(b"\n")[:-1]
    torn = 0
    for line in lines:
        try:
            ids.add(orjson.loads(line)["_id"])
        except orjson.JSONDecodeError:
            torn += 1
            tail = line[line.rfind(b'{"_id":') :]
            try:
                ids.add(orjson.loads(tail)["_id"])
            except orjson.JSONDecodeError:
                continue
    return ids, len(lines), torn


def served_ids(sim: TenantSimulator) -> set[str]:
    """Every ``_id`` the simulator put in any page it built, over every index and operation."""
    return {
        record_id(sim.seed, kind, subtype, seq)
        for kind, subtype in STREAMS
        for page in sim.served(kind, subtype)
        for seq in page.seqs
    }


async def kill_at_a_random_moment(
    daemon: DaemonProcess,
    rng: random.Random,
    backlog_served: Callable[[], bool],
    all_shipped: Callable[[], bool],
) -> str:
    """SIGKILL the daemon after a random number of committed pages, some rounds only once it ships.

    On a slow machine the pollers may take the whole backlog before a route ships its first batch, and
    an earlier run may have shipped it all: no round waits for a batch or pages that cannot come.
    """
    if not all_shipped() and rng.random() < 0.5:
        await daemon.wait_for_event("route.first_batch_shipped", timeout=40)
        pages = len(daemon.events("poller.page_committed")) + rng.randint(0, 6)
        moment = f"shipping, after page {pages}"
    else:
        pages = rng.randint(1, 8)
        moment = f"after page {pages}"
    await committed(daemon, pages, backlog_served)
    await daemon.kill()
    return moment


async def committed(daemon: DaemonProcess, pages: int, backlog_served: Callable[[], bool]) -> None:
    """Until the daemon has logged ``pages`` page commits, or the simulator has served the whole backlog
    and no commit came for ``QUIET`` seconds: the pollers have nothing left to commit."""
    seen, since = -1, time.monotonic()
    async with asyncio.timeout(40):
        while (count := len(daemon.events("poller.page_committed"))) < pages:
            if count != seen:
                seen, since = count, time.monotonic()
            elif backlog_served() and time.monotonic() - since > QUIET:
                return
            await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_sigkill_while_shipping_loses_no_record(tmp_path: Path) -> None:
    """Six SIGKILLs at random moments while shipping; after restarts every served `_id` is in both sinks."""
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    expected = {record_id(0, kind, subtype, seq) for kind, subtype in STREAMS for seq in range(BACKLOG)}
    outputs = {name: tmp_path / "out" / f"{name}.ndjson" for name in ROUTES}
    simulator = backlog_simulator(TOKEN, BACKLOG, STREAMS, seed=0, page_size=PAGE_SIZE, rate_limit=RATE)
    async with simulator as sim:
        assert sim.url is not None
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url))
        moments = []

        def backlog_served() -> bool:
            return served_ids(sim) >= expected

        def all_shipped() -> bool:
            return all(expected <= shipped_ids(path)[0] for path in outputs.values())

        for _ in range(KILLS):
            daemon = await DaemonProcess(config, env=ENV).start()
            try:
                moments.append(await kill_at_a_random_moment(daemon, rng, backlog_served, all_shipped))
            finally:
                await daemon.kill()
            assert daemon.process is not None and daemon.process.returncode == -signal.SIGKILL

        # The last run is left alone until both sinks hold everything, then stopped cleanly.
        async with DaemonProcess(config, env=ENV) as daemon:
            # Earlier runs may have shipped everything: a SIGTERM before the daemon handles it would kill it.
            await daemon.wait_for_event("daemon.ready", timeout=60)
            # The sinks are files another process writes: they can only be polled. A timeout falls
            # through to the assertions below, which say what is missing.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    while not all(expected <= shipped_ids(path)[0] for path in outputs.values()):  # noqa: ASYNC110 - files of another process
                        await asyncio.sleep(0.1)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

    served = served_ids(sim)
    context = f"seed={seed} kills: {moments}"
    assert served == expected, context  # the whole backlog was served (some pages more than once)
    for name, path in outputs.items():
        ids, lines, torn = shipped_ids(path)
        assert served <= ids, f"{name}: {len(served - ids)} served ids missing; {context}"
        assert ids <= expected, f"{name}: unknown ids; {context}"
        # at-least-once: duplicates are allowed, but never more lines than crashes can explain
        assert lines - torn < len(expected) * 2, f"{name}: {lines} lines for {len(expected)} ids; {context}"
