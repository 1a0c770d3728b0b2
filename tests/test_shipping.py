"""Log shipping through the real daemon: CE mapping files, per-route offsets, batching, outages, counters."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from ce_webhook.fake import FakeWebhook

from ce_daemon.logs.formatter import RecordFormatter
from ce_daemon.logs.mapping import Mapping
from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import (
    backlog_ids,
    backlog_simulator,
    daemon_status,
    pipeline_config,
    route_counters,
    route_of,
)

TOKEN = "shipping-token-0123456789"
ENV = {"SIM_TOKEN": TOKEN}
CE_MAPPING = Path(__file__).parent / "data" / "ce_syslog_mappings.json"
RATE = 20  # requests per second, simulator and tenant alike: many small pages quickly
_EXTENSION_KEY = re.compile(rb"(?:^| )([A-Za-z0-9_.]+)=")


# -- helpers ----------------------------------------------------------------------------------------


def pipeline(tmp_path: Path, url: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    """A pipeline reading the simulator's backlog (``start: 2h``) into ``routes``."""
    logging = {"level": "info", "format": "json"}
    return pipeline_config(tmp_path, url, routes, rate_limit=RATE, logging=logging)


def lines_of(path: Path) -> list[bytes]:
    """The complete lines of a file the daemon writes (a line still being written is left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return data.split(b"\n")[:-1]


async def poll(check: Callable[[], bool], timeout: float = 40.0) -> None:
    """Wait until ``check()`` holds; only for what another process writes (files), which cannot notify us."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - a file another process writes offers no event to wait on
            await asyncio.sleep(0.05)


async def counters_when(
    config: Path, route: str, check: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> dict[str, Any]:
    """Ask ``status`` until the route's counters satisfy ``check`` (the daemon is another process)."""
    async with asyncio.timeout(timeout):
        while True:
            counters = await route_counters(config, route, env=ENV)
            if check(counters):
                return counters


class SwitchableWebhook(FakeWebhook):
    """A webhook receiver that answers every delivery with 503 while ``down`` (a target out for a while)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused = 0

    async def intercept(self, request: web.Request) -> web.Response | None:
        if not self.down:
            return await super().intercept(request)
        self.refused += 1
        await self.record(request, b"", 503)
        return web.Response(status=503, text='{"error": "maintenance"}', content_type="application/json")


def hook_route(name: str, url: str, **extra: Any) -> dict[str, Any]:
    """A CEF route on alerts/dlp to a webhook at ``url``."""
    return {
        "name": name,
        "tenant": "sim",
        "alerts": ["dlp"],
        "format": "cef",
        "sink": {"type": "webhook", "url": url + "/hook"},
        **extra,
    }


def simulator(backlog: int, page_size: int = 50) -> contextlib.AbstractAsyncContextManager[TenantSimulator]:
    """The tenant: ``backlog`` alerts/dlp records, nothing arriving later."""
    return backlog_simulator(TOKEN, backlog, page_size=page_size, rate_limit=RATE)


def extension_keys(line: bytes) -> set[bytes]:
    """The keys of a CEF line's extension (escaped ``\\=`` inside values are not keys)."""
    extension = re.split(rb"(?<!\\)\|", line, maxsplit=7)[7]
    return set(_EXTENSION_KEY.findall(extension))


# -- mapping files in CE's format ----------------------------------------------------------------


async def test_ce_mapping_file_produces_the_mapped_cef(tmp_path: Path) -> None:
    """A route with `mapping: <CE mapping file>` writes, for every record, the CEF that mapping defines."""
    backlog = 300
    shutil.copy(CE_MAPPING, tmp_path / "ce_mappings.json")
    async with simulator(backlog) as sim:
        assert sim.url is not None
        routes = [
            {
                "name": "mapped",
                "tenant": "sim",
                "alerts": ["dlp"],
                "format": "cef",
                "mapping": "ce_mappings.json",
                "sink": {"type": "file", "path": "out/mapped.cef"},
            },
            {
                "name": "raw",
                "tenant": "sim",
                "alerts": ["dlp"],
                "format": "json",
                "sink": {"type": "file", "path": "out/raw.ndjson"},
            },
        ]
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, routes))
        cef_path, raw_path = tmp_path / "out" / "mapped.cef", tmp_path / "out" / "raw.ndjson"
        async with DaemonProcess(config, env=ENV) as daemon:
            await poll(lambda: len(lines_of(cef_path)) >= backlog and len(lines_of(raw_path)) >= backlog)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

    cef_lines, raw_lines = lines_of(cef_path), lines_of(raw_path)
    records = [orjson.loads(line) for line in raw_lines]
    assert [r["_id"] for r in records] == backlog_ids(sim, "alerts", "dlp", backlog)
    assert len(cef_lines) == backlog
    mapping = Mapping.load(CE_MAPPING)
    reference = RecordFormatter("cef", mapping, "sim")
    mapped_keys = {
        b"suser", b"src", b"dst", b"act", b"requestClientApplication", b"dlpProfile", b"dlpRule",
        b"fsize", b"url", b"timestamp", b"cci", b"ccl",
    }  # fmt: skip
    # Both routes read the same single stream in spool order, so line i of each is the same record.
    for record, line in zip(records, cef_lines, strict=True):
        assert line.startswith(b"CEF:0|Netskope|sim|NULL|DLP|"), line
        keys = extension_keys(line)
        assert keys <= mapped_keys, keys - mapped_keys  # nothing the CE mapping does not name
        assert {b"suser", b"dlpProfile", b"dlpRule", b"fsize"} <= keys
        assert f"fsize={record['file_size']}".encode() in line
        assert f"suser={record['user']}".encode() in line
        assert line == reference.format(record, "alerts", "dlp")


