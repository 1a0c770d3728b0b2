"""The IOC store: rows per source, the merged view, full lists as set differences, ageing (both backends)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ce_daemon.store import Store
from ce_daemon.testing.state import open_test_store
from ce_daemon.threats.model import Indicator, IocType, Severity, Sighting, Verdict
from ce_daemon.threats.settings import DAY, Lifetime
from ce_daemon.threats.store import THREATS_MIGRATIONS, IocStore

T0 = 1_700_000_000.0
LIFE = Lifetime()


@pytest.fixture
async def iocs(tmp_path: Path) -> AsyncIterator[IocStore]:
    store: Store = await open_test_store(tmp_path / "state.db", THREATS_MIGRATIONS)
    async with store:
        yield IocStore(store)


def seen(value: str, at: float = T0, kind: IocType = IocType.DOMAIN, **fields: object) -> Sighting:
    return Sighting(Indicator(kind, value), at, **fields)  # type: ignore[arg-type]


def domains(n: int, at: float = T0, prefix: str = "d") -> Iterator[Sighting]:
    return (seen(f"{prefix}{i}.evil.biz", at) for i in range(n))


async def test_one_row_per_source_and_a_merged_view(iocs: IocStore) -> None:
    """Two sources report one value: two rows; merged: first = min, last = max, sources = union, sum."""
    await iocs.ingest(
        "misp", [seen("evil.biz", T0 + 10), seen("evil.biz", T0 + 20)], full_list=False, lifetime=LIFE
    )
    await iocs.ingest("feed", [seen("evil.biz", T0 + 5)], full_list=False, lifetime=LIFE)
    [merged] = await iocs.merged("evil.biz")
    assert merged.sources == ("feed", "misp")
    assert (merged.first_seen, merged.last_seen, merged.sightings) == (T0 + 5, T0 + 20, 3)
    assert merged.active


async def test_a_later_sighting_updates_the_verdict_but_keeps_first_seen(iocs: IocStore) -> None:
    """The newest word of a source replaces its attributes; first_seen stays the earliest."""
    await iocs.ingest("misp", [seen("evil.biz", T0, severity=Severity.LOW)], full_list=False, lifetime=LIFE)
    await iocs.ingest(
        "misp",
        [seen("evil.biz", T0 + 60, severity=Severity.HIGH, verdict=Verdict.SAFE, tags=("b", "a", "a"))],
        full_list=False,
        lifetime=LIFE,
    )
    [merged] = await iocs.merged("evil.biz")
    [row] = merged.rows
    assert (row.first_seen, row.last_seen, row.severity, row.verdict) == (
        T0,
        T0 + 60,
        Severity.HIGH,
        Verdict.SAFE,
    )
    assert row.tags == ("a", "b")


async def test_a_full_list_is_applied_as_a_set_difference(iocs: IocStore) -> None:
    """Re-listing writes only what changed; what the list dropped becomes inactive after the poll."""
    first = await iocs.ingest("feed", domains(100), full_list=True, lifetime=LIFE, now=T0)
    assert (first.written, first.unchanged, first.deactivated) == (100, 0, 0)
    changed = [*domains(95, T0 + 60), *domains(5, T0 + 60, prefix="n")]
    second = await iocs.ingest("feed", changed, full_list=True, lifetime=LIFE, now=T0 + 60)
    assert (second.written, second.unchanged, second.deactivated) == (5, 95, 5)
    counts = {(active, n) for _, _, active, n in await iocs.counts()}
    assert counts == {(True, 100), (False, 5)}
    [kept] = await iocs.merged("d1.evil.biz")
    assert kept.last_seen == T0 + 60  # the source's last successful poll
    [dropped] = await iocs.merged("d99.evil.biz")
    assert not dropped.active


async def test_a_failed_poll_deactivates_nothing(iocs: IocStore) -> None:
    """Sudden death only after a successful poll: a feed that breaks midway keeps its old list active."""
    await iocs.ingest("feed", domains(10), full_list=True, lifetime=LIFE, now=T0)

    def broken() -> Iterator[Sighting]:
        yield seen("d0.evil.biz", T0 + 60)
        raise ConnectionResetError("feed closed mid-page")

    with pytest.raises(ConnectionResetError):
        await iocs.ingest("feed", broken(), full_list=True, lifetime=LIFE, now=T0 + 60)
    assert [(active, n) for _, _, active, n in await iocs.counts()] == [(True, 10)]


async def test_a_dropped_entry_that_returns_is_active_again(iocs: IocStore) -> None:
    """Reappearing in a later poll reactivates the row and counts the sighting."""
    await iocs.ingest("feed", domains(2), full_list=True, lifetime=LIFE, now=T0)
    await iocs.ingest("feed", domains(1), full_list=True, lifetime=LIFE, now=T0 + 1)
    await iocs.ingest("feed", domains(2, T0 + 2), full_list=True, lifetime=LIFE, now=T0 + 2)
    [back] = await iocs.merged("d1.evil.biz")
    assert back.active
    assert back.sightings == 2


async def test_lifetimes_expire_from_first_or_last_sighting_with_type_overrides(iocs: IocStore) -> None:
    """first_seen+N ignores later sightings; last_seen+N counts from the latest; a type may live shorter."""
    by_first = Lifetime(basis="first_seen", after=10 * DAY)
    await iocs.ingest(
        "a", [seen("x.evil.biz", T0), seen("x.evil.biz", T0 + 5 * DAY)], full_list=False, lifetime=by_first
    )
    by_last = Lifetime(basis="last_seen", after=10 * DAY, types={IocType.IPV4: DAY})
    await iocs.ingest(
        "b",
        [seen("y.evil.biz", T0), seen("y.evil.biz", T0 + 5 * DAY), seen("8.8.8.8", T0, IocType.IPV4)],
        full_list=False,
        lifetime=by_last,
    )
    assert await iocs.expire(T0 + 2 * DAY) == 1  # the IP
    assert await iocs.expire(T0 + 11 * DAY) == 1  # x, ten days after it was first seen
    assert [m.active for m in await iocs.merged("y.evil.biz")] == [True]
    assert await iocs.expire(T0 + 16 * DAY) == 1


async def test_a_full_list_row_still_listed_ages_from_the_last_poll(iocs: IocStore) -> None:
    """An unchanged, still-listed entry is not rewritten, yet lives from the last successful poll."""
    life = Lifetime(after=10 * DAY)
    await iocs.ingest("feed", domains(3), full_list=True, lifetime=life, now=T0)
    await iocs.ingest("feed", domains(3, T0 + 8 * DAY), full_list=True, lifetime=life, now=T0 + 8 * DAY)
    assert await iocs.expire(T0 + 12 * DAY) == 0
    assert await iocs.expire(T0 + 19 * DAY) == 3


async def test_search_filters_by_value_type_source_and_status(iocs: IocStore) -> None:
    """Search by a part of the value, the type, the source and active or not."""
    await iocs.ingest(
        "feed", [*domains(3), seen("8.8.8.8", T0, IocType.IPV4)], full_list=True, lifetime=LIFE, now=T0
    )
    await iocs.ingest("feed", domains(2), full_list=True, lifetime=LIFE, now=T0 + 1)
    assert [m.indicator.value for m in await iocs.search(contains="d1")] == ["d1.evil.biz"]
    assert [m.indicator.value for m in await iocs.search(kind=IocType.IPV4, active=False)] == ["8.8.8.8"]
    assert len(await iocs.search(source="feed", active=True)) == 2
    assert await iocs.search(source="other") == []
    assert len(await iocs.search(limit=2)) == 2


async def test_rejections_and_polls_are_counted_per_source(iocs: IocStore) -> None:
    """What normalisation refused is kept per source, with the number of polls."""
    await iocs.ingest("feed", domains(1), full_list=True, lifetime=LIFE, rejected=3, now=T0)
    await iocs.ingest("feed", domains(1), full_list=True, lifetime=LIFE, rejected=2, now=T0 + 1)
    [source] = await iocs.sources()
    assert (source.source, source.full_list, source.polls, source.rejected, source.last_poll) == (
        "feed",
        True,
        2,
        5,
        T0 + 1,
    )
