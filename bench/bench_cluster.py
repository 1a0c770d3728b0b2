"""Benchmark (issue 8): three nodes on one PostgreSQL against one node on SQLite, and the takeover time.

Both runs ship the same workload (``ce_daemon.testing.cluster``): two simulated tenants (each a
``ce-daemon simulate`` process), three subtypes each with a large backlog in pages of 10,000, one JSON
route per tenant and data kind over TCP syslog (no header) into a receiver per route in this process
that only counts octet-counted frames. Figures:

- records/s shipped over a steady window (after a warm-up, ended early when the backlog runs low),
  against the ceiling: 4 requests/s x 10,000 records = 40,000 records/s per tenant;
- the records/s fetched from the simulators in the same window (ahead of shipping while the spool
  fills);
- for PostgreSQL, what the database wrote per million records fetched in that window: rows inserted
  (``pg_stat_database.tup_inserted`` of the run's database, TOAST chunks of the pages included), WAL
  bytes (``pg_current_wal_lsn()``, a server-wide figure: other users of the server add to it), and the
  compressed bytes per record of the spool pages (written once per record: the WAL's floor);
- after SIGKILL of the node holding most units: the time until every unit is held again (``ce_leases``,
  asked every 50 ms) and until every moved unit flows again (a moved tenant: the first request under
  its new lease, from the simulator's ledger, whose monotonic clock is this machine's; a moved route:
  the first record on a connection its receiver accepted after the kill).

Run: ``python bench/bench_cluster.py [--backlog N] [--warmup S] [--window S] [--lease-ttl S]``; the
default run takes about three minutes. PostgreSQL must answer at $CE_TEST_POSTGRES (default
``postgresql://postgres@127.0.0.1:5432``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from ce_daemon.testing.cluster import ClusterRun, Workload, cluster_run, route_names
from ce_daemon.testing.state import postgres_database

CEILING_PER_TENANT = 4 * 10_000


class CountingReceiver(asyncio.Protocol):
    """One TCP connection of a route's receiver: counts octet-counted frames, keeps nothing."""

    def __init__(self, route: RouteReceiver) -> None:
        self.route = route
        self.accepted = time.monotonic()
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        position, size, frames = 0, len(buffer), 0
        while True:
            space = buffer.find(b" ", position, position + 12)
            if space < 0:
                break
            end = space + 1 + int(buffer[position:space])
            if end > size:
                break
            position, frames = end, frames + 1
        self.buffer = buffer[position:]
        if frames:
            self.route.arrived(frames, self.accepted)


@dataclass
class RouteReceiver:
    """What arrived for one route: a count, and the first arrival on a connection accepted after a time."""

    name: str
    count: int = 0
    since: float = float("inf")
    """Connections accepted at or after this time are watched for their first frame."""
    resumed: float | None = None
    server: asyncio.Server | None = field(default=None, repr=False)

    def arrived(self, frames: int, accepted: float) -> None:
        self.count += frames
        if self.resumed is None and accepted >= self.since:
            self.resumed = time.monotonic()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def receivers(workload: Workload) -> AsyncIterator[dict[str, RouteReceiver]]:
    """A counting receiver per route of ``workload``."""
    loop = asyncio.get_running_loop()
    routes = {name: RouteReceiver(name) for name in route_names(workload)}
    for route in routes.values():
        route.server = await loop.create_server(lambda r=route: CountingReceiver(r), "127.0.0.1", 0)
    try:
        yield routes
    finally:
        for route in routes.values():
            assert route.server is not None
            route.server.close()


def shipped(routes: dict[str, RouteReceiver]) -> int:
    return sum(route.count for route in routes.values())


