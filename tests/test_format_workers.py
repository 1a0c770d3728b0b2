"""Format workers: a page decided in a worker process is decided as the route would decide it itself;
a lost worker costs nothing; workers live and die with their daemon."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ce_daemon.filter import compile_filter
from ce_daemon.logs import workers
from ce_daemon.logs.formatter import OutputFormat, RecordFormatter
from ce_daemon.logs.mapping import Mapping
from ce_daemon.logs.resolve import Mute
from ce_daemon.logs.route import decide_records, records_at
from ce_daemon.logs.settings import auto_size
from ce_daemon.logs.workers import (
    FormatWorkers,
    PageDecisions,
    PageWork,
    Recipe,
    WorkerLostError,
    decide_page,
    output_key,
    recipe_bytes,
)
from ce_daemon.simulator.records import RecordFactory
from ce_daemon.spool.codec import CODEC, encode
from ce_daemon.spool.store import Page
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_simulator, pipeline_config
from ce_daemon.testing.processes import children_of, state_of

BUILTIN = Mapping.builtin("netskope")
STREAMS = [("alerts", "dlp"), ("alerts", "malware"), ("events", "page"), ("events", "network")]
FILTER = {"$or": [{"severity": {"$in": ["high", "critical"]}}, {"_id": {"$regex": "[0-7]$"}}]}
MUTE = {"user": {"$regex": "^a"}}


def recipe(output: OutputFormat, spec: Any = FILTER, fields: list[Any] | None = None) -> Recipe:
    return Recipe(
        key=f"{output}-{spec!r}-{fields!r}",
        format=output,
        mapping=BUILTIN,
        tenant_name="tenant|one",
        json_fields=fields,
        filter=spec,
    )


def work(made: Recipe, kind: str, subtype: str, records: list[dict[str, Any]], start: int = 0) -> PageWork:
    return PageWork(
        recipe_key=made.key,
        recipe=recipe_bytes(made),
        spool="test",
        readers=1,
        kind=kind,
        subtype=subtype,
        seq=1,
        codec=CODEC,
        body=encode(records),
        start=start,
        mutes=(("quiet-a", MUTE),),
    )


def here(
    made: Recipe, kind: str, subtype: str, records: list[dict[str, Any]], start: int = 0
) -> PageDecisions:
    """What the route decides in its own process: its predicate, mutes and formatter."""
    formatter = RecordFormatter(made.format, made.mapping, made.tenant_name, json_fields=made.json_fields)
    mutes = [Mute("quiet-a", 0, float("inf"), compile_filter(MUTE))]
    predicate = None if made.filter is None else compile_filter(made.filter)
    return decide_records([(0, records)], start, predicate, mutes, formatter.writer_for(kind, subtype))


@pytest.fixture
def fresh_worker() -> Iterator[None]:
    """This process as a worker that keeps no decisions from an earlier test."""
    workers._STATE.decided.clear()
    workers._STATE.chunks.clear()
    yield
    workers._STATE.decided.clear()
    workers._STATE.chunks.clear()


def shared_work(made: Recipe, records: list[dict[str, Any]], sharers: int, **changes: Any) -> PageWork:
    """``work`` of a route that is one of ``sharers`` with the same output."""
    return dataclasses.replace(
        work(made, "alerts", "dlp", records), output_key=output_key(made), sharers=sharers, **changes
    )


@pytest.mark.usefixtures("fresh_worker")
def test_routes_with_the_same_output_share_a_pages_decisions() -> None:
    """The first of three routes with the same output has the page decided; the two others take those
    decisions (the same object); then they are let go, and a later ask decides again."""
    records = simulated("alerts", "dlp", 1_000)
    made = recipe("cef")
    twin = dataclasses.replace(made, key="another route, same output")
    assert output_key(twin) == output_key(made)
    first = decide_page(shared_work(made, records, 3))
    assert first == here(made, "alerts", "dlp", records)
    assert decide_page(shared_work(twin, records, 3)) is first
    assert decide_page(shared_work(made, records, 3)) is first
    again = decide_page(shared_work(made, records, 3))
    assert again is not first and again == first


@pytest.mark.parametrize(
    "change",
    [
        {"start": 10},
        {"seq": 2},
        {"spool": "another"},
        {"mutes": ()},
    ],
    ids=["another start", "another page", "another spool", "other mutes"],
)
@pytest.mark.usefixtures("fresh_worker")
def test_decisions_are_shared_only_for_the_same_page_start_and_mutes(change: dict[str, Any]) -> None:
    """What differs in the page asked for, where the route stands in it or its mutes: decided anew."""
    records = simulated("alerts", "dlp", 1_000)
    made = recipe("cef")
    first = decide_page(shared_work(made, records, 2))
    other = decide_page(shared_work(made, records, 2, **change))
    assert other is not first
    assert decide_page(shared_work(made, records, 2)) is first  # still kept for the twin


@pytest.mark.usefixtures("fresh_worker")
def test_a_page_is_decompressed_once_for_the_routes_of_every_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three routes with three outputs on one stream: the page is decompressed for the first, kept for
    the two others, then let go."""
    records = simulated("alerts", "dlp", 1_000)
    decoded: list[int] = []
    real = workers.decode

    def counting(seq: int, codec: str, body: bytes) -> tuple[bytes, ...]:
        decoded.append(seq)
        return real(seq, codec, body)

    monkeypatch.setattr(workers, "decode", counting)
    made = [recipe("cef"), recipe("leef"), recipe("json", spec=None)]
    asks = [dataclasses.replace(work(each, "alerts", "dlp", records), outputs=3) for each in made]
    for ask, each in zip(asks, made, strict=True):
        assert decide_page(ask) == here(each, "alerts", "dlp", records)
    assert decoded == [1]
    assert not workers._STATE.chunks
    decide_page(asks[0])
    assert decoded == [1, 1]  # asked again later: decompressed again


