"""The body of a data-export page: records generated for its sequence numbers, faults applied, JSON.

Pure functions, so a large page can be rendered in a worker thread while the event loop keeps
stamping requests for the rate limiter.
"""

from __future__ import annotations

import gzip
from typing import Any

import orjson

from ce_daemon.netskope.subtypes import DataKind
from ce_daemon.simulator.faults import Fault, corrupt_records, malform
from ce_daemon.simulator.iterator import Page, Timeline
from ce_daemon.simulator.records import RecordFactory

_RENDER_SLICE = 500  # records per orjson call when a page is written: ~1 ms of GIL each


def render_page(
    factory: RecordFactory,
    stream: tuple[DataKind, str],
    timeline: Timeline,
    page: Page,
    fault: Fault | None,
    compress: bool,
) -> bytes:
    """The response body of ``page`` of ``stream``, broken as ``fault`` says, gzipped if ``compress``."""
    records = factory.make_many(*stream, page.seqs, timeline.timestamps(page.seqs))
    if fault is not None and fault.type == "bad_records":
        corrupt_records(records, fault.every)
    body = page_json(records, page.wait_time, page.timestamp_hwm)
    if fault is not None and fault.type == "malformed_json":
        body = malform(body)
    # Level 1: the simulator is also the benchmarks' load generator, and CPU is the limit there.
    return gzip.compress(body, compresslevel=1, mtime=0) if compress else body


def page_json(records: list[dict[str, Any]], wait_time: float, hwm: int) -> bytes:
    """The page as orjson writes it, byte for byte, but its records a slice at a time.

    orjson holds the GIL for a whole call: 20-35 ms for 10,000 records, while this runs in a worker
    thread. The event loop could not take a request in meanwhile, so the rate limiter stamped arrivals
    late by that much: a jitter no real tenant adds, which refused clients that keep the rate exactly.
    In slices the GIL changes hands every millisecond (at ~25 % more time spent writing JSON).
    """
    head, tail = orjson.dumps({"ok": 1, "result": None, "wait_time": wait_time, "timestamp_hwm": hwm}).split(
        b'"result":null', 1
    )
    parts: list[bytes | memoryview] = [head, b'"result":[']
    for start in range(0, len(records), _RENDER_SLICE):
        if start:
            parts.append(b",")
        parts.append(memoryview(orjson.dumps(records[start : start + _RENDER_SLICE]))[1:-1])
    return b"".join([*parts, b"]", tail])
