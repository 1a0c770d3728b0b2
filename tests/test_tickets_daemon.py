"""Tickets in the running daemon: the simulated tenant's DLP alerts → rules → the webhook destination's fake.

One rule folds the alerts by DLP profile (a one-day window: one ticket per profile); what reached the
receiver is read back from the fake, what the daemon recorded from ``ce-daemon tickets list --json``.
The crash tests kill -9 the daemon while a create is on its way (never applied) and after the
receiver applied it but before its answer came back: after a restart each group has one ticket.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from ce_jira.fake import EMAIL as JIRA_EMAIL
from ce_jira.fake import TOKEN as JIRA_TOKEN
from ce_jira.fake import FakeJira
from ce_ticket_webhook.fake import FakeTicketWebhook

from ce_daemon.simulator.tenant import TenantSimulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.pipelines import backlog_simulator, daemon_status, pipeline_config, run_cli

TOKEN = "tickets-daemon-token-0123456789"
ENV = {"SIM_TOKEN": TOKEN}
BACKLOG = 120
STREAMS = (("alerts", "dlp"),)


def pipeline(tmp_path: Path, sim_url: str, hook: FakeTicketWebhook, **queue: Any) -> dict[str, Any]:
    tickets = {
        "destinations": [{
            "name": "hook", "rate_limit": 50,
            "plugin": {"type": "webhook", "url": f"{hook.url}/tickets",
                       "find_url": f"{hook.url}/tickets/find", "timeout": "5s"},
        }],
        "rules": [{
            "name": "dlp", "tenant": "sim", "alerts": ["dlp"],
            "dedup": {"fields": ["dlp_profile"], "window": "1d"},
            "queues": [{"to": "hook", "title": "DLP ${dlp_profile} by ${user}",
                        "fields": {"owner": "${user}", "ticket": "${no_such_field}"}, **queue}],
        }],
    }  # fmt: skip
    config = pipeline_config(
        tmp_path, sim_url, [], rate_limit=20, tickets=tickets, logs={},
        logging={"level": "info", "format": "json"},
    )  # fmt: skip
    if "url" in config["state"]:
        config["cluster"] = {"lease_ttl": 3}  # a node restarted after kill -9 takes the units over soon
    return config


def groups(sim: TenantSimulator) -> dict[str, int]:
    """Alerts per DLP profile in the backlog."""
    found: dict[str, int] = {}
    for seq in range(BACKLOG):
        profile = str(sim.factory.make("alerts", "dlp", seq, 0)["dlp_profile"])
        found[profile] = found.get(profile, 0) + 1
    return found


async def listed(config: Path, *args: str) -> list[dict[str, Any]]:
    code, out = await run_cli("tickets", "list", "-c", str(config), "--json", *args, env=ENV)
    assert code == 0, out
    tickets: list[dict[str, Any]] = orjson.loads(out)["tickets"]
    return tickets


async def until_listed(config: Path, predicate: Any, timeout: float = 60.0) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout):
        while not predicate(found := await listed(config)):  # noqa: ASYNC110 - the daemon (a child) writes it
            await asyncio.sleep(0.3)
    return found


def settled(found: list[dict[str, Any]], expected: int) -> bool:
    """Every group's ticket sent, every alert counted."""
    sent = all(t["status"] == "notified" for t in found)
    return len(found) == expected and sent and sum(t["dedup_count"] for t in found) == BACKLOG


def titles(hook: FakeTicketWebhook) -> list[str]:
    return sorted(str(t.body["title"]).split(" by ")[0] for t in hook.tickets.values())