def test_outputs_differ_with_anything_that_changes_a_line() -> None:
    """Format, mapping's tenant name, fields or filter: another output, never shared."""
    made = recipe("cef")
    others = [
        recipe("leef"),
        recipe("cef", spec=None),
        recipe("json", fields=["_id"]),
        dataclasses.replace(made, tenant_name="tenant|two"),
    ]
    assert len({output_key(made), *(output_key(other) for other in others)}) == 1 + len(others)


def simulated(kind: str, subtype: str, count: int = 2_500) -> list[dict[str, Any]]:
    return RecordFactory(seed=3, tenant="t").make_many(kind, subtype, range(count), [1_714_557_600] * count)  # type: ignore[arg-type]  # kinds of STREAMS


@pytest.mark.parametrize(("kind", "subtype"), STREAMS, ids=[f"{k}/{s}" for k, s in STREAMS])
@pytest.mark.parametrize("output", ["cef", "leef", "json"])
def test_a_worker_decides_every_simulator_record_as_the_route_would(
    kind: str, subtype: str, output: OutputFormat
) -> None:
    """Filter, mutes and format in a worker: the same bytes, drops and reasons, from the same start."""
    records = simulated(kind, subtype)
    made = recipe(output)
    for start in (0, 1_234):
        decided = decide_page(work(made, kind, subtype, records, start))
        assert decided == here(made, kind, subtype, records, start)
        assert len(decided) == len(records) - start
        assert decided.data and decided.dropped  # some sent, some filtered or muted


