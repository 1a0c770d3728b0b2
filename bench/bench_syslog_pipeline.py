"""Benchmark (issues 4 and 13): spool → log route → CEF (default mapping) → syslog sink → TCP receiver, end to
end, on one core: today's reference path against the fast path, in the same run.

A spool is filled with simulator records (pages of 10,000, in a child process so that the figures below
are the pipeline's alone), then three real ``RouteComponent``s with the ``syslog`` sink (RFC 5424, octet
counting, TCP) read it all, one after the other, and ship it to a minimal asyncio receiver on loopback
that counts octet-counted frames: ``reference`` with the reference formatter (the field loop,
``RecordFormatter(generated=False)``), ``python`` with the generated Python writers (``native=False``),
``fast`` with the C writer (``ce_daemon/logs/_native.c``). All decide in this process (``logs.workers:
0``): the receiver runs in another process pinned to another core; the pipeline process is pinned to one
core (the spool's decoding threads included).

Prints per path: records/s end to end, µs per record for mapping + CEF formatting, for syslog framing,
and for the whole of page → framed payload (decompress, parse, decide, format, frame; measured apart, in
the same process, after the runs); the fast path's speed-up (target >= 1.6x) and the pipeline process's
peak RSS. Targets: >= 50,000 records/s, page → framed payload <= 9 µs/record.
Run: ``python bench/bench_syslog_pipeline.py [--records N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import resource
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog
import yaml

TARGET_RATE = 50_000
SPEEDUP_TARGET = 1.6
PAGE_TO_FRAMED_TARGET = 9.0
PAGE = 10_000
TENANT = "bench"
STREAMS: tuple[tuple[str, str], ...] = (
    ("alerts", "dlp"),
    ("alerts", "malware"),
    ("events", "page"),
    ("events", "application"),
)
FIRST_TIMESTAMP = 1_714_557_600


def _quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _pin(cpu: int) -> int | None:
    """Pin this process to ``cpu`` when the machine has it; the cpu used, or None."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(available) < 2:
        return None
    chosen = available[cpu % len(available)]
    os.sched_setaffinity(0, {chosen})
    return chosen


# -- filling the spool (child process) -----------------------------------------------------------------


def _fill(db_path: str, total: int, reply: Connection) -> None:
    _quiet()
    reply.send(asyncio.run(_fill_async(Path(db_path), total)))


