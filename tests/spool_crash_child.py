"""A poller stand-in for the spool crash test: appends pages until it is killed.

Usage: ``python spool_crash_child.py <database> <stream> <seed>``. For each page it records the intent
to advance, appends a page of random size, then prints ``<seq> <page number> <count> <sha256>`` and
flushes, so that every line the parent reads names a page whose append had returned. The next page
number comes from the iterator progress committed with the previous page, which makes a restart
continue the numbering exactly where the last committed page left it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
from pathlib import Path
from typing import Any

import orjson
import structlog

from ce_daemon.netskope.checkpoint import Checkpoints, IteratorMark
from ce_daemon.spool import SPOOL_MIGRATIONS, Spool
from ce_daemon.testing.state import open_test_store


def page_records(number: int, count: int) -> list[dict[str, Any]]:
    """A page of ``count`` records whose ids name the page and the position (cheap to build, so that
    most of the child's time, hence most kill moments, falls inside the spool's own work)."""
    return [
        {
            "_id": f"p{number}-r{i}",
            "page": number,
            "position": i,
            "user": f"user{i % 500}@example.com",
            "url": f"https://app.example.com/{number}/{i}/" + "x" * (i % 200),
        }
        for i in range(count)
    ]


def digest(records: list[dict[str, Any]]) -> str:
    """The fingerprint the parent compares a page's stored records against."""
    return hashlib.sha256(orjson.dumps(records)).hexdigest()


async def run(database: Path, stream: str, seed: int) -> None:
    rng = random.Random(seed)
    store = await open_test_store(database, SPOOL_MIGRATIONS)
    spool = Spool(store, max_bytes=1 << 40)
    await spool.load()
    checkpoints = Checkpoints(store)
    state = await checkpoints.state(stream)
    number = int(state.progress.get("pages", 0)) if state else 0
    while True:
        records = page_records(number, rng.randrange(1, 3_000))
        await checkpoints.record_intent(stream, "next")
        mark = IteratorMark(timestamp_hwm=number, progress={"pages": number + 1})
        seq = await spool.append(stream, records, commit=checkpoints.page_commit(stream, records, mark))
        sys.stdout.write(f"{seq} {number} {len(records)} {digest(records)}\n")
        sys.stdout.flush()
        number += 1


if __name__ == "__main__":
    # stdout carries the committed-page lines only; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    asyncio.run(run(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