@pytest.mark.parametrize("native", ["1", "0"], ids=["C extensions", "CE_DAEMON_NATIVE=0"])
async def test_with_or_without_the_c_extensions_every_line_is_the_reference_formatters(
    tmp_path: Path, native: str
) -> None:
    """The daemon as a user runs it, with the C page splitter and writer or without them (the Python
    paths, which it names in its log): every CEF and LEEF line is the reference formatter's on the record
    the raw JSON route shipped, every record once, in order."""
    backlog = 400
    streams = [("alerts", "dlp"), ("events", "page")]
    async with backlog_simulator(TOKEN, backlog, streams, page_size=100, rate_limit=RATE) as sim:
        assert sim.url is not None
        routes = [
            {"name": output, "tenant": "sim", "alerts": ["dlp"], "events": ["page"], "format": output,
             "sink": {"type": "file", "path": f"out/{output}.txt"}}
            for output in ("json", "cef", "leef")
        ]  # fmt: skip
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, routes))
        paths = {output: tmp_path / "out" / f"{output}.txt" for output in ("json", "cef", "leef")}
        async with DaemonProcess(config, env={**ENV, "CE_DAEMON_NATIVE": native}) as daemon:
            await poll(lambda: all(len(lines_of(path)) >= 2 * backlog for path in paths.values()))
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
        named = {
            event["event"]
            for event in daemon.events("poller.python_splitter") + daemon.events("route.python_writer")
        }
        assert named == (set() if native == "1" else {"poller.python_splitter", "route.python_writer"})
    records = [orjson.loads(line) for line in lines_of(paths["json"])]
    assert sorted(r["_id"] for r in records) == sorted(
        backlog_ids(sim, "alerts", "dlp", backlog) + backlog_ids(sim, "events", "page", backlog)
    )
    mapping = Mapping.builtin("netskope")
    for output in ("cef", "leef"):
        reference = RecordFormatter(output, mapping, "sim")  # type: ignore[arg-type]  # cef or leef
        kinds = {
            record["_id"]: ("alerts", "dlp") if record.get("alert_type") else ("events", "page")
            for record in records
        }
        expected = [reference.format(record, *kinds[record["_id"]]) for record in records]
        assert lines_of(paths[output]) == expected, output


