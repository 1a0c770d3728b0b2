"""Fan-out benchmark (issue 13): one tenant's backlog pulled at the API ceiling by the real daemon and
fanned out to three routes — CEF → TCP syslog, JSON → an HTTP sink, LEEF → TCP syslog.

Run: ``python bench/bench_fanout.py [--per-subtype N] [--twin] [--only ROUTE] [--cpus C]`` (default 250,000
for each of 4 subtypes = 1M records). ``--twin`` adds a fourth route, the CEF route's twin to a third syslog
port: routes with the same output share the format workers' decisions, so it should cost little more than
its sending. ``--only json-http`` runs that route alone (repeat for several): what each costs by itself.
``--cpus 1.3`` holds the whole run to 1.3 cores' worth of CPU time (a cgroup CPU quota, as root): a machine
a third slower than this one, made on purpose and the same every time, where an unlucky hour cannot be
told from a slower commit. With ``--cpus-of daemon`` the quota holds the daemon and its workers alone: how
little CPU they keep up on, whatever the simulator (a stand-in for Netskope's servers) takes.

The tenant simulator runs in its own process in backlog mode (pages of 10,000, 4 requests/s per token);
the receivers run in a second process (a TCP server counting octet-counted syslog frames on two ports, an
aiohttp server counting the lines of each NDJSON body it is posted); ``ce-daemon run`` runs the
pipeline as a user would. Every route reads the same four streams from the start of the backlog.

Prints, per route: records delivered, sustained records/s (from its first to its last record) and that as
a share of the 40,000 records/s a tenant can deliver (target ≥ 90 % for every route), how far it fell
behind the pollers (records pulled less records delivered, sampled every 2 s: the backlog's records are
up to an hour old, so a route's ``lag_s`` says nothing here); the pull's own rate (the pollers' records,
sampled every 0.5 s: the simulator renders and gzips every page on the same two cores, and no route
keeps ahead of the pull for long); for the daemon: CPU seconds per million records pulled (routes included)
and peak RSS. Always exits 0: it is a report, not a gate.

Measured on this 2-core machine before any of issue 13's work (2026-12-04): 7,013 / 6,342 / 7,006
records/s (17.5 / 15.9 / 17.5 % of the ceiling), 156 CPU-s per million records, peak RSS 543 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml

RATE_LIMIT = 4
PAGE_SIZE = 10_000
CEILING = RATE_LIMIT * PAGE_SIZE
TARGET_SHARE = 0.90
SUBTYPES = "alerts/dlp,alerts/malware,events/page,events/network"
TOKEN_ENV = "BENCH_TENANT_TOKEN"
ROUTES = ["cef-syslog", "json-http", "leef-syslog"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# -- a slower machine, made on purpose ---------------------------------------------------------------------

_PERIOD_US = 100_000


def _cpu_group_root() -> tuple[Path, int] | None:
    """Where this process's CPU controller is mounted, and the cgroup version (1 or 2); None without one."""
    with open("/proc/self/cgroup", encoding="ascii") as groups:
        lines = [line.rstrip("\n").split(":", 2) for line in groups]
    for _, controllers, path in lines:
        group = Path("/sys/fs/cgroup/cpu") / path.lstrip("/")
        if "cpu" in controllers.split(",") and (group / "cpu.cfs_quota_us").exists():
            return group, 1
    for _, controllers, path in lines:
        group = Path("/sys/fs/cgroup") / path.lstrip("/")
        available = group / "cgroup.controllers"
        if controllers == "" and available.exists() and "cpu" in available.read_text("ascii").split():
            return group, 2
    return None


@contextlib.contextmanager
def cpu_quota(cpus: float) -> Iterator[Path]:
    """A new cgroup that holds the processes moved into it (:func:`hold`), and every process they start
    from then on, to ``cpus`` cores' worth of CPU time in all: a CFS quota of ``cpus`` x 100 ms per
    100 ms. Needs root. On the way out, what still runs in it goes back to the parent group, and the
    group is removed."""
    found = _cpu_group_root()
    if found is None:
        raise SystemExit("--cpus needs the cgroup cpu controller (cgroup v1 cpu, or v2 with cpu enabled)")
    parent, version = found
    group = parent / f"ce-daemon-bench-{os.getpid()}"
    quota = round(cpus * _PERIOD_US)
    try:
        group.mkdir()
        if version == 1:
            (group / "cpu.cfs_period_us").write_text(str(_PERIOD_US), encoding="ascii")
            (group / "cpu.cfs_quota_us").write_text(str(quota), encoding="ascii")
        else:
            (group / "cpu.max").write_text(f"{quota} {_PERIOD_US}", encoding="ascii")
    except OSError as exc:
        with contextlib.suppress(OSError):
            group.rmdir()
        raise SystemExit(f"--cpus: could not make the cgroup {group} ({exc}); it needs root") from exc
    try:
        yield group
    finally:
        # The run is over: whatever still lives in the group (this process; multiprocessing's resource
        # tracker, which lives as long as it does; a worker still ending) goes back to the parent group.
        for _ in range(50):
            for pid in (group / "cgroup.procs").read_text("ascii").split():
                with contextlib.suppress(OSError):  # it ended meanwhile
                    hold(parent, int(pid))
            try:
                group.rmdir()
                break
            except OSError:  # a process started meanwhile
                time.sleep(0.1)


