"""Spool throughput: append + read + ack of 10,000-record pages, and bytes stored per record.

Run: ``python bench/bench_spool.py [--pages N] [--records N]``. Targets (issue 3): one page cycle
(append, read back, acknowledge) well under 100 ms, and at least 40,000 records/s committed.

Two record shapes are measured: synthetic ~600-byte alerts (the size the target was set for) and the
tenant simulator's DLP alerts (~1.3 KB, many more fields). The codec table shows why pages are stored
as LZ4 frames (zlib shown for comparison), and the loop-stall figure shows what moving the codec off
the event loop buys.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import lz4.frame
import orjson
import structlog

from ce_daemon.netskope.checkpoint import Checkpoints, IteratorMark
from ce_daemon.simulator.records import RecordFactory
from ce_daemon.spool import SPOOL_MIGRATIONS, Spool
from ce_daemon.store.sqlite import SqliteStore

CYCLE_TARGET_MS = 100.0
RECORDS_PER_S_TARGET = 40_000

Records = list[dict[str, Any]]
PageMaker = Callable[[int, int], Records]


def synthetic_page(page: int, per_page: int) -> Records:
    """Netskope-like alerts of about 600 bytes of JSON each, distinct across pages."""
    records = []
    for i in range(per_page):
        n = page * per_page + i
        records.append(
            {
                "_id": f"{(n * 2654435761) % (1 << 96):024x}",
                "timestamp": 1_732_700_000 + n // 50,
                "type": "nspolicy",
                "alert_type": "DLP",
                "alert_name": ("PCI", "PII", "HIPAA", "Source code")[n % 4],
                "user": f"user{n % 997}@example.com",
                "app": ("Box", "Dropbox", "Google Drive", "Slack", "Salesforce")[n % 5],
                "appcategory": "Cloud Storage",
                "srcip": f"10.{n % 251}.{n % 241}.{n % 239}",
                "dstip": f"52.{n % 233}.{n % 229}.{n % 227}",
                "severity": ("low", "medium", "high")[n % 3],
                "activity": ("Upload", "Download", "Share")[n % 3],
                "object": f"report-{n % 10_007}.docx",
                "url": f"https://files.example.com/d/{n:x}/{(n * 7919) % 1_000_003:x}",
                "policy": "Block DLP uploads",
                "action": ("block", "alert", "allow")[n % 3],
                "device": "Windows Device",
                "os": "Windows 11",
                "browser": "Chrome",
                "organization_unit": "corp/eng",
                "dlp_profile": "PCI-DSS",
                "file_size": (n * 104_729) % 50_000_000,
                "md5": f"{(n * 0x9E3779B97F4A7C15) % (1 << 128):032x}",
            }
        )
    return records


_FACTORY = RecordFactory(seed=7)


def simulator_page(page: int, per_page: int) -> Records:
    """The tenant simulator's DLP alerts."""
    seqs = range(page * per_page, (page + 1) * per_page)
    return _FACTORY.make_many("alerts", "dlp", seqs, [1_732_700_000] * per_page)


