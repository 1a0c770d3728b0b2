"""Netskope ingestion throughput: records/s committed to the spool against the 40,000 records/s ceiling.

Run: ``python bench/bench_ingest.py [--per-subtype N] [--subtypes KIND/SUBTYPE,...]``.

The tenant simulator runs in its own process (``python -m ce_daemon simulate``) in backlog mode:
every subtype holds ``--per-subtype`` records, pages of 10,000 records, the documented 4 requests/s
per token. A full page with more behind it says ``wait_time`` 0; the last one says 1 s, as a tenant
does when it has nothing more (with 0, the poller of a subtype that had finished spent the tenant's
budget on empty pages while the others still had pages to fetch). This process runs what the daemon
runs for ingestion: one `TenantClient` (one send window) for the tenant, one `Poller` per subtype
under the `Supervisor`, committing to a `Spool` in a fresh SQLite state database, with one spool
consumer that reads and acknowledges every page so that the spool never fills (its CPU time and
memory are included in the figures, as a route's would be in the daemon). The clock runs from the
pollers' start until the consumer has read the last backlog record.

Figures and targets (issues 3 and 7): records/s committed compared with the 40,000 records/s ceiling
(≥ 98 %), the most requests the simulator received in any one-second window (never above 4.0),
peak RSS of this process (under 300 MB with a backlog of at least 2 million records), and CPU
seconds per million records. Always exits 0: it is a report, not a gate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from ce_daemon.config.model import Tenant
from ce_daemon.health import HealthRegistry
from ce_daemon.keys import ComponentKey, StreamKey
from ce_daemon.metrics import Metrics
from ce_daemon.netskope.poller import Poller
from ce_daemon.pipeline import Runtime
from ce_daemon.simulator.process import SimulatorProcess, simulator_process
from ce_daemon.simulator.tenant import DEFAULT_TOKEN
from ce_daemon.spool import SPOOL_MIGRATIONS, Spool
from ce_daemon.store.sqlite import SqliteStore
from ce_daemon.supervisor import Supervisor

RATE_LIMIT = 4
PAGE_SIZE = 10_000
CEILING = RATE_LIMIT * PAGE_SIZE
CEILING_SHARE_TARGET = 0.98
MAX_RATE_TARGET = 4.0
RSS_TARGET_MB = 300.0
BACKLOG_FOR_RSS_TARGET = 2_000_000
DEFAULT_SUBTYPES = "alerts/dlp,alerts/malware,events/page,events/network"
TENANT = "bench"
IDLE_WAIT = 1.0  # wait_time of a page that is not full: the simulator's default


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def consume(spool: Spool, total: int, done: asyncio.Event, progress: dict[str, float]) -> None:
    """Read and acknowledge every page; set ``done`` once ``total`` records were seen."""
    seen = 0
    while seen < total:
        page = await spool.next_page("bench")
        assert page is not None  # no timeout: next_page waits for a page
        seen += page.count
        progress["records"] = seen
        progress["last_read"] = time.perf_counter()
        await spool.ack("bench", page.seq)
        del page  # a decoded page is ~60 MB: not to be held while waiting for the next one
    done.set()


async def run(per_subtype: int, subtypes: str, workdir: Path) -> dict[str, Any]:
    """One ingestion run; the measured figures."""
    options = {"backlog": per_subtype, "arrival_rate": 0, "idle_wait": IDLE_WAIT, "page_size": PAGE_SIZE}
    async with simulator_process({**options, "rate_limit": RATE_LIMIT, "subtypes": subtypes}) as sim:
        return await measure(sim, per_subtype, subtypes, workdir)


async def measure(sim: SimulatorProcess, per_subtype: int, subtypes: str, workdir: Path) -> dict[str, Any]:
    """Pull the simulator's backlog as the daemon would; the measured figures."""
    child, url = sim.process, sim.url
    streams = [StreamKey.parse(f"{TENANT}/{item}") for item in subtypes.split(",")]
    total = per_subtype * len(streams)
    tenant = Tenant(
        name=TENANT,
        url=url,
        token=SecretStr(DEFAULT_TOKEN),
        rate_limit=RATE_LIMIT,
        start=time.time() - 2 * 3600,  # before the whole backlog (spread over the last hour)
    )
    supervisor = Supervisor()
    try:
        async with contextlib.AsyncExitStack() as stack:
            store = await SqliteStore.open(workdir / "state.db", SPOOL_MIGRATIONS)
            stack.push_async_callback(store.close)
            spool = Spool(store, 4 * 1024**3)  # room enough: the consumer keeps it near empty anyway
            await spool.load()
            runtime = Runtime(
                store=store, spool=spool, health=HealthRegistry(), data_dir=workdir, metrics=Metrics()
            )
            stack.push_async_callback(runtime.close)
            await spool.set_consumers({"bench": [s.key for s in streams]})
            client = runtime.client_for(tenant, TENANT)  # the one bucket every poller shares
            done = asyncio.Event()
            progress: dict[str, float] = {"records": 0, "last_read": 0.0}
            consumer = asyncio.create_task(consume(spool, total, done, progress))
            sim_cpu_before = cpu_seconds(child.pid)
            cpu_before, begin = time.process_time(), time.perf_counter()
            pollers = [
                Poller(str(ComponentKey.poller(s)), s.key, s, tenant, TENANT, runtime) for s in streams
            ]
            for poller in pollers:
                supervisor.start(poller)
            reporter = asyncio.create_task(report_progress(progress, total, begin))
            await done.wait()
            wall = progress["last_read"] - begin
            cpu = time.process_time() - cpu_before
            sim_cpu = cpu_seconds(child.pid) - sim_cpu_before
            reporter.cancel()
            await supervisor.stop_many(list(supervisor.running), 10.0)
            await consumer
            stats = await sim.stats()
            return {
                "records": total,
                "wall": wall,
                "cpu": cpu,
                "sim_cpu": sim_cpu,
                "requests": client.requests,
                "bucket_wait": client.bucket_wait_seconds,
                "retries": sum(p.status.counters.get("retries", 0) for p in pollers),
                "max_rate": stats["max_requests_per_second"],
                "rate_limited": stats["rate_limited"],
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "load": os.getloadavg()[0],
            }
    finally:
        await supervisor.stop_many(list(supervisor.running), 5.0)