def hold(group: Path, pid: int) -> None:
    """Move process ``pid`` into cgroup ``group`` (its children to come with it)."""
    (group / "cgroup.procs").write_text(str(pid), encoding="ascii")


# -- the receivers (a child process) ----------------------------------------------------------------------


class OctetCounter:
    """Counts the messages of an octet-counted syslog stream ("LEN SP MSG") where each chunk lies: a message
    that runs on into the next chunk is skipped there, and only a length cut in two is joined to what
    follows. (A buffer grown and cut by every chunk cost the receivers more CPU than some routes.)"""

    def __init__(self) -> None:
        self.head = b""  # the start of a length cut off at the end of the last chunk
        self.skip = 0  # bytes of the last message still to come

    def feed(self, chunk: bytes) -> int:
        """The messages that end in ``chunk``."""
        if self.head:
            chunk, self.head = self.head + chunk, b""
        frames, offset, size = 0, min(self.skip, len(chunk)), len(chunk)
        self.skip -= offset
        if offset and not self.skip:
            frames += 1
        while offset < size:
            space = chunk.find(b" ", offset, offset + 12)
            if space < 0:
                self.head = chunk[offset:]
                break
            end = space + 1 + int(chunk[offset:space])
            if end > size:
                self.skip = end - size
                break
            frames, offset = frames + 1, end
        return frames


def receivers(pipe: Connection) -> None:
    """Serve two syslog TCP ports and one HTTP endpoint; report counts and first/last arrival times."""
    asyncio.run(_receive(pipe))


async def _receive(pipe: Connection) -> None:
    from aiohttp import web

    counts: dict[str, list[float]] = {}  # name -> [records, first, last]

    def seen(name: str, n: int) -> None:
        now = time.time()
        entry = counts.setdefault(name, [0, now, now])
        entry[0] += n
        entry[2] = now

    def syslog(name: str) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            counter = OctetCounter()
            while chunk := await reader.read(1 << 20):
                if frames := counter.feed(chunk):
                    seen(name, frames)
            writer.close()

        return handle

    async def posted(request: web.Request) -> web.Response:
        lines, last = 0, b"\n"  # counted as the body streams in: no copy of it is made
        async for chunk in request.content.iter_any():
            lines, last = lines + chunk.count(b"\n"), chunk[-1:] or last
        seen("json-http", lines + (last != b"\n"))
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/ingest", posted)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    cef = await asyncio.start_server(syslog("cef-syslog"), "127.0.0.1", 0)
    leef = await asyncio.start_server(syslog("leef-syslog"), "127.0.0.1", 0)
    twin = await asyncio.start_server(syslog("cef-twin"), "127.0.0.1", 0)
    ports = {"http": runner.addresses[0][1], "cef": cef.sockets[0].getsockname()[1],
             "leef": leef.sockets[0].getsockname()[1], "twin": twin.sockets[0].getsockname()[1]}  # fmt: skip
    pipe.send(ports)
    loop = asyncio.get_running_loop()
    while True:
        asked = await loop.run_in_executor(None, pipe.recv)
        if asked == "stop":
            break
        pipe.send({k: list(v) for k, v in counts.items()})
    pipe.send({k: list(v) for k, v in counts.items()})


# -- the run ----------------------------------------------------------------------------------------------


