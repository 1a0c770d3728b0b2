"""The threat exchange in the running daemon: Netskope's alerts in, Netskope's lists out, kill -9 mid-push.

A tenant simulator with a backlog of Malware and malsite alerts; the daemon reads them from the spool
(the ``netskope`` source), stores their hashes and URLs, and shares the URLs to a URL list and the
hashes to a file-hash list of the same tenant. What the tenant holds is read back from the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_simulator, pipeline_config, run_cli
from ce_daemon.threats.normalise import normalise

TOKEN = "threats-daemon-token-0123456789"
ENV = {"SIM_TOKEN": TOKEN}
BACKLOG = 240


def pipeline(tmp_path: Path, url: str, *, batch: int = 10_000, interval: str = "1s") -> dict[str, Any]:
    """Netskope's malware/malsite alerts in; URLs to a URL list, hashes to a file-hash list."""
    plugin = {"url": url, "token": {"$env": "SIM_TOKEN"}}
    threats = {
        # the simulator's malsite hosts are under example.net (reserved for documentation)
        "guards": {"documentation_domains": False},
        "sources": [{"name": "netskope", "netskope": {"tenant": "sim"}}],
        "destinations": [
            {"name": "urls", "interval": interval,
             "plugin": {"type": "netskope_url_list", "list": "ce-malsites", "batch": batch, **plugin}},
            {"name": "hashes", "interval": interval,
             "plugin": {"type": "netskope_file_hash_list", "list": "ce-malware", **plugin}},
        ],
        "sharing": [
            {"name": "malsites", "to": "urls", "types": ["url"]},
            {"name": "malware", "to": "hashes", "types": ["sha256"]},
        ],
        "expire_every": "1h",
    }  # fmt: skip
    logging = {"level": "info", "format": "json"}
    return pipeline_config(tmp_path, url, [], rate_limit=20, threats=threats, logging=logging, logs={})


def expected(sim: TenantSimulator) -> tuple[set[str], set[str]]:
    """The normalised URLs of every malsite alert and the sha256 of every Malware alert of the backlog."""
    urls: set[str] = set()
    hashes: set[str] = set()
    for subtype, into, field in (("malsite", urls, "url"), ("malware", hashes, "local_sha256")):
        for seq in range(BACKLOG):
            record = sim.factory.make("alerts", subtype, seq, 0)
            result = normalise(record[field])
            assert not hasattr(result, "reason"), result
            into.add(result.value)  # type: ignore[union-attr]
    return urls, hashes


def held(sim: TenantSimulator) -> tuple[list[str], list[str], int]:
    """The URL list's deployed entries, the file-hash list, and how many deploys the tenant saw."""
    report = sim.policy.report()
    [url_list] = [u for u in report["url_lists"] if u["name"] == "ce-malsites"] or [{"deployed_urls": []}]
    return (
        list(url_list["deployed_urls"]),
        list(report["file_hash_lists"].get("ce-malware", [])),
        report["deploys"],
    )


async def until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - the tenant simulator changes as the daemon (a child) calls it
            await asyncio.sleep(0.1)


async def test_netskope_alerts_flow_to_the_tenants_lists_and_iocs_stats_shows_them(tmp_path: Path) -> None:
    streams = (("alerts", "malsite"), ("alerts", "malware"))
    async with backlog_simulator(TOKEN, BACKLOG, streams, page_size=100) as sim:
        urls, hashes = expected(sim)
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url))
        async with DaemonProcess(config, env=ENV) as daemon:
            await until(lambda: set(held(sim)[0]) == urls and set(held(sim)[1]) == hashes)
            deployed, file_hashes, deploys = held(sim)
            assert len(deployed) == len(urls) and len(file_hashes) == len(hashes)  # nothing doubled
            await daemon.wait_for_event("threat_destination.pushed", count=2)
            code, out = await run_cli("iocs", "stats", "-c", str(config), "--json", env=ENV)
            assert code == 0, out
            stats = orjson.loads(out)
            active = {(c["type"], c["source"]): c["rows"] for c in stats["counts"] if c["active"]}
            assert active[("url", "netskope")] == len(urls)
            assert active[("sha256", "netskope")] == len(hashes)
            listed = {d["destination"]: d["listed"] for d in stats["destinations"]}
            assert listed == {"urls": len(urls), "hashes": len(hashes)}
            some = next(iter(urls))
            code, out = await run_cli("iocs", "show", some, "-c", str(config), env=ENV)
            assert code == 0 and "shared with urls (rule malsites): shared" in out, out
            await asyncio.sleep(2.5)  # two more intervals: nothing changed, nothing pushed, no deploy
            assert held(sim)[2] == deploys


async def test_kill_9_during_url_list_pushes_converges_without_doubles(tmp_path: Path) -> None:
    """Appends of 7 entries at a time: kills land between the appends and the deploy of a push. After
    each restart the next push looks first: in the end the list holds each URL once, deployed."""
    streams = (("alerts", "malsite"),)
    rng = random.Random(9)
    async with backlog_simulator(TOKEN, BACKLOG, streams, page_size=60) as sim:
        urls, _ = expected(sim)
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, batch=7))
        starts = 0
        for _ in range(4):
            daemon = DaemonProcess(config, env=ENV)
            await daemon.start()
            starts += 1
            appended = _appends(sim)
            with contextlib.suppress(TimeoutError):
                await until(lambda appended=appended: _appends(sim) > appended + rng.randrange(1, 6), 30)
            await daemon.kill()
        async with DaemonProcess(config, env=ENV):
            starts += 1
            await until(lambda: set(held(sim)[0]) == urls)
            deployed, _, deploys = held(sim)
        assert sorted(deployed) == sorted(urls)  # each once
        [url_list] = [u for u in sim.policy.report()["url_lists"] if u["name"] == "ce-malsites"]
        assert len(url_list["pending_urls"]) == len(set(url_list["pending_urls"]))
        assert len([u for u in sim.policy.report()["url_lists"] if u["name"] == "ce-malsites"]) == 1
        assert deploys <= starts + 4  # one per push that changed something, not one per append


def _appends(sim: TenantSimulator) -> int:
    """How many URL-list requests the simulator answered so far (lookups, appends, deploys)."""
    return int(sim.stats().requests.get("policy/urllist", 0))


async def test_the_demo_shows_iocs_flowing_in_and_out(tmp_path: Path) -> None:
    """`ce-daemon demo`: the simulator's alerts and the local feed in; the URL list and the EDL out."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ce_daemon", "demo", "--dir", str(tmp_path), "--duration", "18",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    text = out.decode()
    assert process.returncode == 0, text[-3000:]
    progress = [line for line in text.splitlines() if line.startswith("[demo] gen ")]
    shared = dict(re.findall(r"(edl|netskope-urls)=(\d+)", progress[-1]))
    assert int(shared["edl"]) > 0 and int(shared["netskope-urls"]) > 0, progress[-1]
    code, stats = await run_cli("iocs", "stats", "-c", str(tmp_path / "pipeline.yaml"), "--json", env={})
    assert code == 0, stats
    data = orjson.loads(stats)
    assert {c["source"] for c in data["counts"]} == {"netskope", "local-feed"}
    assert {d["destination"]: d["listed"] for d in data["destinations"]} == {
        "edl": int(shared["edl"]),
        "netskope-urls": int(shared["netskope-urls"]),
    }
    feed = {s["source"]: s for s in data["sources"]}["local-feed"]
    assert feed["rejected"] == 2  # a line that is no value, and a private address