async def report_progress(progress: dict[str, float], total: int, begin: float) -> None:
    """A line every 10 s, so a long run shows it is alive."""
    while True:
        await asyncio.sleep(10)
        elapsed = time.perf_counter() - begin
        records = progress["records"]
        print(f"  … {records:>12,.0f} / {total:,} records after {elapsed:5.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--per-subtype", type=int, default=500_000, help="backlog records per subtype")
    parser.add_argument("--subtypes", default=DEFAULT_SUBTYPES, help="KIND/SUBTYPE,... pulled at once")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    count = len(args.subtypes.split(","))
    print(
        f"ingest: {count} subtypes of {args.per_subtype:,} records = {count * args.per_subtype:,} "
        f"backlog records, pages of {PAGE_SIZE:,}, wait_time 0 ({IDLE_WAIT:g} s once a subtype has no more), "
        f"{RATE_LIMIT} req/s per tenant",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as workdir:
        figures = asyncio.run(run(args.per_subtype, args.subtypes, Path(workdir)))
    print_figures(figures)


def print_figures(f: dict[str, Any]) -> None:
    """The figures, each against its target."""
    rate = f["records"] / f["wall"]
    share = rate / CEILING
    per_million = f["cpu"] / (f["records"] / 1e6)

    def verdict(ok: bool) -> str:
        return "meets" if ok else "MISSES"

    print(
        f"committed: {f['records']:,} records in {f['wall']:.1f} s = {rate:,.0f} records/s, "
        f"{share:.1%} of the {CEILING:,} records/s ceiling: {verdict(share >= CEILING_SHARE_TARGET)} "
        f"≥ {CEILING_SHARE_TARGET:.0%}"
    )
    print(
        f"requests: {f['requests']} sent ({f['bucket_wait']:.0f} s waited for the send window in all), "
        f"{f['rate_limited']} answered 429, {f['retries']} retried; "
        f"the simulator saw at most {f['max_rate']} in any one-second window: "
        f"{verdict(f['max_rate'] <= MAX_RATE_TARGET)} ≤ {MAX_RATE_TARGET}"
    )
    if f["records"] >= BACKLOG_FOR_RSS_TARGET:
        rss_verdict = f"{verdict(f['rss_mb'] < RSS_TARGET_MB)} < {RSS_TARGET_MB:.0f} MB"
    else:
        rss_verdict = f"not judged: the target is for a backlog of {BACKLOG_FOR_RSS_TARGET:,} or more"
    print(f"peak RSS: {f['rss_mb']:.0f} MB: {rss_verdict}")
    print(
        f"CPU: {f['cpu']:.1f} s = {per_million:.1f} CPU-s per million records "
        f"(simulator process: {f['sim_cpu']:.1f} s; 1-minute load average at the end: {f['load']:.2f} "
        f"on {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
