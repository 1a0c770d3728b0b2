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
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from ce_misp.fake import DEFAULT_KEY, FakeMisp
from prometheus_client.parser import text_string_to_metric_families

from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_simulator, daemon_status, pipeline_config, run_cli
from ce_daemon.threats.normalise import normalise

TOKEN = "threats-daemon-token-0123456789"
ENV = {"SIM_TOKEN": TOKEN}


async def cycles_pass(
    config: Path, destinations: list[str], count: int, env: dict[str, str] | None = None
) -> None:
    """Wait until each of ``destinations`` looked at what to share ``count`` more times (status counters)."""

    async def cycles() -> dict[str, int]:
        status = await daemon_status(config, env=env or ENV)
        return {
            str(c["name"]).removeprefix("threat_destination:"): int(c.get("counters", {}).get("cycles", 0))
            for c in status["components"]
            if c["kind"] == "threat_destination"
        }

    start = await cycles()
    async with asyncio.timeout(60):
        while True:
            now = await cycles()
            if all(now.get(d, 0) >= start.get(d, 0) + count for d in destinations):
                return
            await asyncio.sleep(0.2)


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
    return quick_takeover(
        pipeline_config(tmp_path, url, [], rate_limit=20, threats=threats, logging=logging, logs={})
    )


def quick_takeover(config: dict[str, Any]) -> dict[str, Any]:
    """On PostgreSQL (a cluster of one), short leases: a node restarted after kill -9 is a new node,
    which waits for the dead one's leases to lapse before it takes their units over."""
    if "url" in config["state"]:
        config["cluster"] = {"lease_ttl": 3}
    return config


def expected(sim: TenantSimulator, backlog: int = BACKLOG) -> tuple[set[str], set[str]]:
    """The normalised URLs of every malsite alert and the sha256 of every Malware alert of the backlog."""
    urls: set[str] = set()
    hashes: set[str] = set()
    for subtype, into, field in (("malsite", urls, "url"), ("malware", hashes, "local_sha256")):
        for seq in range(backlog):
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
        settings = pipeline(tmp_path, sim.url)
        settings["http"] = {"listen": "127.0.0.1:0", "public": ["/metrics", "/readyz"]}
        config = write_pipeline(tmp_path / "pipeline.yaml", settings)
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
            await cycles_pass(
                config, ["urls"], 2
            )  # two more looks: nothing changed, nothing pushed, no deploy
            assert held(sim)[2] == deploys
            url = (await daemon.wait_for_event("http.listening"))["url"]
            iocs = ("ce_daemon_threat_iocs", (("source", "netskope"), ("status", "active"), ("type", "url")))
            metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            async with asyncio.timeout(30):
                while metrics.get(iocs) != len(urls):
                    await asyncio.sleep(0.5)
                    async with aiohttp.ClientSession() as session, session.get(f"{url}metrics") as answer:
                        metrics = {
                            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                            for family in text_string_to_metric_families(await answer.text())
                            for sample in family.samples
                        }
            assert metrics[("ce_daemon_threat_shared", (("destination", "urls"),))] == len(urls)
            assert metrics[("ce_daemon_threat_dropped", (("destination", "hashes"),))] == 0


@pytest.mark.timeout(180)
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
    """`ce-daemon demo`: the simulator's alerts and the local feed in; the URL list and the EDL out (and
    the other modules at work beside: tickets to the demo's inbox, users' risk scored)."""
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
    # every module is wired: tickets reached the demo's inbox, users were scored
    assert (tmp_path / "out" / "tickets.ndjson").read_text().count('"action":"create"') > 0
    assert re.search(r"tickets [1-9]\d* \| scored users [1-9]", progress[-2] + progress[-1]), progress[-2:]