async def database_writes(dsn: str) -> tuple[int, int]:
    """(rows inserted in the run's database so far, the server's WAL position in bytes)."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT tup_inserted, pg_current_wal_lsn() - '0/0'::pg_lsn AS wal"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
    finally:
        await connection.close()
    assert row is not None
    return int(row["tup_inserted"]), int(row["wal"])


async def page_bytes_per_record(dsn: str) -> float:
    """Compressed bytes per record of the spool pages the database holds: what each record ingested
    writes to it at least once (its WAL's floor, which this database alone accounts for)."""
    connection = await asyncpg.connect(dsn)
    try:
        value = await connection.fetchval(
            "SELECT sum(octet_length(body))::float8 / nullif(sum(count), 0) FROM spool_pages"
        )
    finally:
        await connection.close()
    return float(value or 0.0)


async def steady_rate(
    run: ClusterRun, routes: dict[str, RouteReceiver], total: int, warmup: float, window: float
) -> dict[str, float]:
    """Records/s over ``window`` seconds after ``warmup`` seconds of flow (ended early at 90 % of ``total``);
    the records/s fetched from the simulators meanwhile; with PostgreSQL, the database's writes in that
    window per million records fetched."""
    while shipped(routes) == 0:  # noqa: ASYNC110 - counted by the receivers' protocols, no event to wait on
        await asyncio.sleep(0.1)
    await asyncio.sleep(warmup)
    begin, first, fetched = time.monotonic(), shipped(routes), await served(run)
    writes = await database_writes(run.dsn) if run.dsn else None
    while time.monotonic() - begin < window and shipped(routes) < 0.9 * total:  # noqa: ASYNC110 - a clock
        await asyncio.sleep(0.25)
    seconds, count = time.monotonic() - begin, shipped(routes) - first
    ingested = await served(run) - fetched
    figures = {
        "rate": count / seconds,
        "seconds": seconds,
        "records": count,
        "ingest_rate": ingested / seconds,
    }
    if writes is not None:
        rows, wal = await database_writes(run.dsn)
        # Per record ingested: its page is written once (the bulk of the bytes), then acknowledged.
        figures["rows_per_million"] = (rows - writes[0]) / ingested * 1e6
        figures["wal_mb_per_million"] = (wal - writes[1]) / ingested * 1e6 / 1e6
        figures["page_bytes_per_record"] = await page_bytes_per_record(run.dsn)
    return figures


async def served(run: ClusterRun) -> int:
    """Records the simulators have served so far (pages built, on every index)."""
    total = 0
    for tenant in run.tenants:
        stats = await tenant.simulator.stats()
        total += sum(sum(per_index.values()) for per_index in stats["records_served"].values())
    return total


async def takeover(run: ClusterRun, routes: dict[str, RouteReceiver]) -> dict[str, Any]:
    """SIGKILL the node holding most units; seconds until they are all held again and flowing again."""
    shares = await run.shares()
    # Among the nodes holding most, one holding a tenant: its takeover is the one ingest waits on.
    victim = run.nodes[
        max(shares, key=lambda name: (len(shares[name]), any(u.startswith("tenant:") for u in shares[name])))
    ]
    moved = sorted(shares[victim.name])
    killed = time.monotonic()
    for name in moved:
        if name.startswith("route:"):
            routes[name.removeprefix("route:")].since = killed
    await victim.kill()
    while True:
        leases = await run.leases()
        if all(unit in leases and leases[unit].node != victim.name for unit in run.units):
            break
        await asyncio.sleep(0.05)
    held = time.monotonic() - killed
    flowing: dict[str, float] = {}
    async with asyncio.timeout(120):
        while len(flowing) < len(moved):
            for unit in moved:
                if unit in flowing:
                    continue
                if unit.startswith("route:"):
                    resumed = routes[unit.removeprefix("route:")].resumed
                else:
                    resumed = await first_request(run, unit.removeprefix("tenant:"), leases[unit].token)
                if resumed is not None:
                    flowing[unit] = resumed - killed
            await asyncio.sleep(0.1)
    return {"victim": victim.name, "moved": moved, "held_s": held, "flowing_s": flowing}


async def first_request(run: ClusterRun, tenant: str, token: int) -> float | None:
    """When the simulator of ``tenant`` first received a request under lease ``token`` (monotonic)."""
    ledger = (await run.ledgers())[tenant]
    starts = [
        entry["first"]
        for indexes in ledger.values()
        for record in indexes.values()
        for entry in record["runs"]
        if entry["token"] == token
    ]
    return min(starts, default=None)


async def measure(
    directory: Path, dsn: str | None, nodes: int, workload: Workload, args: argparse.Namespace
) -> dict[str, Any]:
    total = workload.backlog * len(workload.streams) * workload.tenants
    async with receivers(workload) as routes:
        ports = {name: route.port for name, route in routes.items()}
        async with cluster_run(
            directory, dsn, nodes=nodes, lease_ttl=args.lease_ttl, workload=workload, sink_ports=ports
        ) as run:
            figures: dict[str, Any] = await steady_rate(run, routes, total, args.warmup, args.window)
            if nodes > 1:
                figures["takeover"] = await takeover(run, routes)
            await run.stop()
    return figures


def report(label: str, figures: dict[str, Any], tenants: int) -> None:
    ceiling = CEILING_PER_TENANT * tenants
    line = (
        f"{label}: {figures['rate']:,.0f} records/s over {figures['seconds']:.0f} s "
        f"({figures['records']:,.0f} records; {figures['rate'] / ceiling:.0%} of the {ceiling:,} ceiling); "
        f"fetched meanwhile {figures['ingest_rate']:,.0f} records/s"
    )
    print(line)
    if "rows_per_million" in figures:
        print(
            f"    PostgreSQL per million records fetched: {figures['rows_per_million']:,.0f} rows inserted, "
            f"{figures['wal_mb_per_million']:,.0f} MB of WAL (server-wide); spool pages "
            f"{figures['page_bytes_per_record']:,.0f} bytes per record compressed "
            f"({figures['page_bytes_per_record']:,.0f} MB per million, the WAL's floor)"
        )
    if "takeover" in figures:
        t = figures["takeover"]
        flowing = ", ".join(f"{unit} {s:.1f} s" for unit, s in sorted(t["flowing_s"].items()))
        print(
            f"    SIGKILL of {t['victim']} (held {', '.join(t['moved'])}): every unit held again after "
            f"{t['held_s']:.1f} s; flowing again: {flowing}"
        )


async def main_async(args: argparse.Namespace) -> None:
    workload = Workload(
        backlog=args.backlog, arrival_rate=0, page_size=10_000, idle_wait=1.0, batch_records=5000
    )
    print(
        f"{os.cpu_count()} cores; {workload.tenants} tenants x {len(workload.streams)} subtypes x "
        f"{workload.backlog:,} records of backlog; lease_ttl {args.lease_ttl:g} s"
    )
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as folder:
        single = await measure(Path(folder) / "sqlite", None, 1, workload, args)
        report("1 node, SQLite", single, workload.tenants)
        async with postgres_database() as dsn:
            several = await measure(Path(folder) / "postgresql", dsn, args.nodes, workload, args)
        report(f"{args.nodes} nodes, PostgreSQL", several, workload.tenants)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backlog", type=int, default=400_000, help="records per subtype and tenant")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of flow before measuring")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured at most")
    parser.add_argument("--nodes", type=int, default=3, help="nodes on PostgreSQL")
    parser.add_argument("--lease-ttl", type=float, default=15.0, help="the cluster's lease_ttl (default 15)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
