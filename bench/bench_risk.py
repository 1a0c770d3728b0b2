"""Benchmark (issue 11): recompute combined scores and the daily snapshot for 100,000 users with 4
sources each, and evaluate 20 rules, in process on SQLite.

The records are stored first (not timed: that is what the sources' polls do); then one evaluator pass
is timed twice: the first pass (every entity new: combined scores written, history appended, every
entity evaluated against 20 rules: the daemon's first pass after a start) and a pass on the next day
after 10 % of one source's scores changed (the day's snapshot written, only changed entities
evaluated). Figures: seconds of each pass and the process's peak RSS. Target: the first pass under 5 s.

Run: ``python bench/bench_risk.py [--users N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from ce_daemon.filter import compile_filter
from ce_daemon.plugin import RiskRecord, RiskScale
from ce_daemon.risk.engine import Engine, RuleSpec, SourceWeight
from ce_daemon.risk.normalise import normalise_poll
from ce_daemon.risk.store import RISK_MIGRATIONS, RiskStore
from ce_daemon.store import open_url

SOURCES = ("zta", "knowbe4", "proofpoint", "okta")
TARGET = 5.0


def rules() -> list[RuleSpec]:
    """20 rules of the shapes people write: bands, thresholds on one source, combinations."""
    specs: list[object] = [{"band": band} for band in ("critical", "high", "medium", "low")]
    for source in SOURCES:
        specs += [
            {f"scores.{source}": {"$lt": 200}},
            {f"scores.{source}": {"$gte": 900}, "score": {"$lt": 500}},
        ]
    specs += [
        {"score": {"$lte": cut}, "department": {"$in": ["Finance", "Sales"]}} for cut in (100, 300, 600, 800)
    ]
    specs.append({"$or": [{"scores.zta": {"$lt": 150}}, {"scores.okta": {"$lt": 400}}]})
    specs.append({"$and": [{"band": {"$in": ["critical", "high"]}}, {"sources": "proofpoint"}]})
    specs.append({"key": {"$regex": "^user1"}, "score": {"$lt": 700}})
    specs.append({"scores.knowbe4": {"$exists": True}, "score": {"$gt": 990}})
    assert len(specs) == 20
    return [RuleSpec(f"rule{n}", "user", compile_filter(spec)) for n, spec in enumerate(specs)]


def poll(source: str, users: int, rng: random.Random, changed: float = 1.0) -> list[RiskRecord]:
    departments = ("Finance", "Sales", "Engineering", "Support")
    return [
        RiskRecord("user", f"user{n}@example.com", score=rng.uniform(0, 1000),
                   attributes={"department": departments[n % 4]})
        for n in range(users)
        if changed >= 1.0 or rng.random() < changed
    ]  # fmt: skip


async def main(users: int) -> int:
    rng = random.Random(11)
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_url(f"sqlite://{Path(tmp) / 'risk.sqlite'}", RISK_MIGRATIONS)
        async with store:
            risk = RiskStore(store)
            now = [1_700_000_000.0]
            for source in SOURCES:
                await risk.store_poll(
                    source, normalise_poll(RiskScale(), poll(source, users, rng)), now=now[0]
                )
            engine = Engine(
                risk, {s: SourceWeight(s, 1.0 + i) for i, s in enumerate(SOURCES)}, rules=rules(),
                clock=lambda: now[0],
            )  # fmt: skip
            started = time.perf_counter()
            first = await engine.run_pass()
            first_s = time.perf_counter() - started
            now[0] += 86_400.0
            await risk.store_poll(
                "zta", normalise_poll(RiskScale(), poll("zta", users, rng, 0.1)), now=now[0]
            )
            started = time.perf_counter()
            second = await engine.run_pass()
            second_s = time.perf_counter() - started
            daily = await risk.daily("2000-01-01")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"risk bench: {users} users x {len(SOURCES)} sources, 20 rules (SQLite)")
    print(f"  first pass: {first_s:.2f} s ({first.changed} entities written, {first.edges} rule edges)")
    print(
        f"  next-day pass: {second_s:.2f} s (snapshot {second.snapshot}: {daily[0][3] if daily else 0}"
        f" users averaging {daily[0][2] if daily else 0:.1f}; {second.changed} changed, {second.edges} edges)"
    )
    print(
        f"  peak RSS: {peak_mb:.0f} MiB; target first pass < {TARGET:.0f} s:"
        f" {'met' if first_s < TARGET else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    sys.exit(asyncio.run(main(parser.parse_args().users)))
