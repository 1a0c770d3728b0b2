"""The ``bitsight`` risk source against the fake BitSight API on loopback."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ce_bitsight import BitSightSource
from ce_bitsight.fake import DEFAULT_TOKEN, FakeBitSight
from ce_bitsight.source import read_company
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.errors import AuthError, TransientError
from ce_daemon.plugin import PluginContext, RiskPage, RiskRecord, RiskScale


@pytest.fixture
async def bitsight() -> AsyncIterator[FakeBitSight]:
    fake = FakeBitSight()
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(fake: FakeBitSight, tmp_path: Path, **options: Any) -> AsyncIterator[BitSightSource]:
    source = BitSightSource(
        BitSightSource.Options.model_validate({"url": fake.url, "token": DEFAULT_TOKEN, **options}),
        PluginContext(name="bitsight", base_dir=tmp_path, data_dir=tmp_path),
    )
    await source.open()
    try:
        yield source
    finally:
        await source.close()


async def pull(source: BitSightSource) -> list[RiskPage]:
    return [page async for page in source.pull()]


async def collect(source: BitSightSource, into: list[RiskPage]) -> None:
    """Keep each page as it comes (what was read before a failure stays in ``into``)."""
    async for page in source.pull():
        into.append(page)  # noqa: PERF401 -- one by one, so that what came before a failure stays


def records(pages: list[RiskPage]) -> dict[str, RiskRecord]:
    return {record.key: record for page in pages for record in page.records}


async def test_the_portfolio_is_read_page_by_page_through_links_next(
    bitsight: FakeBitSight, tmp_path: Path
) -> None:
    """Five companies by pages of two: three requests, limit/offset then links.next, basic auth."""
    for n in range(5):
        bitsight.add_company(f"Vendor {n}", 300 + 100 * n, domain=f"V{n}.Example")
    async with opened(bitsight, tmp_path, page_size=2) as source:
        assert source.entities == frozenset({"application"})
        assert source.scale == RiskScale(low=250.0, high=900.0)
        pages = await pull(source)
    assert [len(page.records) for page in pages] == [2, 2, 1]
    got = records(pages)
    assert {key: r.score for key, r in got.items()} == {f"Vendor {n}": 300.0 + 100 * n for n in range(5)}
    first = got["Vendor 0"]
    assert first.entity == "application" and first.attributes["domain"] == "v0.example"
    assert first.seen == 1_796_083_200.0  # 2026-12-01 00:00 UTC
    assert [r.query.get("offset") for r in bitsight.requests] == ["0", "2", "4"]
    assert all(r.headers["Authorization"].startswith("Basic ") for r in bitsight.requests)


async def test_key_by_domain_lower_cased(bitsight: FakeBitSight, tmp_path: Path) -> None:
    bitsight.add_company("Acme", 750, domain="WWW.Acme.Example")
    async with opened(bitsight, tmp_path, key="domain") as source:
        pages = await pull(source)
    assert list(records(pages)) == ["www.acme.example"]


async def test_companies_without_a_rating_or_key_are_refused_and_duplicates_too(
    bitsight: FakeBitSight, tmp_path: Path
) -> None:
    """No rating, a rating that is text, no name, a name seen twice: refused and named; the rest read."""
    bitsight.add_company("Good", 800)
    bitsight.add_company("Unrated", None)
    bitsight.add_company("Texty", "high")
    bitsight.add_company("", 600, primary_domain="nameless.example")
    bitsight.add_company("Good", 500)
    async with opened(bitsight, tmp_path) as source:
        pages = await pull(source)
    assert list(records(pages)) == ["Good"] and records(pages)["Good"].score == 800.0
    refused = [what for page in pages for what in page.refused]
    assert refused == [
        ("Unrated", "no numeric rating"),
        ("Texty", "no numeric rating"),
        ("nameless.example", "no name"),
        ("Good", "name 'Good' seen twice in one poll"),
    ]


async def test_a_rating_out_of_range_is_passed_on_for_the_core_to_skip(
    bitsight: FakeBitSight, tmp_path: Path
) -> None:
    """The core skips and counts out-of-range values on the declared scale: the source does not clamp."""
    bitsight.add_company("Odd", 1200)
    async with opened(bitsight, tmp_path) as source:
        pages = await pull(source)
    assert records(pages)["Odd"].score == 1200.0


async def test_429_with_a_short_retry_after_is_waited_for_then_a_long_one_fails_the_poll(
    bitsight: FakeBitSight, tmp_path: Path
) -> None:
    bitsight.add_company("A", 700)
    async with opened(bitsight, tmp_path) as source:
        bitsight.fail_next(1, 429, retry_after=0)
        assert list(records(await pull(source))) == ["A"]
        bitsight.fail_next(1, 429, retry_after=3600)
        with pytest.raises(TransientError, match="HTTP 429: Request was throttled") as caught:
            await pull(source)
        assert caught.value.retry_after == 3600.0
        bitsight.fail_next(3, 503, retry_after=0)
        with pytest.raises(TransientError, match="HTTP 503"):
            await pull(source)  # retries (2) spent


async def test_a_failure_mid_poll_keeps_the_pages_read(bitsight: FakeBitSight, tmp_path: Path) -> None:
    for n in range(4):
        bitsight.add_company(f"C{n}", 600)
    bitsight.fail_next(1, 502, after=1)
    pages: list[RiskPage] = []
    async with opened(bitsight, tmp_path, page_size=2) as source:
        with pytest.raises(TransientError, match="HTTP 502"):
            await collect(source, pages)
    assert list(records(pages)) == ["C0", "C1"]


async def test_a_refused_token_is_an_auth_error_and_health_says_so(
    bitsight: FakeBitSight, tmp_path: Path
) -> None:
    async with opened(bitsight, tmp_path) as source:
        assert (await source.health()).ok
        bitsight.refuse_credentials()
        with pytest.raises(AuthError, match="Invalid token"):
            await pull(source)
        health = await source.health()
    assert not health.ok and "401" in health.detail
    assert DEFAULT_TOKEN not in health.detail


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"<html>proxy error</html>", "not JSON: <html>proxy error</html>"),
        (b"[1, 2]", "not an object"),
        (orjson.dumps({"companies": "nope"}), "no companies list"),
    ],
)
async def test_garbage_answers_fail_the_poll_as_transient(
    bitsight: FakeBitSight, tmp_path: Path, body: bytes, said: str
) -> None:
    bitsight.fail_next(1, 200, body=body)
    async with opened(bitsight, tmp_path) as source:
        with pytest.raises(TransientError, match="BitSight GET /ratings/v1/companies") as caught:
            await pull(source)
    assert said in str(caught.value)


async def test_an_oversize_answer_is_not_read(bitsight: FakeBitSight, tmp_path: Path) -> None:
    for n in range(50):
        bitsight.add_company(f"Company with a long name {n} {'x' * 60}", 700)
    async with opened(bitsight, tmp_path, max_body="2KiB") as source:
        with pytest.raises(TransientError, match="more than 2,048 bytes"):
            await pull(source)


async def test_a_next_link_to_another_origin_is_not_followed(bitsight: FakeBitSight, tmp_path: Path) -> None:
    """The token goes to the configured origin only: a links.next elsewhere fails the poll."""
    page = {"companies": [], "links": {"next": "https://elsewhere.example/ratings/v1/companies?offset=2"}}
    bitsight.fail_next(1, 200, body=orjson.dumps(page))
    async with opened(bitsight, tmp_path) as source:
        with pytest.raises(TransientError, match="another origin"):
            await pull(source)
    assert len(bitsight.requests) == 1


async def test_a_peer_that_does_not_answer_in_time_fails_the_poll(
    bitsight: FakeBitSight, tmp_path: Path
) -> None:
    bitsight.hold_next(1)
    try:
        async with opened(bitsight, tmp_path, timeout=0.2) as source:
            with pytest.raises(TransientError, match="no answer in time"):
                await pull(source)
    finally:
        bitsight.release_held()


async def test_max_records_ends_the_poll(bitsight: FakeBitSight, tmp_path: Path) -> None:
    for n in range(5):
        bitsight.add_company(f"C{n}", 600)
    async with opened(bitsight, tmp_path, page_size=2, max_records=3) as source:
        pages = await pull(source)
    assert list(records(pages)) == ["C0", "C1", "C2"] and len(bitsight.requests) == 2


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=2),
)


@given(
    company=st.one_of(
        st.dictionaries(
            st.sampled_from(["name", "primary_domain", "rating", "rating_date", "guid", "industry"]), _values
        ),
        _values,
    ),
    key=st.sampled_from(["name", "domain"]),
)
def test_any_company_is_a_record_or_a_reason_never_an_exception(company: Any, key: str) -> None:
    record, reason = read_company(company, key)
    assert (record is None) == bool(reason)
    if record is not None:
        assert record.score is not None and math.isfinite(record.score) and record.key
        assert record.entity == "application"