def pipeline(
    workdir: Path, url: str, ports: dict[str, int], workers: str, names: list[str]
) -> dict[str, Any]:
    """The pipeline file of the run, with the routes ``names`` (of :data:`ROUTES` and ``cef-twin``)."""
    streams = {"alerts": ["dlp", "malware"], "events": ["page", "network"]}
    batch = {"max_records": 5000, "max_wait": "1s"}
    routes = [
        {"name": "cef-syslog", "tenant": "bench", **streams, "format": "cef", "batch": batch,
         "sink": {"type": "syslog", "host": "127.0.0.1", "port": ports["cef"], "protocol": "tcp"}},
        {"name": "json-http", "tenant": "bench", **streams, "format": "json", "batch": batch,
         "sink": {"type": "webhook", "url": f"http://127.0.0.1:{ports['http']}/ingest", "body": "ndjson"}},
        {"name": "leef-syslog", "tenant": "bench", **streams, "format": "leef", "batch": batch,
         "sink": {"type": "syslog", "host": "127.0.0.1", "port": ports["leef"], "protocol": "tcp"}},
        {"name": "cef-twin", "tenant": "bench", **streams, "format": "cef", "batch": batch,
         "sink": {"type": "syslog", "host": "127.0.0.1", "port": ports["twin"], "protocol": "tcp"}},
    ]  # fmt: skip
    return {
        "version": 1,
        "state": {"path": str(workdir / "state.db")},
        "health": {"interval": "1h", "syslog": {"enabled": False}},
        "spool": {"max_bytes": "4GiB"},
        "logging": {"level": "warning", "format": "json"},
        "tenants": [{"name": "bench", "url": url, "token": {"$env": TOKEN_ENV}, "rate_limit": RATE_LIMIT,
                     "start": "3h"}],
        "logs": {"workers": workers if workers == "auto" else int(workers),
                 "routes": [route for route in routes if route["name"] in names]},
    }  # fmt: skip


async def run(
    per_subtype: int, workdir: Path, workers: str, names: list[str], daemon_group: Path | None = None
) -> dict[str, Any]:
    """The benchmark with the routes ``names``; ``daemon_group``, a cgroup to hold the daemon (and so its
    workers) in."""
    from ce_daemon.control import ask_status
    from ce_daemon.simulator.process import simulator_process
    from ce_daemon.simulator.tenant import DEFAULT_TOKEN
    from ce_daemon.testing.processes import children_of

    total = per_subtype * len(SUBTYPES.split(","))
    parent, child = multiprocessing.Pipe()
    receiving = multiprocessing.get_context("spawn").Process(target=receivers, args=(child,), daemon=True)
    receiving.start()
    ports = parent.recv()
    options = {"backlog": per_subtype, "arrival_rate": 0, "idle_wait": 1.0, "page_size": PAGE_SIZE,
               "rate_limit": RATE_LIMIT, "subtypes": SUBTYPES, "backlog_span": 3600}  # fmt: skip
    async with simulator_process(options) as sim:
        config = workdir / "pipeline.yaml"
        config.write_text(yaml.safe_dump(pipeline(workdir, sim.url, ports, workers, names)), encoding="utf-8")
        env = {**os.environ, TOKEN_ENV: DEFAULT_TOKEN}
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ce_daemon", "run", "-c", str(config), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        if daemon_group is not None:  # before it has read its configuration, let alone started workers
            hold(daemon_group, daemon.pid)
        began = time.time()
        behind: dict[str, int] = {}
        pulled = 0
        counts: dict[str, list[float]] = {}
        helpers: dict[int, tuple[float, float]] = {}
        pulls: list[tuple[float, int]] = []  # (time, records pulled) from the first page to the last
        try:
            while True:
                for _ in range(4):  # the pull is sampled every 0.5 s, the routes every 2 s
                    await asyncio.sleep(0.5)
                    try:
                        status = await ask_status(workdir / "control.sock", timeout=5)
                    except (OSError, ValueError, TimeoutError):
                        status = {}
                    pollers = [c for c in status.get("components", []) if c.get("kind") == "poller"]
                    pulled = sum(int((c.get("counters") or {}).get("records", 0)) for c in pollers) or pulled
                    if pulled and (not pulls or pulls[-1][1] < total):
                        pulls.append((time.time(), pulled))
                parent.send("counts")
                counts = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
                delivered = {k: int(v[0]) for k, v in counts.items()}
                for name, got in delivered.items():  # how far each route is behind the pollers
                    behind[name] = max(behind.get(name, 0), pulled - got)
                shown = "  ".join(f"{k}={v:,}" for k, v in sorted(delivered.items()))
                print(f"  {time.time() - began:6.1f}s pulled {pulled:>9,} {shown}", flush=True)
                for pid in children_of(daemon.pid):  # read while they run: they end with the daemon
                    with contextlib.suppress(OSError):
                        helpers[pid] = (cpu_seconds(pid), peak_rss_mib(pid))
                if len(delivered) == len(names) and min(delivered.values()) >= total:
                    break
                if time.time() - began > 30 + 6 * total / CEILING:
                    print("  (stopped: taking more than six times the ceiling's time)", flush=True)
                    break
            cpu = cpu_seconds(daemon.pid)
            rss = peak_rss_mib(daemon.pid)
        finally:
            daemon.terminate()
            await daemon.wait()
            parent.send("stop")
            parent.recv()
            receiving.join(5)
    workers_cpu, workers_rss = sum(c for c, _ in helpers.values()), sum(r for _, r in helpers.values())
    (first_at, first), (last_at, last) = (pulls[0], pulls[-1]) if pulls else ((0.0, 0), (0.0, 0))
    pull_rate = (last - first) / (last_at - first_at) if last_at > first_at else 0.0
    return {"total": total, "counts": counts, "behind": behind, "cpu": cpu, "rss": rss, "pulled": pulled,
            "pull_rate": pull_rate,
            "workers_cpu": workers_cpu, "workers_rss": workers_rss, "workers": workers,
            "names": names}  # fmt: skip