async def _fill_async(db_path: Path, total: int) -> tuple[int, float]:
    from ce_daemon.logs.deadletter import DEADLETTER_MIGRATIONS
    from ce_daemon.netskope.checkpoint import Checkpoints, IteratorMark
    from ce_daemon.simulator.records import RecordFactory
    from ce_daemon.spool import SPOOL_MIGRATIONS, Spool
    from ce_daemon.store.sqlite import SqliteStore

    factory = RecordFactory(seed=1, tenant=TENANT)
    per_stream = -(-total // len(STREAMS))
    started = time.perf_counter()
    written = 0
    async with await SqliteStore.open(db_path, (*SPOOL_MIGRATIONS, *DEADLETTER_MIGRATIONS)) as store:
        spool = Spool(store, max_bytes=64 * 1024**3)
        await spool.load()
        for start in range(0, per_stream, PAGE):
            for kind, subtype in STREAMS:
                count = min(PAGE, per_stream - start, total - written)
                if count <= 0:
                    continue
                seqs = range(start, start + count)
                stamps = [FIRST_TIMESTAMP + seq // 20 for seq in seqs]
                records = factory.make_many(kind, subtype, seqs, stamps)  # type: ignore[arg-type] # kinds above
                mark = IteratorMark(timestamp_hwm=stamps[-1])
                await spool.append(
                    f"{TENANT}/{kind}/{subtype}",
                    records,
                    commit=Checkpoints(spool.store).page_commit(f"{TENANT}/{kind}/{subtype}", records, mark),
                )
                written += count
    return written, time.perf_counter() - started


# -- the receiver (child process) ----------------------------------------------------------------------


def _receive(cpu: int, control: Connection) -> None:
    _pin(cpu)
    asyncio.run(_receive_async(control))


async def _receive_async(control: Connection) -> None:
    """Count octet-counted frames; ``control`` asks "tell me when N have arrived" until it sends None."""
    reached = asyncio.Event()
    idle = asyncio.Event()
    counts = {"frames": 0, "bytes": 0, "sessions": 0, "target": 0}
    first: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts["sessions"] += 1
        idle.clear()
        leftover = b""
        while chunk := await reader.read(1 << 20):
            data = leftover + chunk if leftover else chunk
            pos, size, frames = 0, len(data), 0
            while True:
                space = data.find(b" ", pos, pos + 12)
                if space < 0:
                    break
                end = space + 1 + int(data[pos:space])
                if end > size:
                    break
                if not first:
                    first.append(data[space + 1 : end])
                frames += 1
                pos = end
            counts["frames"] += frames
            counts["bytes"] += pos
            leftover = data[pos:]
            if counts["frames"] >= counts["target"]:
                reached.set()
        writer.close()
        counts["sessions"] -= 1
        if not counts["sessions"]:
            idle.set()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    control.send(server.sockets[0].getsockname()[1])
    while (target := await asyncio.to_thread(control.recv)) is not None:
        counts["target"] = target
        reached.clear()
        if counts["frames"] < target:
            await reached.wait()
        finished = time.perf_counter()  # CLOCK_MONOTONIC: comparable with the other process's
        control.send((counts["frames"], counts["bytes"], finished, first[0][:160] if first else b""))
    # The sender closes its connections when it is done; leave only after that.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(idle.wait(), 30)
    server.close()
    await server.wait_closed()


# -- the pipeline (this process) -----------------------------------------------------------------------


PATHS = ("reference", "python", "fast")
"""The three routes run one after the other on the same spool: today's reference formatter (the field
loop), the generated Python writers (the fast path without its C writer, as an install without a C
compiler runs), and the fast path (the C writer); all in this process (``logs.workers: 0``: one core)."""


async def _run_route(folder: Path, db_path: Path, port: int, path: str) -> float:
    """Run route ``path`` over the whole spool; returns the perf_counter time it started."""
    from ce_daemon.config.load import load_pipeline
    from ce_daemon.health import HealthRegistry
    from ce_daemon.logs.deadletter import DEADLETTER_MIGRATIONS
    from ce_daemon.logs.formatter import RecordFormatter
    from ce_daemon.logs.mutes import MUTE_MIGRATIONS
    from ce_daemon.metrics import Metrics
    from ce_daemon.pipeline import Runtime, plan_components
    from ce_daemon.registry import Registry
    from ce_daemon.spool import SPOOL_MIGRATIONS, Spool
    from ce_daemon.store.sqlite import SqliteStore

    route = {
        "tenant": TENANT,
        "alerts": [s for k, s in STREAMS if k == "alerts"],
        "events": [s for k, s in STREAMS if k == "events"],
        "format": "cef",
        # Batches fill by size here; a short max_wait only keeps the last, partial batch from
        # waiting the default second, which would count as pipeline time.
        "batch": {"max_wait": "100ms"},
        "sink": {"type": "syslog", "host": "127.0.0.1", "port": port, "protocol": "tcp"},
    }
    pipeline = {
        "version": 1,
        "state": {"path": str(db_path)},
        "health": {"syslog": {"enabled": False}},
        # The tenant is never polled here: the route reads what the child process spooled.
        "tenants": [{"name": TENANT, "url": "http://127.0.0.1:9", "token": {"$env": "BENCH_UNUSED_TOKEN"}}],
        "logs": {"workers": 0, "routes": [{"name": name, **route} for name in PATHS]},
    }
    config = folder / "pipeline.yaml"
    config.write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    os.environ.setdefault("BENCH_UNUSED_TOKEN", "never-sent-anywhere")
    loaded = load_pipeline(config, Registry.discover())
    store = await SqliteStore.open(db_path, (*SPOOL_MIGRATIONS, *DEADLETTER_MIGRATIONS, *MUTE_MIGRATIONS))
    spool = Spool(store, max_bytes=64 * 1024**3)
    await spool.load()
    runtime = Runtime(store=store, spool=spool, health=HealthRegistry(), data_dir=folder, metrics=Metrics())
    specs = plan_components(loaded, runtime)
    # Both consumers from the start: the pages stay until the second route has read them too.
    await spool.set_consumers(
        {specs[f"route:{name}"].name: specs[f"route:{name}"].consumes for name in PATHS}
    )  # type: ignore[misc]  # routes consume
    component = specs[f"route:{path}"].build()
    if path != "fast":
        formatter = component.formatter  # type: ignore[attr-defined]  # a RouteComponent
        component.formatter = RecordFormatter(  # type: ignore[attr-defined]
            "cef", formatter.mapping, formatter.tenant_name, generated=path == "python", native=False
        )
    await component.start()
    stopping = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(component.run(stopping))
    _RUNNING.update(task=task, stopping=stopping, route=component, store=store, runtime=runtime)
    return started


_RUNNING: dict[str, Any] = {}


async def _stop_route() -> dict[str, Any]:
    _RUNNING["stopping"].set()
    await _RUNNING["task"]
    route = _RUNNING["route"]
    counters = dict(route.status.counters)
    await route.close()
    await _RUNNING["runtime"].close()
    await _RUNNING["store"].close()
    return counters


async def _sink_alone(port: int, control: Connection, already: int, total: int) -> float:
    """Records/s of the syslog sink alone: pre-formatted batches of 1,000 to the same receiver."""
    from ce_syslog import SyslogSink, SyslogSinkOptions

    from ce_daemon.logs.formatter import RecordFormatter
    from ce_daemon.logs.mapping import Mapping
    from ce_daemon.plugin import OutRecord, PluginContext
    from ce_daemon.simulator.records import RecordFactory

    factory = RecordFactory(seed=2, tenant=TENANT)
    formatter = RecordFormatter("cef", Mapping.builtin("netskope"), TENANT)
    batch = []
    for kind, subtype in STREAMS:
        for record in factory.make_many(kind, subtype, range(250), [FIRST_TIMESTAMP] * 250):  # type: ignore[arg-type] # kinds above
            data = formatter.format(record, kind, subtype)
            batch.append(OutRecord(record["_id"], record["timestamp"], data, kind, subtype, "cef"))
    folder = Path(tempfile.gettempdir())
    sink = SyslogSink(SyslogSinkOptions(host="127.0.0.1", port=port), PluginContext("bench", folder, folder))
    await sink.open()
    await sink.health()
    rounds = total // len(batch)
    started = time.perf_counter()
    for _ in range(rounds):
        await sink.send(batch)
    control.send(already + rounds * len(batch))
    _, _, finished, _ = await asyncio.to_thread(control.recv)
    await sink.close()
    return float(rounds * len(batch) / (finished - started))


async def _measure_spool_read(folder: Path, samples: int) -> float:
    """µs per record for reading spooled pages back (SQLite read, LZ4, orjson), through the public API."""
    from ce_daemon.spool import SPOOL_MIGRATIONS, Spool
    from ce_daemon.store.sqlite import SqliteStore

    db_path = folder / "read.db"
    await _fill_async(db_path, samples)
    async with await SqliteStore.open(db_path, SPOOL_MIGRATIONS) as store:
        spool = Spool(store, max_bytes=64 * 1024**3)
        await spool.load()
        await spool.set_consumers({"reader": [f"{TENANT}/{kind}/{subtype}" for kind, subtype in STREAMS]})
        count, after = 0, None
        started = time.perf_counter()
        while (page := await spool.next_page("reader", timeout=0, after=after)) is not None:
            for _, records in page.frames():  # parsing is lazy, per frame: count it here
                count += len(records)
            after = page.seq
        return (time.perf_counter() - started) / max(count, 1) * 1e6


def _measure_formatting(samples: int) -> dict[str, tuple[float, float, float]]:
    """Per path, µs per record (best of 3) for: mapping + CEF formatting; RFC 5424 octet framing; and the
    whole of page -> framed payload (a stored page decompressed, parsed, decided and formatted by the
    route's own `decide_records`, then framed)."""
    from ce_syslog import SyslogSinkOptions

    from ce_daemon.logs.formatter import RecordFormatter
    from ce_daemon.logs.mapping import Mapping
    from ce_daemon.logs.route import decide_page
    from ce_daemon.simulator.records import RecordFactory
    from ce_daemon.spool import Page
    from ce_daemon.spool.codec import CODEC, encode

    factory = RecordFactory(seed=1, tenant=TENANT)
    per = samples // len(STREAMS)
    batches = [
        (kind, subtype, factory.make_many(kind, subtype, range(per), [FIRST_TIMESTAMP] * per))  # type: ignore[arg-type] # kinds above
        for kind, subtype in STREAMS
    ]
    pages = [(kind, subtype, encode(records)) for kind, subtype, records in batches]
    framer = SyslogSinkOptions(host="127.0.0.1").framer()
    count = per * len(STREAMS)
    figures = {}
    for path in PATHS:
        formatter = RecordFormatter(
            "cef", Mapping.builtin("netskope"), TENANT, generated=path != "reference", native=path == "fast"
        )
        format_best = frame_best = page_best = float("inf")
        for _ in range(3):
            lines: list[bytes] = []
            started = time.process_time()
            for kind, subtype, records in batches:
                fmt = formatter.format
                lines.extend(fmt(record, kind, subtype) for record in records)
            format_best = min(format_best, time.process_time() - started)
            frame = framer.frame
            started = time.process_time()
            for line in lines:
                frame(line, FIRST_TIMESTAMP)
            frame_best = min(frame_best, time.process_time() - started)
            started = time.process_time()
            for kind, subtype, body in pages:
                page = Page(0, f"{TENANT}/{kind}/{subtype}", body, CODEC, per, None, None)
                decided = decide_page(page, None, (), formatter.writer_for(kind, subtype))
                for data, stamp in zip(decided.data, decided.timestamps, strict=True):
                    frame(data, stamp)
            page_best = min(page_best, time.process_time() - started)
        figures[path] = (format_best / count * 1e6, frame_best / count * 1e6, page_best / count * 1e6)
    return figures


async def _main(total: int) -> int:
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-syslog-") as tmp:
        folder = Path(tmp)
        db_path = folder / "state.db"

        ours, theirs = spawn.Pipe()
        filler = spawn.Process(target=_fill, args=(str(db_path), total, theirs))
        filler.start()
        theirs.close()  # a child that dies then shows as EOFError here instead of a hang
        written, fill_seconds = await asyncio.to_thread(ours.recv)
        await asyncio.to_thread(filler.join)
        fill_rate = written / fill_seconds
        print(f"spool filled: {written:,} records in {fill_seconds:.1f} s ({fill_rate:,.0f} records/s)")

        pipeline_cpu = _pin(0)
        ours, theirs = spawn.Pipe()
        receiver = spawn.Process(target=_receive, args=(1, theirs))
        receiver.start()
        theirs.close()
        port = await asyncio.to_thread(ours.recv)

        runs: dict[str, tuple[float, dict[str, Any]]] = {}
        target = 0
        for path in PATHS:
            started = await _run_route(folder, db_path, port, path)
            target += written
            ours.send(target)
            frames, size, finished, sample = await asyncio.to_thread(ours.recv)
            runs[path] = (finished - started, await _stop_route())
        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        sink_rate = await _sink_alone(port, ours, frames, 200_000)
        ours.send(None)
        await asyncio.to_thread(receiver.join)
        read_us = await _measure_spool_read(folder, 100_000)

    measured = _measure_formatting(100_000)
    print(f"pipeline cpu: {pipeline_cpu if pipeline_cpu is not None else 'unpinned (one cpu only)'}")
    print(f"sample frame: {sample.decode('utf-8', 'replace')}…")
    print(f"received: {frames:,} frames, {size / 1e6:,.1f} MB ({size / max(frames, 1):,.0f} B/frame)")
    rates = {}
    for path in PATHS:
        elapsed, counters = runs[path]
        rates[path] = rate = written / elapsed
        sent, batches = counters.get("sent"), counters.get("batches")
        dead, retries = counters.get("dead_lettered", 0), counters.get("retries", 0)
        format_us, frame_us, page_us = measured[path]
        print(f"{path}: {elapsed:.2f} s, {rate:,.0f} records/s end to end (target >= {TARGET_RATE:,}: "
              f"{'OK' if rate >= TARGET_RATE else 'below'}); sent={sent} batches={batches} "
              f"dead_lettered={dead} retries={retries}")  # fmt: skip
        print(f"  mapping + CEF formatting {format_us:.2f} us/record, framing {frame_us:.2f}, "
              f"page -> framed payload {page_us:.2f} (target <= {PAGE_TO_FRAMED_TARGET:g})")  # fmt: skip
    speedup = rates["fast"] / rates["reference"]
    without_c = rates["python"] / rates["reference"]
    print(f"fast path against the reference, end to end on one core: {speedup:.2f}x "
          f"(target >= {SPEEDUP_TARGET:g}x); without its C writer: {without_c:.2f}x")  # fmt: skip
    verdict = "OK" if sink_rate >= TARGET_RATE else "BELOW TARGET"
    print(f"syslog sink alone (pre-formatted, batches of 1,000): {sink_rate:,.0f} records/s "
          f"(target >= {TARGET_RATE:,}): {verdict}")  # fmt: skip
    print(f"spool read + decode: {read_us:.2f} us/record")
    print(f"peak RSS of the pipeline process: {peak_rss_mib:,.0f} MiB")
    return 0 if frames >= written * len(PATHS) and rates["fast"] >= TARGET_RATE else 1


def main() -> int:
    """Parse the arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=1_000_000, help="records to spool and ship")
    args = parser.parse_args()
    _quiet()
    return asyncio.run(_main(args.records))


if __name__ == "__main__":
    raise SystemExit(main())
