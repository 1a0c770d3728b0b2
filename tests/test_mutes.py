"""Mutes added while the daemon runs: stored on either backend (added, listed, expired; a wrong filter
or window refused), and in the running demo a mute added through the API stops a route's shipping
within its refresh, counted as muted, until it is expired."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ce_daemon.logs.mutes import MUTE_MIGRATIONS, MuteError, MuteStore
from ce_daemon.testing.demo import DemoProcess
from ce_daemon.testing.pipelines import run_cli
from ce_daemon.testing.state import open_test_store


async def test_mutes_are_stored_listed_and_expired(tmp_path: Path) -> None:
    async with await open_test_store(tmp_path / "state.db", MUTE_MIGRATIONS) as store:
        mutes = MuteStore(store)
        every = await mutes.add("alerts-cef", seconds=600, reason="maintenance", by="ops")
        only = await mutes.add("alerts-cef", seconds=600, spec={"alert_type": "Malware"}, name="noisy")
        later = await mutes.add("other", seconds=60, start=time.time() + 3600)
        assert [m.id for m in await mutes.listed("alerts-cef", active_only=True)] == [only.id, every.id]
        assert [m.id for m in await mutes.listed(active_only=True)] == [only.id, every.id]
        assert later.as_dict()["active"] is False and (await mutes.listed("other"))[0].id == later.id
        compiled = {m.name: m for m in await mutes.upcoming("alerts-cef")}
        assert compiled["mute"].predicate is None
        assert compiled["noisy"].predicate is not None
        assert compiled["noisy"].predicate({"alert_type": "Malware"})
        assert not compiled["noisy"].predicate({"alert_type": "DLP"})
        expired = await mutes.expire(every.id, by="alice")
        assert expired is not None and expired.expired_by == "alice" and not expired.active(time.time())
        assert [m.name for m in await mutes.upcoming("alerts-cef")] == ["noisy"]
        assert await mutes.expire(999) is None
        for kwargs, words in (
            ({"seconds": 0}, "more than 0"),
            ({"seconds": 10**9}, "at most 90 days"),
            ({"seconds": 10, "start": time.time() - 100}, "already be over"),
            ({"seconds": 10, "spec": {"x": {"$nope": 1}}}, "the filter is wrong"),
        ):
            with pytest.raises(MuteError, match=words):
                await mutes.add("alerts-cef", **kwargs)


async def counters(session: aiohttp.ClientSession, base: str, route: str) -> dict[str, Any]:
    async with session.get(f"{base}/logs/routes") as answer:
        routes = (await answer.json())["routes"]
    return next((dict(r["counters"]) for r in routes if r["name"] == route), {})


async def until(check: Any, timeout: float = 90.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.5)


@pytest.mark.timeout(300)
async def test_a_mute_added_through_the_api_stops_a_route_until_expired(demo: DemoProcess) -> None:
    base = demo.url + "api/v1"
    route = "events-json"
    async with aiohttp.ClientSession(headers=demo.headers) as session:
        await until(lambda: _sent(session, base, route, 1))
        async with session.post(f"{base}/logs/mutes", params={"route": route, "minutes": "0"}) as answer:
            assert answer.status == 400 and "'minutes' must be at least" in (await answer.json())["error"]
        async with session.post(
            f"{base}/logs/mutes", params={"route": route, "minutes": "5", "filter": "{"}
        ) as a:
            assert a.status == 400 and "not JSON" in (await a.json())["error"]
        params = {"route": route, "minutes": "30", "reason": "test", "name": "all-events"}
        async with session.post(f"{base}/logs/mutes", params=params) as answer:
            assert answer.status == 200, await answer.text()
            mute = (await answer.json())["mute"]
        assert mute["active"] and mute["created_by"].startswith("token:demo-") and mute["route"] == route
        # once the route has muted a page, whatever it sends is at most the batch it had open
        first = await until(lambda: _muted(session, base, route, 1))
        shown = await until(lambda: _muted(session, base, route, first["muted"] + 500))
        assert shown["sent"] - first["sent"] <= 5000, (first, shown)  # the route's max batch records
        # the dry run applies the mutes added while running, as the route does
        sample = demo.directory / "sample.ndjson"
        with (demo.directory / "out" / "events.ndjson").open("rb") as shipped:
            sample.write_bytes(b"".join(shipped.readline() for _ in range(5)))
        config = str(demo.directory / "pipeline.yaml")
        code, out = await run_cli(
            "test", "-c", config, "--route", route, "--input", str(sample), "--json", env={}
        )
        assert code == 0, out
        summary = json.loads(next(line for line in out.splitlines() if line.startswith('{"summary"')))[
            "summary"
        ]
        assert summary["records"] == 5 and summary["muted"] == 5, summary
        async with session.post(f"{base}/logs/mutes/{mute['id']}/expire") as answer:
            assert answer.status == 200 and not (await answer.json())["mute"]["active"]
        after = await counters(session, base, route)
        await until(lambda: _sent(session, base, route, after["sent"] + 100))
        async with session.get(f"{base}/logs/mutes", params={"route": route}) as answer:
            listed = (await answer.json())["mutes"]
        assert [m["id"] for m in listed] == [mute["id"]] and listed[0]["expired_by"].startswith("token:demo-")
        async with session.post(f"{base}/logs/mutes/999999/expire") as answer:
            assert answer.status == 404
    # every write is in the audit log, with who made it
    code, out = await run_cli("audit", "--json", "-c", str(demo.directory / "pipeline.yaml"), env={})
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    writes = [r for r in rows if r["action"] == "token.write"]
    details = " ".join(r["detail"] for r in writes)
    assert f"/api/v1/logs/mutes/{mute['id']}/expire" in details and "POST /api/v1/logs/mutes?" in details


async def _sent(
    session: aiohttp.ClientSession, base: str, route: str, at_least: int
) -> dict[str, Any] | None:
    found = await counters(session, base, route)
    return found if found.get("sent", 0) >= at_least else None


async def _muted(
    session: aiohttp.ClientSession, base: str, route: str, at_least: int
) -> dict[str, Any] | None:
    found = await counters(session, base, route)
    return found if found.get("muted", 0) >= at_least else None