# What JSON holds (spooled records come from JSON: no NaN, no infinity).
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
RECORDS = st.lists(
    st.fixed_dictionaries(
        {"_id": st.text(max_size=8), "timestamp": st.one_of(st.integers(0, 2**40), st.text(max_size=3))},
        optional={
            "severity": st.sampled_from(["high", "low", "critical"]),
            "user": st.text(max_size=6),
            "url": JSON_VALUES,
            "app": JSON_VALUES,
            "alert_name": JSON_VALUES,
            "dlp_file": JSON_VALUES,
        },
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=RECORDS, output=st.sampled_from(["cef", "leef", "json"]), spec=st.sampled_from([None, FILTER]))
def test_any_records_are_decided_in_a_worker_as_in_the_route(
    records: list[dict[str, Any]], output: OutputFormat, spec: Any
) -> None:
    """Any values (control characters, containers, odd ids and timestamps): the worker's decisions,
    bytes included, are the route's."""
    made = recipe(output, spec)
    assert decide_page(work(made, "alerts", "dlp", records)) == here(made, "alerts", "dlp", records)


@pytest.fixture
def pool() -> Iterator[FormatWorkers]:
    """The process's pool with one worker, given back (and so stopped) after the test."""
    workers = FormatWorkers.acquire(1)
    assert workers is not None
    yield workers
    workers.release()


async def test_decisions_cross_the_process_boundary_intact(pool: FormatWorkers) -> None:
    """Through a real worker process: the same decisions as in-process (pickling loses nothing)."""
    records = simulated("alerts", "dlp", 3_000)
    made = recipe("cef")
    decided = await pool.decide(work(made, "alerts", "dlp", records))
    assert decided == here(made, "alerts", "dlp", records)


async def test_a_killed_worker_is_reported_and_replaced(pool: FormatWorkers) -> None:
    """A worker killed with a page: WorkerLostError (the route then decides that page itself), and the
    next page goes to a new worker."""
    records = simulated("alerts", "dlp", 1_000)
    made = recipe("cef")
    await pool.decide(work(made, "alerts", "dlp", records))  # the worker is up
    [worker] = list(pool.processes())
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(WorkerLostError, match="lost with page 1"):
        await pool.decide(work(made, "alerts", "dlp", records))
    assert pool.lost == 1
    decided = await pool.decide(work(made, "alerts", "dlp", records))
    assert decided == here(made, "alerts", "dlp", records)
    assert list(pool.processes()) != [worker]


async def test_a_stuck_worker_is_ended_after_the_timeout(pool: FormatWorkers) -> None:
    """A worker that does not answer in time is killed and reported; the pool starts afresh."""
    records = simulated("alerts", "dlp", 1_000)
    made = recipe("cef")
    await pool.decide(work(made, "alerts", "dlp", records))
    [worker] = list(pool.processes())
    os.kill(worker, signal.SIGSTOP)  # alive, answering nothing
    with pytest.raises(WorkerLostError, match="stuck with page 1"):
        await pool.decide(work(made, "alerts", "dlp", records), timeout=0.5)
    assert await _gone(worker)
    assert await pool.decide(work(made, "alerts", "dlp", records)) == here(made, "alerts", "dlp", records)


def test_the_pool_is_shared_and_ends_with_its_last_user() -> None:
    """Every route takes the daemon's one pool; the last one to give it back stops it; 0 is in-process;
    a new size (a reload changed logs.workers) applies to the pool in use."""
    assert FormatWorkers.acquire(0) is None
    first, second = FormatWorkers.acquire(2), FormatWorkers.acquire(2)
    assert first is second is not None
    first.release()
    assert FormatWorkers.acquire(3) is second and second.size == 3
    second.release()
    second.release()
    third = FormatWorkers.acquire(1)
    assert third is not None and third is not second
    third.release()


async def test_two_workers_share_the_pages_and_answer_each_reader_as_its_route() -> None:
    """Two workers, pages of two seqs each read by two routes (a page goes to worker ``seq % size``, where
    its frames are kept for its second reader): every answer is the route's own, and both workers ran."""
    pool = FormatWorkers.acquire(2)
    assert pool is not None
    try:
        records = simulated("alerts", "dlp", 1_000)
        for seq in (4, 5):
            made = [recipe(output) for output in ("cef", "leef")]
            pages = [dataclasses.replace(work(r, "alerts", "dlp", records), seq=seq, readers=2) for r in made]
            for page, each in zip(pages, made, strict=True):
                assert await pool.decide(page) == here(each, "alerts", "dlp", records)
        assert len(pool.processes()) == 2
    finally:
        pool.release()


def test_auto_is_one_worker_per_cpu_but_none_on_one() -> None:
    """`workers: auto`: none on one CPU, one per CPU from two on, never more than four."""
    assert [auto_size(cpus) for cpus in (1, 2, 3, 8, 64)] == [0, 2, 3, 4, 4]


async def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (or is a zombie waiting for its parent) within ``within`` s."""
    async with asyncio.timeout(within):
        while state_of(pid) not in (None, "Z"):  # noqa: ASYNC110 - another process's state can only be polled
            await asyncio.sleep(0.05)
    return True


async def test_workers_end_with_a_killed_daemon(tmp_path: Path) -> None:
    """SIGKILL the daemon while its routes use a worker: the worker ends too (no orphan left behind)."""
    token = "workers-token-0123456789abcdef"
    async with backlog_simulator(token, 2_000, [("alerts", "dlp")], seed=0, page_size=500) as sim:
        assert sim.url is not None
        route = {
            "name": "out",
            "tenant": "sim",
            "alerts": ["dlp"],
            "format": "cef",
            "sink": {"type": "file", "path": "out.cef"},
        }
        config = pipeline_config(tmp_path, sim.url, [route])
        config["logs"]["workers"] = 1
        daemon = await DaemonProcess(
            write_pipeline(tmp_path / "pipeline.yaml", config), env={"SIM_TOKEN": token}
        ).start()
        try:
            await daemon.wait_for_event("route.first_batch_shipped")
            assert daemon.process is not None
            workers = children_of(daemon.process.pid)
            assert workers, "no worker process was started"
        finally:
            await daemon.kill()
        for worker in workers:
            assert await _gone(worker), f"worker {worker} outlived its daemon"


async def test_twin_routes_through_workers_write_the_same_lines(tmp_path: Path) -> None:
    """Two routes with the same output to two files, beside a LEEF route, through two workers (which
    share the twins' decisions): each file gets every record once, the twins' files byte for byte alike."""
    token = "workers-token-0123456789abcdef"
    count = 3_000
    async with backlog_simulator(
        token, count, [("alerts", "dlp"), ("events", "page")], seed=4, page_size=500
    ) as sim:
        assert sim.url is not None
        streams = {"alerts": ["dlp"], "events": ["page"]}
        routes = [
            {
                "name": name,
                "tenant": "sim",
                **streams,
                "format": output,
                "sink": {"type": "file", "path": path},
            }
            for name, output, path in [
                ("twin-a", "cef", "a.cef"),
                ("twin-b", "cef", "b.cef"),
                ("other", "leef", "c.leef"),
            ]
        ]
        config = pipeline_config(tmp_path, sim.url, routes)
        config["logs"]["workers"] = 2
        daemon = await DaemonProcess(
            write_pipeline(tmp_path / "pipeline.yaml", config), env={"SIM_TOKEN": token}
        ).start()
        files = [tmp_path / name for name in ("a.cef", "b.cef", "c.leef")]
        try:
            async with asyncio.timeout(60):
                while not all(f.exists() and f.read_bytes().count(b"\n") >= 2 * count for f in files):  # noqa: ASYNC110 - files another process writes
                    await asyncio.sleep(0.2)
        finally:
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait() == 0
    twin_a, twin_b, other = (f.read_bytes().splitlines() for f in files)
    assert len(twin_a) == len(other) == 2 * count
    assert twin_a == twin_b
    assert len(set(twin_a)) == 2 * count  # every record once


def test_refused_records_are_found_on_their_pages_in_order() -> None:
    """The records a sink refused, parsed again from their pages (any frame, any order, two pages); a
    position a page does not have is an error, never another record."""
    first, second = simulated("alerts", "dlp", 2_500), simulated("events", "page", 10)
    pages = [
        Page(seq, "s", encode(records), CODEC, len(records), None, None)
        for seq, records in ((1, first), (2, second))
    ]
    places = [(pages[0], 2_400), (pages[1], 3), (pages[0], 0), (pages[0], 1_500)]
    assert records_at(places) == [first[2_400], second[3], first[0], first[1_500]]
    with pytest.raises(IndexError, match="spool page 2 has no record 10"):
        records_at([(pages[1], 10)])


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe capacities are Linux's")
async def test_the_pipes_to_a_worker_hold_a_megabyte(pool: FormatWorkers) -> None:
    """Pages and decisions cross in a few writes, not a hundred of 64 KiB (Linux's default capacity)."""
    records = simulated("alerts", "dlp", 1_000)
    made = recipe("cef")
    await pool.decide(work(made, "alerts", "dlp", records))
    allowed = int(Path("/proc/sys/fs/pipe-max-size").read_text())  # noqa: ASYNC240 - a few bytes of procfs
    wanted = workers.PIPE_BYTES if os.geteuid() == 0 else min(workers.PIPE_BYTES, allowed)
    assert pool.pipe_sizes() == [[wanted, wanted]]  # one worker ran the page: both its pipes widened