async def test_alerts_become_one_ticket_per_group_with_retry_after_honoured(tmp_path: Path) -> None:
    hook = FakeTicketWebhook()
    async with hook, backlog_simulator(TOKEN, BACKLOG, STREAMS, page_size=20) as sim:
        expected = groups(sim)
        hook.fail_next(1, 429, retry_after=1)
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, hook))
        async with DaemonProcess(config, env=ENV) as daemon:
            await hook.wait_until(lambda: len(hook.tickets) == len(expected), 60)
            retry = await daemon.wait_for_event("ticket.retry")
            assert retry["retry_in"] >= 1  # Retry-After is a floor
            found = await until_listed(
                config, lambda f: sum(t["dedup_count"] for t in f) == BACKLOG and all(
                    t["status"] == "notified" for t in f)
            )  # fmt: skip
            assert titles(hook) == sorted(f"DLP {p}" for p in expected)
            assert sorted(t["dedup_count"] for t in found) == sorted(expected.values())
            for ticket in found:  # the receiver saw each group's count, by its create or a later update
                received = hook.by_id(ticket["external_id"])
                assert received is not None and ticket["url"].endswith(ticket["external_id"])
                counts = [received.body["count"]] + [u["count"] for u in received.updates]
                await hook.wait_until(lambda r=received, t=ticket: max(
                    [r.body["count"]] + [u["count"] for u in r.updates]) == t["dedup_count"], 30)  # fmt: skip
                assert received.body["fields"]["ticket"] == "<missing:no_such_field>" and counts
            assert hook.requests[0].status == 429 and hook.replays == 0
            code, out = await run_cli("tickets", "show", str(found[0]["id"]), "-c", str(config), env=ENV)
            assert code == 0 and "intent" in out, out
            code, out = await run_cli("tickets", "list", "-c", str(config), "--sort", "status", env=ENV)
            assert code == 0 and out.count("notified") == len(expected), out
            status = (await daemon_status(config, env=ENV))["jobs"]["tickets"]
            assert status["tickets"] == status["tickets_notified"] == len(expected)
            assert status["outbox_pending"] == status["outbox_failed"] == 0


async def test_a_refused_ticket_fails_until_retried_by_hand(tmp_path: Path) -> None:
    hook = FakeTicketWebhook()
    hook.refusing = True
    async with hook, backlog_simulator(TOKEN, BACKLOG, STREAMS, page_size=60) as sim:
        expected = groups(sim)
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, hook))
        async with DaemonProcess(config, env=ENV):
            failed = await until_listed(config, lambda f: len(f) == len(expected) and all(
                t["status"] == "failed" for t in f))  # fmt: skip
            assert "422" in failed[0]["last_error"] and not hook.tickets
            hook.refusing = False
            code, out = await run_cli("tickets", "retry", str(failed[0]["id"]), "-c", str(config), env=ENV)
            assert code == 0 and "sent again" in out, out
            await hook.wait_until(lambda: len(hook.tickets) == 1)
            code, out = await run_cli("tickets", "retry", str(failed[0]["id"]), "-c", str(config), env=ENV)
            assert code == 1  # nothing failed any more
            assert len(await listed(config, "--status", "failed")) == len(expected) - 1


async def test_approval_gates_the_create(tmp_path: Path) -> None:
    approval = FakeTicketWebhook()
    async with approval, backlog_simulator(TOKEN, BACKLOG, STREAMS, page_size=60) as sim:
        expected = groups(sim)
        config = write_pipeline(
            tmp_path / "approval.yaml", pipeline(tmp_path / "b", sim.url, approval, require_approval=True)
        )
        async with DaemonProcess(config, env=ENV):
            held = await until_listed(config, lambda f: len(f) == len(expected))
            assert {t["status"] for t in held} == {"pending_approval"} and not approval.tickets
            one, two = held[0], held[1]
            for action, ticket in (("approve", one), ("decline", two)):
                code, out = await run_cli(
                    "tickets", action, ticket["key"], "-c", str(config), "--json", env=ENV
                )
                assert code == 0, out
            await approval.wait_until(lambda: len(approval.tickets) == 1)
            [received] = approval.tickets.values()
            assert received.key == one["key"]
            by_key = {t["key"]: t for t in await until_listed(config, lambda f: any(
                t["status"] == "notified" for t in f))}  # fmt: skip
            assert by_key[two["key"]]["status"] == "declined"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("moment", ["before_the_destination_applied", "after_it_applied_before_the_answer"])
async def test_kill_9_around_a_create_leaves_one_ticket_per_group(tmp_path: Path, moment: str) -> None:
    hook = FakeTicketWebhook()
    async with hook, backlog_simulator(TOKEN, BACKLOG, STREAMS, page_size=20) as sim:
        expected = groups(sim)
        config = write_pipeline(tmp_path / "pipeline.yaml", pipeline(tmp_path, sim.url, hook))
        daemon = DaemonProcess(config, env=ENV)
        if moment == "before_the_destination_applied":
            hook.hold_next(1)
            await daemon.start()
            await hook.wait_until(lambda: hook.held == 1, 60)
            await daemon.kill()
            hook.fail_next(1, 503)  # the held request never reaches the receiver's logic
            hook.release_held()
        else:
            hook.hold_next_answer(1)
            await daemon.start()
            await hook.wait_until(lambda: hook.answers_held == 1, 60)
            await daemon.kill()
            hook.release_answers()
        applied = len(hook.tickets)
        assert applied == (0 if moment == "before_the_destination_applied" else 1)
        async with DaemonProcess(config, env=ENV) as again:
            await hook.wait_until(lambda: len(hook.tickets) == len(expected), 90)
            found = await until_listed(config, lambda f: settled(f, len(expected)), 90)
            if applied:
                await again.wait_for_event("ticket.adopted")  # looked up, not created again
        assert titles(hook) == sorted(f"DLP {p}" for p in expected)  # one ticket per group
        assert hook.replays == 0
        assert sorted(t["external_id"] for t in found) == sorted(t.id for t in hook.tickets.values())
        assert sum(t["dedup_count"] for t in found) == BACKLOG  # no alert counted twice