# -- one route's trouble is its own -----------------------------------------------------------------


async def test_sink_down_across_many_retries_loses_nothing_and_others_keep_shipping(tmp_path: Path) -> None:
    """A sink down for many retry cycles gets every record once back; another route ships meanwhile."""
    backlog = 400
    flaky, steady = SwitchableWebhook(), FakeWebhook()
    flaky.down = True
    async with simulator(backlog) as sim, flaky as flaky_url, steady as steady_url:
        assert sim.url is not None
        routes = [
            hook_route("flaky", flaky_url, retry_max_delay="0.05s"),
            hook_route("steady", steady_url),
        ]
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, routes))
        async with DaemonProcess(config, env=ENV) as daemon:
            await steady.wait_until(lambda: len(steady.records) >= backlog)
            await flaky.wait_until(lambda: flaky.refused >= 40)
            during = await daemon_status(config, env=ENV)
            flaky.down = False
            await flaky.wait_until(lambda: len(flaky.records) >= backlog)
            after = await counters_when(config, "flaky", lambda c: c["sent"] >= backlog)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

    ids = backlog_ids(sim, "alerts", "dlp", backlog)
    assert [r["id"] for r in steady.records] == ids  # all of it, once, in order, while the other was down
    assert [r["id"] for r in flaky.records] == ids  # nothing lost, nothing twice
    # while down: the flaky route was degraded and held its own offset over the whole backlog
    flaky_during, steady_during = route_of(during, "flaky"), route_of(during, "steady")
    assert flaky_during["state"] == "degraded"
    assert flaky_during["counters"]["sent"] == 0
    assert flaky_during["counters"]["failed"] >= 40
    assert steady_during["counters"]["sent"] == backlog
    consumers = during["spool"]["consumers"]
    assert consumers["route:flaky"]["records"] == backlog
    assert consumers["route:steady"]["records"] == 0
    assert after["sent"] == backlog


async def test_stopping_while_the_sink_is_down_loses_nothing(tmp_path: Path) -> None:
    """Stopped while its sink refuses all, a route acknowledges nothing unsent; restarted, it sends all."""
    backlog = 100
    hook = SwitchableWebhook()
    hook.down = True
    async with simulator(backlog) as sim, hook as url:
        assert sim.url is not None
        # several batches per page: records after the failing batch must not be sent and acknowledged
        route = hook_route("hook", url, retry_max_delay="0.05s", batch={"max_records": 10, "max_wait": "5s"})
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, [route]))
        async with DaemonProcess(config, env=ENV) as daemon:
            await hook.wait_until(lambda: hook.refused >= 5)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
        hook.down = False
        async with DaemonProcess(config, env=ENV) as daemon:
            # a loss shows as a timeout here; the assertion below then says which records are missing
            with contextlib.suppress(TimeoutError):
                await hook.wait_until(lambda: len(hook.records) >= backlog, timeout=20)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

    assert [r["id"] for r in hook.records] == backlog_ids(sim, "alerts", "dlp", backlog)


async def test_a_slow_sink_does_not_delay_another_route(tmp_path: Path) -> None:
    """While one route's request hangs, another route on the subtype ships everything; then both are whole."""
    backlog = 200
    slow, steady = FakeWebhook(), FakeWebhook()
    slow.hold_next(1)
    async with simulator(backlog) as sim, slow as slow_url, steady as steady_url:
        assert sim.url is not None
        routes = [hook_route("slow", slow_url), hook_route("steady", steady_url)]
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, routes))
        async with DaemonProcess(config, env=ENV) as daemon:
            await slow.wait_until(lambda: slow.held == 1)
            await steady.wait_until(lambda: len(steady.records) >= backlog)
            assert slow.records == []  # still hanging on its first request
            slow.release_held()
            await slow.wait_until(lambda: len(slow.records) >= backlog)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

    ids = backlog_ids(sim, "alerts", "dlp", backlog)
    assert [r["id"] for r in steady.records] == ids
    assert [r["id"] for r in slow.records] == ids