def best_ms(action: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def codec_table(records: Records) -> float:
    """Print the codec options for one page; return the chosen codec's encode + decode time in ms."""
    raw = orjson.dumps(records)
    per_record = len(raw) / len(records)
    print(f"  codec options for one page ({per_record:.0f} B/record of JSON):")
    print(f"    {'codec':<22} {'encode ms':>10} {'decode ms':>10} {'B/record':>9}")
    loads_ms = best_ms(partial(orjson.loads, raw))
    dumps_ms = best_ms(partial(orjson.dumps, records))
    print(f"    {'orjson only':<22} {dumps_ms:>10.1f} {loads_ms:>10.1f} {per_record:>9.0f}")
    body = lz4.frame.compress(raw)
    encode = dumps_ms + best_ms(partial(lz4.frame.compress, raw))
    decode = loads_ms + best_ms(partial(lz4.frame.decompress, body))
    chosen = max(encode, decode)
    print(f"    {'orjson + lz4 (used)':<22} {encode:>10.1f} {decode:>10.1f} {len(body) / len(records):>9.0f}")
    for level in (1, 3, 6):
        body = zlib.compress(raw, level)
        encode = dumps_ms + best_ms(partial(zlib.compress, raw, level))
        decode = loads_ms + best_ms(partial(zlib.decompress, body))
        label = f"orjson + zlib {level}"
        print(f"    {label:<22} {encode:>10.1f} {decode:>10.1f} {len(body) / len(records):>9.0f}")
    return chosen


class StallMeter:
    """The longest the event loop went without running a 1 ms ticker (outside :meth:`paused` spans)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._pauses = 0
        self._paused = False
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before, pauses = loop.time(), self._pauses
            await asyncio.sleep(0.001)  # the probe itself: how late does a 1 ms timer fire?
            if not self._paused and pauses == self._pauses:
                self.worst = max(self.worst, loop.time() - before - 0.001)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Ignore the loop's own work in this span (the bench building its next page)."""
        self._paused = True
        self._pauses += 1
        try:
            yield
        finally:
            self._paused = False

    def __enter__(self) -> StallMeter:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def cycle_pages(directory: Path, make_page: PageMaker, pages: int, per_page: int) -> dict[str, float]:
    """Append, read back and acknowledge ``pages`` pages, one at a time, timing each step.

    Pages are built just before their cycle, so the heap holds about one page as in the daemon (a heap
    holding the whole run would make every garbage collection, hence every stall, longer).
    """
    async with await SqliteStore.open(directory / "bench.db", SPOOL_MIGRATIONS) as store:
        spool = Spool(store, max_bytes=1 << 40)
        await spool.load()
        await spool.set_consumers({"bench": {"demo/alerts/dlp"}})
        # Warm-up: the first page pays for thread start-up and allocator growth.
        seq = await spool.append("demo/alerts/dlp", make_page(0, per_page))
        await spool.next_page("bench")
        await spool.ack("bench", seq)
        appends, reads, acks, cycles, stored = [], [], [], [], []
        with StallMeter() as stalls:
            for number in range(1, pages + 1):
                with stalls.paused():
                    records = make_page(number, per_page)
                t0 = time.perf_counter()
                seq = await spool.append(
                    "demo/alerts/dlp",
                    records,
                    commit=Checkpoints(spool.store).page_commit(
                        "demo/alerts/dlp", records, IteratorMark(timestamp_hwm=seq)
                    ),
                )
                t1 = time.perf_counter()
                stored.append(spool.used_bytes / per_page)
                page = await spool.next_page("bench")
                assert page is not None
                assert page.seq == seq
                assert len(page.records) == per_page
                t2 = time.perf_counter()
                await spool.ack("bench", seq)
                t3 = time.perf_counter()
                appends.append(t1 - t0)
                reads.append(t2 - t1)
                acks.append(t3 - t2)
                cycles.append(t3 - t0)
                del records, page
        return {
            "append_ms": statistics.median(appends) * 1000,
            "read_ms": statistics.median(reads) * 1000,
            "ack_ms": statistics.median(acks) * 1000,
            "cycle_ms": statistics.median(cycles) * 1000,
            "cycle_p95_ms": sorted(cycles)[int(0.95 * (len(cycles) - 1))] * 1000,
            "committed_records_per_s": per_page / statistics.median(appends),
            "cycle_records_per_s": per_page / statistics.median(cycles),
            "bytes_per_record": statistics.median(stored),
            "loop_stall_ms": stalls.worst * 1000,
        }


def report(name: str, sample: Records, pages: int, figures: dict[str, float], *, judged: bool) -> bool:
    per_page = len(sample)
    raw = len(orjson.dumps(sample)) / per_page
    print(f"\n{name}: {pages} pages of {per_page:,} records, {raw:.0f} B/record of JSON")
    inline_block = codec_table(sample)
    print(
        f"  append {figures['append_ms']:.1f} ms + read {figures['read_ms']:.1f} ms"
        f" + ack {figures['ack_ms']:.1f} ms = cycle {figures['cycle_ms']:.1f} ms median,"
        f" {figures['cycle_p95_ms']:.1f} ms p95"
    )
    print(
        f"  {1000 / figures['cycle_ms']:.1f} pages/s, {figures['cycle_records_per_s']:,.0f} records/s through"
        f" append+read+ack; {figures['committed_records_per_s']:,.0f} records/s committed"
    )
    print(
        f"  stored {figures['bytes_per_record']:.0f} B/record"
        f" ({raw / figures['bytes_per_record']:.1f}x smaller than JSON)"
    )
    print(
        f"  event loop: worst stall {figures['loop_stall_ms']:.1f} ms with the codec in a worker thread;"
        f" on the loop it would block for {inline_block:.0f} ms per page"
    )
    cycle_ok = figures["cycle_ms"] < CYCLE_TARGET_MS
    rate_ok = figures["committed_records_per_s"] >= RECORDS_PER_S_TARGET
    if not judged:
        print("  (reference only: the targets were set for ~600 B records)")
        return True
    print(
        f"  target cycle < {CYCLE_TARGET_MS:.0f} ms: {'PASS' if cycle_ok else 'FAIL'};"
        f" target >= {RECORDS_PER_S_TARGET:,} records/s committed: {'PASS' if rate_ok else 'FAIL'}"
    )
    return cycle_ok and rate_ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=20, help="pages per record shape (default 20)")
    parser.add_argument("--records", type=int, default=10_000, help="records per page (default 10,000)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # quiet the info lines
    ok = True
    shapes: tuple[tuple[str, PageMaker], ...] = (
        ("synthetic ~600 B alerts", synthetic_page),
        ("simulator DLP alerts", simulator_page),
    )
    for name, make_page in shapes:
        with tempfile.TemporaryDirectory() as directory:
            figures = asyncio.run(cycle_pages(Path(directory), make_page, args.pages, args.records))
        judged = make_page is synthetic_page
        ok = report(name, make_page(0, args.records), args.pages, figures, judged=judged) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
