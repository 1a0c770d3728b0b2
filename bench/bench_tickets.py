"""Ticket orchestration: 100,000 alerts through 20 rules with mute and dedup into the outbox (SQLite).

Run: ``python bench/bench_tickets.py [--alerts N] [--rules N]``.

The alerts come as spool pages of 10,000 (JSON bytes, as the spool hands them over). Each rule is what
its consumer runs per page: parse the page, filter (by alert type), mute (an active window on every
other rule, matching low-severity alerts), dedup by user and policy within an hour against the rule's
open tickets, render the new tickets' templates, then one transaction per page with the tickets,
their ``create`` intents, the duplicates' counts and coalesced ``update`` intents, and the progress.
Every alert goes through all the rules, as every consumer reads its stream.

Target (issue 10): at least 10,000 alerts/s. Peak RSS of this process is printed too. Always exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ce_daemon.filter import compile_filter
from ce_daemon.keys import StreamKey
from ce_daemon.spool.codec import CODEC, encode
from ce_daemon.spool.store import Page
from ce_daemon.store.sqlite import SqliteStore
from ce_daemon.tickets.components import PageCache
from ce_daemon.tickets.flow import Counts, RuleEngine
from ce_daemon.tickets.resolve import ResolvedMute, ResolvedRule
from ce_daemon.tickets.settings import Rule
from ce_daemon.tickets.store import TICKETS_MIGRATIONS, PageCommit, TicketStore

PAGE = 10_000
TYPES = ("DLP", "Malware", "malsite", "Compromised Credential", "policy", "uba")
SEVERITIES = ("low", "medium", "high", "critical")


def pages(count: int, now: float) -> list[bytes]:
    """``count`` alerts as stored spool pages' bodies (at most :data:`PAGE` records each)."""
    rng = random.Random(10)
    alerts: list[dict[str, Any]] = [
        {
            "_id": f"{i:024x}", "timestamp": now - 3000 + 3000 * i / count,
            "alert_type": TYPES[i % len(TYPES)],
            "alert_name": f"alert {i % 50}", "user": f"user{rng.randrange(300)}@example.com",
            "policy": f"policy {rng.randrange(15)}", "severity": SEVERITIES[rng.randrange(4)],
            "app": f"app{rng.randrange(40)}", "action": "block", "srcip": f"10.0.{i % 250}.{i % 200}",
            "url": f"https://site{i % 700}.example/path/{i}", "object_id": str(i),
        }
        for i in range(count)
    ]  # fmt: skip
    return [encode(alerts[i : i + PAGE]) for i in range(0, count, PAGE)]


def rules(count: int, now: float) -> list[ResolvedRule]:
    """``count`` rules: one alert type each, dedup by user and policy, an active mute on every other."""
    made: list[ResolvedRule] = []
    for i in range(count):
        kind = TYPES[i % len(TYPES)]
        config = Rule.model_validate({
            "name": f"rule{i}", "tenant": "t", "alerts": ["dlp"], "filter": {"alert_type": kind},
            "dedup": {"fields": ["user", "policy"], "window": "1h"},
            "queues": [{"to": "dest", "title": "$alert_type: $alert_name by ${user}",
                        "fields": {"source": "${srcip}", "link": "${url}"}}],
        })  # fmt: skip
        mutes = (
            (ResolvedMute("low", now - 3600, now + 3600, compile_filter({"severity": "low"}), "bench"),)
            if i % 2 == 0
            else ()
        )
        made.append(ResolvedRule(config, (StreamKey("t", "alerts", "dlp"),), compile_filter(config.filter),
                                 mutes, None, f"fp{i}"))  # fmt: skip
    return made


async def main(alert_count: int, rule_count: int) -> None:
    now = datetime.now(UTC).timestamp()
    spool = pages(alert_count, now)
    resolved = rules(rule_count, now)
    with tempfile.TemporaryDirectory() as directory:
        store = await SqliteStore.open(Path(directory) / "state.db", TICKETS_MIGRATIONS)
        async with store:
            tickets = TicketStore(store)
            total = Counts()
            spent = {"parse": 0.0, "decide": 0.0}
            cache = PageCache()

            async def consumer(rule: ResolvedRule) -> None:
                """One rule's consumer: each page parsed, decided and committed on its own."""
                engine = RuleEngine(rule)
                for seq, body in enumerate(spool, 1):
                    commit = PageCommit(rule.config.name)
                    t0 = time.perf_counter()
                    alerts = cache.records(Page(seq, "t/alerts/dlp", body, CODEC, PAGE, None, None))
                    t1 = time.perf_counter()
                    total.add(engine.decide(alerts, now, commit))
                    spent["parse"] += t1 - t0
                    spent["decide"] += time.perf_counter() - t1
                    commit.progress["t/alerts/dlp"] = seq
                    await tickets.commit(commit, now=now)

            began = time.perf_counter()
            async with asyncio.TaskGroup() as group:  # the consumers run side by side, as in the daemon
                for rule in resolved:
                    group.create_task(consumer(rule))
            seconds = time.perf_counter() - began
            outbox = await tickets.outbox()
            stored = await tickets.counts()
    rate = alert_count / seconds
    print(
        f"{alert_count:,} alerts through {rule_count} rules in {seconds:.2f} s = {rate:,.0f} alerts/s"
        f" (target ≥ 10,000); {alert_count * rule_count / seconds:,.0f} rule evaluations/s"
    )
    print(
        f"  filtered {total.filtered:,}, muted {total.muted:,}, tickets opened {total.opened:,},"
        f" duplicates folded {total.duplicates:,}"
    )
    rest = seconds - spent["parse"] - spent["decide"]
    print(
        f"  parsing pages (shared by the rules: {cache.hits} of {len(spool) * rule_count} reads hit)"
        f" {spent['parse']:.1f} s, deciding {spent['decide']:.1f} s,"
        f" the rest ({rest:.1f} s) waiting on SQLite commits"
    )
    waiting, opened = sum(n for *_, n in outbox), sum(n for *_, n in stored)
    print(f"  outbox: {waiting:,} intents waiting; tickets: {opened:,}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss:,.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=100_000)
    parser.add_argument("--rules", type=int, default=20)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.alerts, arguments.rules))