# -- batching ----------------------------------------------------------------------------------------


async def test_batches_are_cut_by_record_count(tmp_path: Path) -> None:
    """With `batch.max_records: 7` every request carries 7 records."""
    backlog = 98  # 14 batches of 7; the long max_wait never cuts one short
    hook = FakeWebhook()
    async with simulator(backlog) as sim, hook as url:
        assert sim.url is not None
        route = hook_route("hook", url, batch={"max_records": 7, "max_bytes": "10MB", "max_wait": "30s"})
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, [route]))
        async with DaemonProcess(config, env=ENV) as daemon:
            await hook.wait_until(lambda: len(hook.records) >= backlog)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

    assert [len(batch) for batch in hook.batches] == [7] * 14
    assert [r["id"] for r in hook.records] == backlog_ids(sim, "alerts", "dlp", backlog)


async def test_batches_are_cut_by_bytes(tmp_path: Path) -> None:
    """With `batch.max_bytes: 3000` no request carries over 3000 bytes of lines, and each is nearly full."""
    backlog, limit = 100, 3000
    hook = FakeWebhook()
    async with simulator(backlog) as sim, hook as url:
        assert sim.url is not None
        route = hook_route("hook", url, batch={"max_records": 1000, "max_bytes": limit, "max_wait": "0.5s"})
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, [route]))
        async with DaemonProcess(config, env=ENV) as daemon:
            await hook.wait_until(lambda: len(hook.records) >= backlog)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

    assert [r["id"] for r in hook.records] == backlog_ids(sim, "alerts", "dlp", backlog)
    sizes = [[len(r["message"].encode()) + 1 for r in batch] for batch in hook.batches]
    assert all(sum(batch) <= limit for batch in sizes), [sum(b) for b in sizes]
    # every batch but the last was cut because its next record would not fit
    for batch, following in itertools.pairwise(sizes):
        assert sum(batch) + following[0] > limit


async def test_a_partial_batch_is_sent_after_max_wait(tmp_path: Path) -> None:
    """Three records, far below the count and byte limits, still leave after `batch.max_wait`."""
    hook = FakeWebhook()
    async with simulator(3) as sim, hook as url:
        assert sim.url is not None
        route = hook_route("hook", url, batch={"max_records": 1000, "max_bytes": "10MB", "max_wait": "0.3s"})
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, [route]))
        async with DaemonProcess(config, env=ENV) as daemon:
            await hook.wait_until(lambda: len(hook.records) >= 3)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

    assert [[r["id"] for r in batch] for batch in hook.batches] == [backlog_ids(sim, "alerts", "dlp", 3)]


# -- counters ---------------------------------------------------------------------------------------


async def test_status_shows_the_route_counters(tmp_path: Path) -> None:
    """`status --json` shows received, sent, failed, dead_lettered, bytes (= the file's size) and lag_s."""
    backlog = 250
    async with simulator(backlog) as sim:
        assert sim.url is not None
        route = {
            "name": "file",
            "tenant": "sim",
            "alerts": ["dlp"],
            "format": "cef",
            "sink": {"type": "file", "path": "out/alerts.cef"},
        }
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, [route]))
        output = tmp_path / "out" / "alerts.cef"
        async with DaemonProcess(config, env=ENV) as daemon:
            await daemon.wait_for_event("daemon.ready")
            counters = await counters_when(config, "file", lambda c: c["sent"] >= backlog)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0

    assert counters["received"] == backlog
    assert counters["sent"] == backlog
    assert counters["failed"] == 0
    assert counters["dead_lettered"] == 0
    assert counters["bytes"] == output.stat().st_size  # one line per record, newline included
    assert len(lines_of(output)) == backlog
    # The backlog spans the hour before the simulator started: measured from the newest record shipped
    # (not the oldest), the lag is far below that hour.
    assert isinstance(counters["lag_s"], int)
    assert 0 <= counters["lag_s"] < 1800
