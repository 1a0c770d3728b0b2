"""Threat exchange: a million-IOC feed into an empty SQLite store, 5 % changed, and a capped URL-list push.

Run: ``python bench/bench_threats.py [--count N]``.

The feed is a plain-text list (URLs, domains, IPv4 addresses, sha256 hashes, some defanged), read
through what every source goes through (:class:`~ce_daemon.threats.intake.Intake`: normalisation
and guards, with the memory of the last poll's values a full-list source's poller keeps) into
:meth:`IocStore.ingest` as a full list. The second poll lists the same feed with
5 % of its entries replaced: applied as a set difference (5 % written, 5 % deactivated).

Then what a Netskope URL-list destination's sharer does before its first push, from the million
active IOCs: read the merged view, select by a rule (URLs, domains and host names) under the list's caps
(300,000 entries, 7 MB as the tenant counts them), order by last seen, and diff against what the
list holds (nothing yet).

Targets (issue 9): first ingest ≥ 50,000 IOCs/s, the re-ingest in under a third of the first, the push
built in under 5 s, peak RSS of this process under 500 MB. Always exits 0: it is a report, not a gate.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ce_daemon.store.sqlite import SqliteStore
from ce_daemon.threats.guards import Guards
from ce_daemon.threats.intake import Intake, Remembered
from ce_daemon.threats.settings import Lifetime
from ce_daemon.threats.store import THREATS_MIGRATIONS, IocStore


def feed(count: int, changed_from: int | None = None) -> Iterator[str]:
    """``count`` lines of a mixed feed; entries with ``i % 20 == 0`` differ when ``changed_from`` is set."""
    for i in range(count):
        n = i + changed_from if changed_from is not None and i % 20 == 0 else i
        match n % 4:
            case 0:
                yield f"hxxp://host{n}.evil{n % 997}[.]biz/path/{n}"
            case 1:
                yield f"Host{n}.Bad{n % 991}.NET."
            case 2:
                yield f"{1 + n % 223}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            case _:
                yield f"{n:064X}"


async def poll(
    iocs: IocStore, memo: Remembered, count: int, now: float, changed_from: int | None = None
) -> tuple[float, str]:
    intake = Intake(Guards(), memo=memo)
    start = time.perf_counter()
    result = await iocs.ingest(
        "bench-feed",
        intake.lines(feed(count, changed_from), now),
        full_list=True,
        lifetime=Lifetime(),
        rejected=0,
        now=now,
    )
    memo.finish()  # as the source's poller does after a whole poll
    seconds = time.perf_counter() - start
    counts = (
        f"written {result.written:,}, unchanged {result.unchanged:,}, deactivated {result.deactivated:,},"
        f" refused {intake.rejected:,} {dict(intake.refused)}"
    )
    return seconds, counts


async def push_build(store: SqliteStore, iocs: IocStore) -> None:
    """Select and diff a capped URL-list push from every active IOC, as the sharer does."""
    from ce_netskope import NetskopeUrlListSink
    from ce_netskope.urllist import UrlListOptions

    from ce_daemon.plugin import PluginContext
    from ce_daemon.threats.policy import Policy
    from ce_daemon.threats.resolve import ResolvedRule
    from ce_daemon.threats.settings import SharingRule, Threats
    from ce_daemon.threats.share import ShareStore, plan_push, select

    sink = NetskopeUrlListSink(
        UrlListOptions(url="https://bench.goskope.com", token="not-used", list="bench"),
        PluginContext("bench", Path.cwd(), Path.cwd()),
    )
    rule = ResolvedRule(SharingRule(name="urls", to="bench", types=["url", "domain", "hostname"]), None, "")
    start = time.perf_counter()
    held = await ShareStore(store).held("bench")
    selection = await select(
        [rule], iocs, Policy(Threats()), takes=frozenset(sink.types), max_entries=sink.max_entries,
        max_bytes=sink.max_bytes, size=sink.entry_size, held=held,
    )  # fmt: skip
    plan = plan_push(selection, held)
    seconds = time.perf_counter() - start
    print(
        f"push build: {len(plan.add):,} to add"
        f" ({sum(selection.dropped.values()):,} dropped by the caps) in {seconds:.1f} s (target < 5)"
    )


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = await SqliteStore.open(Path(directory) / "state.db", THREATS_MIGRATIONS)
        async with store:
            iocs = IocStore(store)
            memo = Remembered()
            first, counts = await poll(iocs, memo, count, 1_700_000_000.0)
            print(
                f"first ingest: {count:,} IOCs in {first:.1f} s = {count / first:,.0f} IOCs/s"
                " (target ≥ 50,000)"
            )
            print(f"  {counts}; peak RSS so far {_rss():,.0f} MiB")
            second, counts = await poll(iocs, memo, count, 1_700_003_600.0, changed_from=count * 10)
            print(
                f"re-ingest, 5 % changed: {second:.1f} s = {second / first:.2f} of the first (target < 0.33),"
                f" {count / second:,.0f} IOCs/s"
            )
            print(f"  {counts}; peak RSS so far {_rss():,.0f} MiB")
            await push_build(store, iocs)
    print(f"peak RSS: {_rss():,.0f} MiB (target < 500)")


def _rss() -> float:
    """This process's peak resident set so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args().count))
