"""The threat exchange on two nodes of one PostgreSQL state: each source's poll, each destination's push
and the ageing loop is a unit one node holds; a killed holder's units move to the other, which goes on.

A feed file in, a served EDL out. What is checked: every threat unit is held by exactly one node, only
the holder polls the feed, the store holds the feed once; after SIGKILL of the node holding the EDL's
unit, the survivor takes it over and serves the list (the feed's later changes included).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from ce_daemon.testing.cluster import Node
from ce_daemon.testing.harness import write_pipeline

pytestmark = pytest.mark.slow

UNITS = {"threat_source:feed", "threat_destination:edl", "threats:ageing"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def leases(dsn: str) -> dict[str, str]:
    """Unit → the node holding it, as ``ce_leases`` says."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT unit, node FROM ce_leases")
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await connection.close()
    return {row["unit"]: row["node"] for row in rows}


async def served(port: int) -> set[str]:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/edl.txt") as answer,
        ):
            return set((await answer.text()).split()) if answer.status == 200 else set()
    except aiohttp.ClientError:
        return set()


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - the nodes are other processes: no event to wait on
                await asyncio.sleep(0.3)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


@pytest.mark.timeout(120)
async def test_threat_units_are_leased_and_taken_over(tmp_path: Path, postgres_url: str) -> None:
    port = free_port()
    feed = tmp_path / "feed.txt"
    feed.write_text("".join(f"d{i}.cluster-feed.biz\n" for i in range(500)))
    config: dict[str, Any] = {
        "version": 1,
        "state": {"url": postgres_url},
        "cluster": {"lease_ttl": 3},
        "logging": {"level": "info", "format": "json"},
        "health": {"interval": "1h", "syslog": {"enabled": False}},
        "shutdown_grace": "5s",
        "threats": {
            "sources": [{"name": "feed", "interval": "1s", "plugin": {"type": "feed", "path": str(feed)}}],
            "destinations": [
                {"name": "edl", "interval": "1s", "plugin": {"type": "edl", "port": port, "path": "/edl.txt"}}
            ],
            "sharing": [{"name": "all", "to": "edl"}],
        },
    }
    path = write_pipeline(tmp_path / "pipeline.yaml", config)
    nodes = {name: Node(name, path, tmp_path / name, {}) for name in ("n1", "n2")}
    try:
        for node in nodes.values():
            await node.start()

        async def held_once() -> bool:
            return set(await leases(postgres_url)) >= UNITS

        await until(held_once, 30, "every threat unit held")
        wanted = {f"d{i}.cluster-feed.biz" for i in range(500)}

        async def serving(values: set[str]) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return await served(port) == values

            return check

        await until(await serving(wanted), 30, "the EDL serves the feed")
        holders = await leases(postgres_url)
        poller = nodes[holders["threat_source:feed"]]
        idle = [n for n in nodes.values() if n is not poller]
        assert poller.events("threat_source.polled")
        assert all(not n.events("threat_source.polled") for n in idle)  # one node polls the source

        victim = nodes[holders["threat_destination:edl"]]
        survivor = next(n for n in nodes.values() if n is not victim)
        await victim.kill()
        feed.write_text("".join(f"d{i}.cluster-feed.biz\n" for i in range(400)))

        async def moved() -> bool:
            return set((await leases(postgres_url)).values()) == {survivor.name}

        await until(moved, 20, f"{victim.name}'s units taken over by {survivor.name}")
        changed = {f"d{i}.cluster-feed.biz" for i in range(400)}
        await until(await serving(changed), 30, "the survivor serves the changed feed")
    finally:
        for node in nodes.values():
            if node.running:
                await node.terminate(15)
