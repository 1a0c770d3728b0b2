"""A route cuts its batches the same way whatever the page: by record count, by bytes (never past the
cap unless a record alone is larger), each acknowledged up to where it ends. The route adds a page's
records to its batch in bulk; this checks it against the rule written record by record."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ce_daemon.config.load import load_pipeline
from ce_daemon.health import HealthRegistry
from ce_daemon.jobs import Jobs
from ce_daemon.logs.route import RouteComponent, _Batch
from ce_daemon.logs.workers import PageDecisions
from ce_daemon.metrics import Metrics
from ce_daemon.pipeline import Runtime, plan_components
from ce_daemon.registry import Registry
from ce_daemon.spool import SPOOL_MIGRATIONS, Page, Spool
from ce_daemon.testing import write_pipeline
from ce_daemon.testing.pipelines import pipeline_config
from ce_daemon.testing.state import open_test_store

ROUTE = {"name": "out", "tenant": "sim", "alerts": ["dlp"], "sink": {"type": "file", "path": "out/x.cef"}}
STREAM = "sim/alerts/dlp"


@dataclass
class Cut:
    """A batch as it was sent: its records' ids, its size, its acknowledgements."""

    ids: list[str]
    size: int
    acks: dict[str, tuple[int, int | None]]


@dataclass
class Recording:
    cuts: list[Cut] = field(default_factory=list)


@pytest.fixture
async def route(tmp_path: Path) -> AsyncIterator[RouteComponent]:
    """The real route of a real pipeline file, its sink never opened: what it would send is recorded."""
    config = pipeline_config(tmp_path, "http://127.0.0.1:9", [ROUTE])  # the tenant is never polled
    path = write_pipeline(tmp_path / "pipeline.yaml", config)
    loaded = load_pipeline(path, Registry.discover(), environ={"SIM_TOKEN": "t"})
    store = await open_test_store(loaded.config.state.path, SPOOL_MIGRATIONS + Jobs.discover().migrations())
    spool = Spool(store, 10_000_000)
    await spool.load()
    runtime = Runtime(store=store, spool=spool, health=HealthRegistry(), data_dir=tmp_path, metrics=Metrics())
    component = plan_components(loaded, runtime)["route:out"].build()
    assert isinstance(component, RouteComponent)
    yield component
    await runtime.close()
    await store.close()


def expected_cuts(
    batch: list[tuple[str, int]],
    lines: list[tuple[int, str, int]],
    seq: int,
    max_records: int,
    max_bytes: int,
) -> tuple[list[Cut], list[tuple[str, int]]]:
    """The rule, record by record: a record that would take a non-empty batch past ``max_bytes`` sends
    the batch first (acknowledged up to that record); a batch that reaches ``max_records`` or
    ``max_bytes`` is sent (acknowledged past its last record). Returns the cuts and the open batch."""
    cuts: list[Cut] = []
    size = sum(length for _, length in batch)
    for position, record_id, length in lines:
        if batch and size + length + 1 > max_bytes:
            cuts.append(Cut([i for i, _ in batch], size, {STREAM: (seq, position)}))
            batch, size = [], 0
        batch.append((record_id, length + 1))
        size += length + 1
        if len(batch) >= max_records or size >= max_bytes:
            cuts.append(Cut([i for i, _ in batch], size, {STREAM: (seq, position + 1)}))
            batch, size = [], 0
    return cuts, batch


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(1, 120), max_size=60),
    gaps=st.lists(st.integers(0, 3), min_size=60, max_size=60),
    opened=st.lists(st.integers(1, 60), max_size=4),
    max_records=st.integers(1, 12),
    max_bytes=st.integers(20, 400),
)
async def test_a_page_is_cut_into_batches_as_record_by_record(
    route: RouteComponent,
    lengths: list[int],
    gaps: list[int],
    opened: list[int],
    max_records: int,
    max_bytes: int,
) -> None:
    """Any page (record sizes, positions with gaps where records were filtered), any batch already
    open, any caps: the same batches with the same acknowledgements as the rule, and the same batch
    left open."""
    route.config = route.config.model_copy(
        update={"batch": route.config.batch.model_copy(update={"max_records": max_records})}
    )
    route.max_bytes = max_bytes
    recording = Recording()

    async def flush(batch: _Batch, _stopping: Any) -> _Batch:
        recording.cuts.append(Cut([r.id for r in batch.records], batch.size, dict(batch.acks)))
        return _Batch()

    route._flush = flush  # type: ignore[method-assign]  # what the route would send is what is checked
    # A batch already open (records of an earlier page), kept within the caps as the route keeps it.
    open_batch = _Batch()
    for index, length in enumerate(opened[: max_records - 1]):
        if open_batch.size + length + 1 >= max_bytes:
            break
        open_batch.records.append(_out(f"early-{index}", length))
        open_batch.size += length + 1
    before = [(r.id, len(r.data) + 1) for r in open_batch.records]
    positions, position = [], 0
    for gap in gaps[: len(lengths)]:
        position += gap
        positions.append(position)
        position += 1
    decisions = PageDecisions(
        positions=positions,
        ids=[f"r{p}" for p in positions],
        timestamps=[1_700_000_000] * len(positions),
        data=[b"x" * length for length in lengths],
    )
    page = Page(7, STREAM, b"", "lz4", position, None, None)

    left = await route._consume_page(page, decisions, open_batch, None)  # type: ignore[arg-type]  # never waited on

    lines = [(p, f"r{p}", length) for p, length in zip(positions, lengths, strict=True)]
    cuts, still_open = expected_cuts(before, lines, 7, max_records, max_bytes)
    assert recording.cuts == cuts
    assert [(r.id, len(r.data) + 1) for r in left.records] == still_open
    assert left.size == sum(length for _, length in still_open)
    open_ids = {record_id for record_id, _ in still_open}
    assert [p for _, _, kept in left.runs for p in kept] == [p for p, i, _ in lines if i in open_ids]
    first_kept = len(left.records) - sum(len(kept) for _, _, kept in left.runs)
    assert [left.source(i)[1] for i in range(first_kept, len(left.records))] == [
        p for p, i, _ in lines if i in open_ids
    ]


def _out(record_id: str, length: int) -> Any:
    from ce_daemon.plugin import OutRecord

    return OutRecord(record_id, 1_700_000_000, b"x" * length, "alerts", "dlp", "cef")