async def test_two_way_sharing_between_the_tenant_and_misp_never_echoes(tmp_path: Path) -> None:
    """Netskope's Malware hashes go to MISP, MISP's URLs and domains to the tenant's URL list: each
    once, and what the daemon pushed to MISP is never read back from it, nor pushed back where it came
    from."""
    streams = (("alerts", "malware"),)
    misp = FakeMisp()
    misp.add_event("partner intel", [
        {"type": "url", "value": "http://misp-drop.biz/payload", "to_ids": True},
        {"type": "domain", "value": "misp-c2.biz", "to_ids": True},
    ], threat_level_id="1")  # fmt: skip
    async with misp, backlog_simulator(TOKEN, 40, streams, page_size=100) as sim:
        _, hashes = expected(sim, 40)
        config = pipeline(tmp_path, sim.url)
        threats = config["threats"]
        plugin = {"url": misp.url, "key": {"$env": "MISP_KEY"}}
        threats["sources"].append({"name": "misp", "interval": "1s", "plugin": {"type": "misp", **plugin}})
        threats["destinations"] = [
            threats["destinations"][0],
            {"name": "misp-out", "interval": "1s", "echo_of": "misp", "plugin": {"type": "misp", **plugin}},
        ]
        threats["sharing"] = [
            {"name": "misp-to-netskope", "to": "urls", "sources": ["misp"], "types": ["url", "domain"]},
            {"name": "netskope-to-misp", "to": "misp-out", "types": ["sha256", "md5", "url", "domain"]},
        ]
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        env = {**ENV, "MISP_KEY": DEFAULT_KEY}
        wanted_urls = {"http://misp-drop.biz/payload", "misp-c2.biz"}
        async with DaemonProcess(path, env=env) as daemon:
            await until(lambda: set(held(sim)[0]) == wanted_urls and hashes <= set(misp.values()))
            await daemon.wait_for_event("threat_source.polled", count=4)  # MISP read again after the push
            await cycles_pass(path, ["urls", "misp-out"], 2, env)
            settled = (list(misp.values()), held(sim))
            await cycles_pass(path, ["urls", "misp-out"], 2, env)
            assert (list(misp.values()), held(sim)) == settled  # nothing more pushed either way
            code, out = await run_cli("iocs", "stats", "-c", str(path), "--json", env=env)
        values = misp.values()
        assert len(values) == len(set(values))  # each once
        assert sorted(held(sim)[0]) == sorted(wanted_urls)
        ours = [e for e in misp.events.values() if "ce-daemon" in e.tags]
        assert len(ours) == 1  # one event for what the daemon shares
        shared_to_misp = set(misp.values(ours[0].id))
        assert not shared_to_misp & wanted_urls  # MISP's own word not echoed back to it
        assert hashes <= shared_to_misp
        assert code == 0, out
        rows = {(c["source"], c["type"]): c["rows"] for c in orjson.loads(out)["counts"] if c["active"]}
        assert rows[("misp", "url")] == 1 and rows[("misp", "domain")] == 1
        assert not any(source == "misp" and kind in ("sha256", "md5") for source, kind in rows)


def feed_pipeline(tmp_path: Path, edl_port: int) -> dict[str, Any]:
    """A local feed file into the store, everything out to a served EDL."""
    threats = {
        "sources": [{"name": "feed", "interval": "1s", "plugin": {"type": "feed", "path": "feed.txt"}}],
        "destinations": [
            {"name": "edl", "interval": "1s", "plugin": {"type": "edl", "port": edl_port, "path": "/edl.txt"}}
        ],
        "sharing": [{"name": "all", "to": "edl"}],
        "expire_every": "1h",
    }
    logging = {"level": "info", "format": "json"}
    config = pipeline_config(tmp_path, "http://127.0.0.1:9", [], threats=threats, logging=logging, logs={})
    config["tenants"] = []
    return quick_takeover(config)


async def edl_entries(port: int) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/edl.txt") as answer:
        if answer.status != 200:
            return []
        return (await answer.text()).split()


@pytest.mark.timeout(180)
async def test_kill_9_during_a_feed_ingest_converges(tmp_path: Path) -> None:
    """Kills land while a 60,000-line feed is being stored and shared; then the feed changes (10 %
    delisted, 3,000 new) and a kill lands mid-ingest again. In the end the store and the EDL hold
    exactly the last feed: nothing lost, nothing doubled, the delisted ones retracted."""
    rng = random.Random(4)
    first = [f"d{i}.evil-feed.biz" for i in range(60_000)]
    second = [v for i, v in enumerate(first) if i % 10] + [f"n{i}.evil-feed.biz" for i in range(3000)]
    (tmp_path / "feed.txt").write_text("\n".join(first) + "\n")
    port = free_port()
    config = write_pipeline(tmp_path / "pipeline.yaml", feed_pipeline(tmp_path, port))
    mid_ingest = 0
    for feed in (first, second):
        (tmp_path / "feed.txt").write_text("\n".join(feed) + "\n")
        for _ in range(2):
            daemon = DaemonProcess(config, env=ENV)
            await daemon.start()
            await asyncio.sleep(rng.uniform(0.8, 3.0))
            await daemon.kill()
            mid_ingest += not daemon.events("threat_source.polled")
        async with DaemonProcess(config, env=ENV):
            with contextlib.suppress(aiohttp.ClientError):
                await until_async(lambda feed=feed: _edl_is(port, feed), 90)
            served = await edl_entries(port)
        assert len(served) == len(set(served)) == len(feed)
        assert set(served) == set(feed)
    assert mid_ingest >= 2  # the kills did land before a poll was stored whole
    code, out = await run_cli("iocs", "stats", "-c", str(config), "--json", env=ENV)
    assert code == 0, out
    counts = {c["active"]: c["rows"] for c in orjson.loads(out)["counts"]}
    assert counts == {True: len(second), False: len(first) // 10}


async def _edl_is(port: int, feed: list[str]) -> bool:
    try:
        served = await edl_entries(port)
    except aiohttp.ClientError:
        return False
    return len(served) == len(feed) and set(served) == set(feed)


async def until_async(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - the daemon is another process: no event to wait on
            await asyncio.sleep(0.3)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