async def test_check_accepts_a_tickets_section_and_places_each_problem(tmp_path: Path) -> None:
    hook = FakeTicketWebhook()
    async with hook:
        good = pipeline(tmp_path, "http://127.0.0.1:9", hook)
        config = write_pipeline(tmp_path / "good.yaml", good)
        code, out = await run_cli("check", "-c", str(config), env=ENV)
        assert code == 0 and "1 ticket rule(s), 1 ticket destination(s)" in out, out
        bad = pipeline(tmp_path, "http://127.0.0.1:9", hook)
        rule = bad["tickets"]["rules"][0]
        rule.update(tenant="simm", alerts=["dlpp"], filter={"severity": {"$bogus": 1}})
        rule["queues"][0]["to"] = "hookk"
        bad["tickets"]["destinations"][0]["plugin"]["type"] = "no_such_plugin"
        config = write_pipeline(tmp_path / "bad.yaml", bad)
        code, out = await run_cli("check", "-c", str(config), env=ENV)
        assert code != 0, out
        for place in ("tickets.rules[0].tenant", "tickets.rules[0].alerts[0]", "tickets.rules[0].filter",
                      "tickets.rules[0].queues[0].to", "tickets.destinations[0].plugin.type"):  # fmt: skip
            assert place in out, (place, out)


async def test_jira_tickets_sync_their_status_and_write_it_back_to_the_incident(tmp_path: Path) -> None:
    """Incident events → Jira issues (the vendor's fake), one per severity: repeats join their issue; an
    issue moved to Done is synced as closed and the change written to the Netskope incident."""
    jira = FakeJira()
    async with jira, backlog_simulator(TOKEN, 12, (("events", "incident"),), page_size=20) as sim:
        incidents = [sim.factory.make("events", "incident", seq, 0) for seq in range(12)]
        tickets = {
            "destinations": [{
                "name": "jira", "rate_limit": 50, "sync_every": "1s",
                "plugin": {"type": "jira", "url": jira.url, "email": JIRA_EMAIL,
                           "api_token": {"$env": "JIRA_TOKEN"}, "project": "SEC"},
            }],
            "rules": [{
                "name": "incidents", "tenant": "sim", "events": ["incident"], "write_back": True,
                "dedup": {"fields": ["severity"], "window": "1d"},
                "queues": [{"to": "jira", "title": "Netskope incident ${object_id}"}],
            }],
        }  # fmt: skip
        config = pipeline_config(tmp_path, sim.url, [], rate_limit=20, tickets=tickets, logs={},
                                 logging={"level": "info", "format": "json"})  # fmt: skip
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        groups = {str(record["severity"]) for record in incidents}
        env = {**ENV, "JIRA_TOKEN": JIRA_TOKEN}
        async with DaemonProcess(path, env=env):
            await jira.wait_until(lambda: len(jira.issues) == len(groups), 60)
            issue = next(iter(jira.issues.values()))
            jira.set_status(issue.key, "Done")
            _, out = await run_cli("tickets", "list", "-c", str(path), "--json", env=env)
            async with asyncio.timeout(30):
                while '"closed"' not in out:
                    await asyncio.sleep(0.3)
                    _, out = await run_cli("tickets", "list", "-c", str(path), "--json", env=env)
            found = orjson.loads(out)["tickets"]
            [closed] = [t for t in found if t["status"] == "closed"]
            assert closed["external_id"] == issue.key and closed["url"].endswith(f"/browse/{issue.key}")
            async with asyncio.timeout(30):
                while not sim.incidents.report()["updates"]:  # noqa: ASYNC110 - written by the daemon
                    await asyncio.sleep(0.3)
        written = {u["object_id"] for u in sim.incidents.report()["updates"]}
        assert written <= {str(r["object_id"]) for r in incidents} and written
        assert len(jira.issues) == len(groups)  # a repeat joined its issue, never opened a second one
        assert {t["external_id"] for t in found} == set(jira.issues)
