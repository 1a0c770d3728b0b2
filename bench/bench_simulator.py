"""Tenant simulator speed: records generated per second, and records served per second on one core.

Run: ``python bench/bench_simulator.py``. Targets: at most 4 µs to generate a record, and at least
50,000 records/s served (10,000-record pages, orjson, gzip level 1) by one simulator process.

The simulator runs in a child process (this script with ``--serve``) so that its CPU time can be
read apart from the client's; the client reads raw bodies without decompressing or parsing them.
"Served per CPU-second" is records divided by the child's user+system CPU time over the run, the
figure that says what one core can do; "wall" also includes waiting for the client. Always exits 0:
it is a report, not a gate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import structlog

from ce_daemon.netskope.subtypes import DataKind, all_streams, dataexport_path
from ce_daemon.simulator.command import add_simulate_arguments, run_simulator
from ce_daemon.simulator.records import RecordFactory
from ce_daemon.simulator.tenant import DEFAULT_TOKEN

GENERATE_TARGET_US = 4.0
SERVE_TARGET_PER_SECOND = 50_000
PAGE_SIZE = 10_000
PAGES_PER_STREAM = 6
STREAMS: list[tuple[DataKind, str]] = [
    ("alerts", "dlp"),
    ("alerts", "malware"),
    ("events", "page"),
    ("events", "network"),
]


def bench_generation() -> float:
    """Mean µs per record over every subtype, 20,000 records each."""
    factory = RecordFactory(seed=1)
    total, count = 0.0, 0
    for kind, subtype in all_streams():
        seqs = range(20_000)
        stamps = [1_700_000_000] * len(seqs)
        begin = time.perf_counter()
        factory.make_many(kind, subtype, seqs, stamps)
        total += time.perf_counter() - begin
        count += len(seqs)
    return total / count * 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drain(session: aiohttp.ClientSession, url: str, kind: DataKind, subtype: str) -> int:
    """Fetch PAGES_PER_STREAM full pages of one stream; the number of records served."""
    path = f"{url}{dataexport_path(kind, subtype)}"
    for number in range(PAGES_PER_STREAM):
        params = {"index": "bench", "operation": "head" if number == 0 else "next"}
        async with session.get(path, params=params) as response:
            response.raise_for_status()
            await response.read()
    return PAGES_PER_STREAM * PAGE_SIZE


async def bench_serving(use_gzip: bool) -> tuple[int, float, float]:
    """Records served, wall seconds and simulator CPU seconds for one run."""
    streams = ",".join(f"{k}/{s}" for k, s in STREAMS)
    argv = [sys.executable, __file__, "--serve", "--backlog", str(PAGE_SIZE * PAGES_PER_STREAM * 2)]
    argv += ["--rate-limit", "1000000", "--subtypes", streams, "--page-size", str(PAGE_SIZE)]
    argv += [] if use_gzip else ["--no-gzip"]
    child = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        url = ""
        while not url.startswith("http"):
            line = await child.stdout.readline()
            if not line:
                raise RuntimeError("the simulator exited before printing its URL")
            url = line.decode().strip()
        headers = {"Netskope-Api-Token": DEFAULT_TOKEN, "Accept-Encoding": "gzip" if use_gzip else "identity"}
        async with aiohttp.ClientSession(headers=headers, auto_decompress=False) as session:
            cpu_before, begin = cpu_seconds(child.pid), time.perf_counter()
            counts = await asyncio.gather(*(drain(session, url, kind, subtype) for kind, subtype in STREAMS))
            wall, cpu = time.perf_counter() - begin, cpu_seconds(child.pid) - cpu_before
        return sum(counts), wall, cpu
    finally:
        child.send_signal(signal.SIGTERM)
        await child.wait()


def serve(argv: list[str]) -> int:
    """The child: a simulator from the command line, until SIGTERM."""
    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    async def main() -> int:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        return await run_simulator(args, stop)

    return asyncio.run(main())


def main() -> None:
    per_record = bench_generation()
    verdict = "meets" if per_record <= GENERATE_TARGET_US else "MISSES"
    print(
        f"generate: {per_record:.2f} µs/record ({1e6 / per_record:,.0f} records/s), "
        f"{verdict} ≤ {GENERATE_TARGET_US} µs"
    )
    for use_gzip in (True, False):
        records, wall, cpu = asyncio.run(bench_serving(use_gzip))
        per_cpu = records / cpu if cpu else float("inf")
        verdict = "meets" if per_cpu >= SERVE_TARGET_PER_SECOND else "MISSES"
        label = "gzip level 1" if use_gzip else "no compression"
        print(
            f"serve ({label}): {records:,} records in {wall:.2f} s wall = {records / wall:,.0f} records/s; "
            f"simulator CPU {cpu:.2f} s = {per_cpu:,.0f} records per CPU-second, "
            f"{verdict} ≥ {SERVE_TARGET_PER_SECOND:,}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        sys.exit(serve(sys.argv[2:]))
    main()