def report(figures: dict[str, Any]) -> None:
    total = figures["total"]
    names = figures["names"]
    routes = f"{len(names)} route" + ("s" if len(names) != 1 else "")
    print(f"fan-out bench: {total:,} records (4 subtypes), {routes},"
          f" ceiling {CEILING:,} records/s per route")  # fmt: skip
    for name in names:
        got, first, last = figures["counts"].get(name, [0, 0.0, 0.0])
        rate = got / (last - first) if last > first else 0.0
        verdict = "met" if rate >= TARGET_SHARE * CEILING and got >= total else "not met"
        behind = figures["behind"].get(name, 0)
        print(
            f"  {name:<12} {int(got):>9,} records  {rate:>9,.0f} records/s = {rate / CEILING:6.1%} of the"
            f" ceiling (target >= {TARGET_SHARE:.0%}: {verdict}); at most {behind:,} records behind the pull"
        )
    pull = figures["pull_rate"]
    print(f"  the pull       {figures['pulled']:>9,} records  {pull:>9,.0f} records/s = {pull / CEILING:6.1%}"
          " of the ceiling (sampled every 0.5 s, so within about 2 %)")  # fmt: skip
    million = total / 1e6
    both = figures["cpu"] + figures["workers_cpu"]
    print(f"  daemon (logs.workers: {figures['workers']}): {both / million:.1f} CPU-s per million records"
          f" ({routes} and ingest): {figures['cpu'] / million:.1f} in its own process,"
          f" {figures['workers_cpu'] / million:.1f} in its workers;"
          f" peak RSS {figures['rss']:.0f} MiB + {figures['workers_rss']:.0f} MiB in workers")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--per-subtype", type=int, default=250_000)
    parser.add_argument("--workers", default="auto", help="logs.workers: auto, or a number (0: in-process)")
    parser.add_argument("--twin", action="store_true", help="a fourth route: the CEF route's twin")
    parser.add_argument(
        "--only", choices=ROUTES, action="append", help="run only this route (repeat for several)"
    )
    parser.add_argument(
        "--cpus",
        type=float,
        help="hold the whole run (simulator, receivers, daemon, workers) to this many cores' worth of CPU"
        " time, as a slower machine would (a cgroup CPU quota; needs root)",
    )
    parser.add_argument(
        "--cpus-of",
        choices=["all", "daemon"],
        default="all",
        help="what --cpus holds: the whole run (default), or the daemon and its workers alone (the"
        " simulator and receivers, stand-ins for systems elsewhere, then take what they need beside it)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, contextlib.ExitStack() as held:
        daemon_group = None
        if args.cpus is not None:
            if args.cpus <= 0:
                parser.error("--cpus must be more than 0")
            group = held.enter_context(cpu_quota(args.cpus))
            if args.cpus_of == "all":
                hold(group, os.getpid())
            else:
                daemon_group = group
            what = "the whole run" if args.cpus_of == "all" else "the daemon and its workers"
            print(f"{what} held to {args.cpus:g} cores' worth of CPU time (cgroup {group})", flush=True)
        names = (args.only or ROUTES) + (["cef-twin"] if args.twin else [])
        report(asyncio.run(run(args.per_subtype, Path(directory), args.workers, names, daemon_group)))


if __name__ == "__main__":
    main()
