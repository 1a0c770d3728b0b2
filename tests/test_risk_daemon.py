"""The risk exchange in the running daemon: the tenant simulator's UBA alerts score users; a user whose
latest anomaly is severe falls into the critical band, the rule's action puts them on a watchlist (the
``risk_file`` action, or Netskope's SCIM group once that plugin is installed), and when a milder alert
lifts the score back, the action is reverted. Then ``ce-daemon risk`` shows it all."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from ce_ticket_webhook.fake import FakeTicketWebhook
from prometheus_client.parser import text_string_to_metric_families

from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_simulator, daemon_status, pipeline_config, run_cli

TOKEN = "risk-daemon-token-0123456789abcdef"
ENV = {"SIM_TOKEN": TOKEN}


def pipeline(
    tmp_path: Path, url: str, action: dict[str, Any], notify: dict[str, Any] | None = None
) -> dict[str, Any]:
    actions: list[dict[str, Any]] = [{"name": "watch", "plugin": action}]
    if notify is not None:
        actions.append({"name": "tell", "notify": notify})
    risk = {
        "sources": [{"name": "netskope", "netskope": {"tenant": "sim"}}],
        "evaluate_every": "0.5s",
        "actions": actions,
        "rules": [
            {"name": "critical-users", "entity": "user", "filter": {"band": "critical"},
             "actions": [a["name"] for a in actions]}
        ],
    }  # fmt: skip
    config = pipeline_config(tmp_path, url, [], rate_limit=20, risk=risk, logs={})
    config["http"] = {"listen": "127.0.0.1:0", "public": ["/metrics", "/readyz"]}
    config["logging"] = {"level": "info", "format": "json"}
    if "url" in config["state"]:
        config["cluster"] = {"lease_ttl": 3}
    return config


async def cli(config: Path, *args: str) -> Any:
    code, out = await run_cli("risk", *args, "-c", str(config), "--json", env=ENV)
    assert code == 0, out
    return orjson.loads(out.splitlines()[-1])


async def until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.5)


def applied_then_reverted(log: list[dict[str, Any]]) -> str | None:
    """A user whose action was applied and later reverted, both successfully."""
    applied: set[str] = set()
    for entry in sorted(log, key=lambda e: e["id"]):
        if entry["outcome"] == "success" and entry["kind"] == "apply":
            applied.add(entry["key"])
        elif entry["outcome"] == "success" and entry["kind"] == "revert" and entry["key"] in applied:
            return str(entry["key"])
    return None


async def run_flow(tmp_path: Path, action: dict[str, Any]) -> tuple[Path, list[dict[str, Any]]]:
    streams = (("alerts", "uba"),)
    async with backlog_simulator(TOKEN, 200, streams, arrival_rate=30, page_size=100) as sim:
        assert sim.url is not None
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, action))
        async with DaemonProcess(config, env=ENV) as daemon:
            await daemon.wait_for_event("risk.evaluated")

            async def reverted() -> str | None:
                return applied_then_reverted((await cli(config, "actions", "--limit", "5000"))["actions"])

            user = await until(reverted)
            listed = (await cli(config, "entities", "--limit", "1000"))["entities"]
            assert user in {e["key"] for e in listed} and len(listed) <= 64  # the simulator's user pool
            shown = await cli(config, "show", user)
            bands = {h["band"] for h in shown["history"]}
            assert "critical" in bands and bands - {"critical"}, shown["history"]
            assert [r["source"] for r in shown["records"]] == ["netskope"]
            critical = (await cli(config, "entities", "--band", "critical", "--limit", "1000"))["entities"]
            assert all(e["score"] <= 250 for e in critical)
            trend = await cli(config, "trend")
            assert trend["types"]["user"]["today"]["entities"] >= 1
            moved = await cli(config, "what-if", "--weight", "netskope=2")
            assert sum(v["now"] for v in moved["types"]["user"].values()) == pytest.approx(1.0)
            status = (await daemon_status(config, env=ENV))["jobs"]["risk"]
            assert 0 < sum(n for k, n in status.items() if k.startswith("users_")) <= 64
            url = (await daemon.wait_for_event("http.listening"))["url"]
            async with aiohttp.ClientSession() as session, session.get(f"{url}metrics") as answer:
                families = {f.name: f for f in text_string_to_metric_families(await answer.text())}
            assert 0 < sum(s.value for s in families["ce_daemon_risk_entities"].samples) <= 64
            outcomes = {s.labels["outcome"] for s in families["ce_daemon_risk_actions"].samples}
            assert "success" in outcomes
            daemon.signal(signal.SIGTERM)  # the pass ends first: no call left `running`, as a SIGKILL leaves
            assert await daemon.wait(60) == 0
        log = (await cli(config, "actions", "--limit", "100000"))["actions"]
    return config, log


async def test_uba_alerts_move_a_user_across_bands_and_the_watchlist_follows(tmp_path: Path) -> None:
    watchlist = tmp_path / "watchlist.json"
    config, log = await run_flow(tmp_path, {"type": "risk_file", "path": str(watchlist)})
    assert {e["outcome"] for e in log} <= {"success"}
    # the watchlist holds exactly the users whose last action was an apply
    last: dict[str, str] = {}
    for entry in sorted(log, key=lambda e: e["id"]):
        last[entry["key"]] = entry["kind"]
    held = {value["key"] for value in json.loads(watchlist.read_text()).values()}
    assert held == {key for key, kind in last.items() if kind == "apply"}
    # each edge acted once: applies and reverts alternate per user
    for key in last:
        kinds = [e["kind"] for e in sorted(log, key=lambda e: e["id"]) if e["key"] == key]
        assert all(a != b for a, b in itertools.pairwise(kinds)), (key, kinds)
    assert config.exists()


@pytest.mark.timeout(120)
async def test_uba_alerts_add_a_user_to_a_scim_group_and_remove_them(tmp_path: Path) -> None:
    """The issue's end-to-end flow with Netskope's own action: the simulator's UBA alerts move users into
    the critical band and out of it; the rule adds each to the tenant's SCIM group ``risky`` when their
    combined score enters the band and opens a notification (a ticket webhook, one of the ticket module's
    destinations), and when it recovers removes them and resolves the notification. In the end the group
    holds exactly the users whose last action was an apply, and each apply opened one ticket."""
    streams = (("alerts", "uba"),)
    receiver = FakeTicketWebhook()
    async with (
        receiver,
        backlog_simulator(TOKEN, 200, streams, arrival_rate=30, page_size=100) as sim,
    ):
        assert sim.url is not None
        for seq in range(2000):  # the tenant's directory knows every user its alerts name
            user = str(sim.factory.make("alerts", "uba", seq, 0)["user"])
            if sim.scim.user_named(user) is None:
                sim.scim.add_user(user)
        action = {"type": "netskope_scim_group", "url": sim.url, "token": {"$env": "SIM_TOKEN"},
                  "group": "risky", "create_missing": True}  # fmt: skip
        notify = {
            "type": "webhook",
            "url": f"{receiver.url}/tickets",
            "find_url": f"{receiver.url}/tickets/find",
        }
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, action, notify))
        async with DaemonProcess(config, env=ENV) as daemon:
            await daemon.wait_for_event("risk.evaluated")

            async def reverted() -> str | None:
                return applied_then_reverted((await cli(config, "actions", "--limit", "5000"))["actions"])

            user = await until(reverted)
        log = (await cli(config, "actions", "--limit", "100000"))["actions"]
    # a call in flight when the daemon stopped is logged `running` (the next start redoes it)
    assert {e["outcome"] for e in log} <= {"success", "running"}
    group = sim.scim.group_named("risky")
    assert group is not None
    members = {sim.scim.users[member].user_name for member in group.members}
    last: dict[str, tuple[str, str]] = {}
    for entry in sorted(log, key=lambda e: e["id"]):
        last[entry["key"]] = (entry["kind"], entry["outcome"])
    settled = {key for key, (_, outcome) in last.items() if outcome == "success"}
    assert user in settled
    assert members & settled == {key for key in settled if last[key][0] == "apply"}
    # one ticket per successful notification, about its user; resolved when that edge was reverted
    told = [e for e in log if e["action"] == "tell"]
    opened = {e["id"]: e for e in told if e["kind"] == "apply" and e["outcome"] == "success"}
    assert opened and len(receiver.tickets) >= len(opened)
    for entry in opened.values():
        ticket = receiver.tickets[entry["state"]["key"]]
        assert ticket.body["alert"]["key"] == entry["key"] and ticket.body["severity"] == "critical"
    assert receiver.replays == 0
    resolved = {t.key for t in receiver.tickets.values() if t.resolved}
    reverts = [e for e in told if e["kind"] == "revert" and e["outcome"] == "success"]
    assert reverts and len(resolved) == len(reverts)


@pytest.mark.timeout(180)
async def test_kill_9_mid_flow_leaves_one_action_per_edge(tmp_path: Path) -> None:
    """SIGKILL at random moments while users cross bands: after the last restart every edge produced
    exactly one entry (applies and reverts alternate per user, each a success) and the watchlist holds
    exactly the users whose last entry is an apply."""
    watchlist = tmp_path / "watchlist.json"
    rng = random.Random(11)
    streams = (("alerts", "uba"),)
    async with backlog_simulator(TOKEN, 200, streams, arrival_rate=30, page_size=50) as sim:
        assert sim.url is not None
        settings = pipeline(tmp_path, sim.url, {"type": "risk_file", "path": str(watchlist)})
        config = write_pipeline(tmp_path / "pipeline.yaml", settings)
        for _ in range(3):
            daemon = DaemonProcess(config, env=ENV)
            await daemon.start()
            await daemon.wait_for_event("risk.evaluated", timeout=60)
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            await daemon.kill()
        async with DaemonProcess(config, env=ENV) as daemon:
            await daemon.wait_for_event("risk.evaluated", timeout=60)
            await asyncio.sleep(2)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(60) == 0
        log = (await cli(config, "actions", "--limit", "100000"))["actions"]
    assert log and {e["outcome"] for e in log} == {"success"}
    last: dict[str, str] = {}
    for key in {e["key"] for e in log}:
        kinds = [e["kind"] for e in sorted(log, key=lambda e: e["id"]) if e["key"] == key]
        assert kinds[0] == "apply" and all(a != b for a, b in itertools.pairwise(kinds)), (key, kinds)
        last[key] = kinds[-1]
    held = {value["key"] for value in json.loads(watchlist.read_text()).values()}
    assert held == {key for key, kind in last.items() if kind == "apply"}


async def settled_entry(config: Path, entry_id: int) -> dict[str, Any] | None:
    """The action-log entry ``entry_id`` once it has an outcome other than ``running``."""
    log = (await cli(config, "actions", "--limit", "100000"))["actions"]
    found = [e for e in log if e["id"] == entry_id and e["outcome"] != "running"]
    return found[0] if found else None


@pytest.mark.timeout(240)
async def test_kill_9_with_a_notification_in_flight_opens_one_ticket(tmp_path: Path) -> None:
    """SIGKILL while a rule's notification is in flight: once after the destination opened the ticket
    (its answer never came back), once before the request reached it. After each restart the call is
    made again, looks first (``find``) and finds or opens the ticket: every notification entry stands
    for exactly one ticket, created once, and none is left running."""
    receiver = FakeTicketWebhook()
    streams = (("alerts", "uba"),)
    async with (
        receiver,
        backlog_simulator(TOKEN, 200, streams, arrival_rate=30, page_size=50) as sim,
    ):
        assert sim.url is not None
        notify = {
            "type": "webhook",
            "url": f"{receiver.url}/tickets",
            "find_url": f"{receiver.url}/tickets/find",
        }
        settings = pipeline(
            tmp_path, sim.url, {"type": "risk_file", "path": str(tmp_path / "w.json")}, notify
        )
        config = write_pipeline(tmp_path / "pipeline.yaml", settings)
        cut: list[int] = []
        for hold in (receiver.hold_next_answer, receiver.hold_next):  # after the target acted, then before
            holding = receiver.answers_held + receiver.held
            hold(1)
            daemon = DaemonProcess(config, env=ENV)
            await daemon.start()
            await receiver.wait_until(
                lambda held=holding: receiver.answers_held + receiver.held > held, timeout=90
            )
            await daemon.kill()
            running = [e for e in (await cli(config, "actions", "--limit", "100000"))["actions"]
                       if e["action"] == "tell" and e["outcome"] == "running"]  # fmt: skip
            assert len(running) == 1, running
            cut.append(running[0]["id"])
            receiver.release_answers()
            receiver.release_held()
            entry = running[0]["id"]

            async def settled(entry: int = entry) -> dict[str, Any] | None:
                return await settled_entry(config, entry)

            async with DaemonProcess(config, env=ENV):
                done = await until(settled, timeout=90)
            assert done["outcome"] == "success", done
        log = (await cli(config, "actions", "--limit", "100000"))["actions"]
    assert set(cut) <= {e["id"] for e in log if e["action"] == "tell" and e["outcome"] == "success"}
    told = [e for e in log if e["action"] == "tell" and e["kind"] == "apply" and e["outcome"] == "success"]
    for entry in told:
        key = entry["state"]["key"]
        assert receiver.keys.count(key) == 1, (key, receiver.keys.count(key))
        assert receiver.tickets[key].body["alert"]["key"] == entry["key"]
    assert receiver.replays == 0  # every retry found its ticket instead of sending it again
