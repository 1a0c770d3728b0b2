"""The ``securityscorecard`` risk source against the fake SecurityScorecard API on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ce_securityscorecard import GRADE_SCORES, SecurityScorecardSource
from ce_securityscorecard.fake import DEFAULT_TOKEN, FakeSecurityScorecard
from ce_securityscorecard.source import read_company
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.errors import AuthError, ComponentConfigError, TransientError
from ce_daemon.plugin import PluginContext, RiskPage, RiskRecord, RiskScale


@pytest.fixture
async def ssc() -> AsyncIterator[FakeSecurityScorecard]:
    fake = FakeSecurityScorecard()
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(
    fake: FakeSecurityScorecard, tmp_path: Path, **options: Any
) -> AsyncIterator[SecurityScorecardSource]:
    settings = {"url": fake.url, "token": DEFAULT_TOKEN, "portfolios": list(fake.portfolios), **options}
    source = SecurityScorecardSource(
        SecurityScorecardSource.Options.model_validate(settings),
        PluginContext(name="ssc", base_dir=tmp_path, data_dir=tmp_path),
    )
    await source.open()
    try:
        yield source
    finally:
        await source.close()


async def pull(source: SecurityScorecardSource) -> list[RiskPage]:
    return [page async for page in source.pull()]


def records(pages: list[RiskPage]) -> dict[str, RiskRecord]:
    return {record.key: record for page in pages for record in page.records}


async def test_each_portfolio_is_a_page_and_a_company_in_two_is_read_once(
    ssc: FakeSecurityScorecard, tmp_path: Path
) -> None:
    vendors, cloud = ssc.add_portfolio("Vendors"), ssc.add_portfolio("Cloud")
    ssc.add_company(vendors, "Acme.Example", 92)
    ssc.add_company(vendors, "globex.example", 55)
    ssc.add_company(cloud, "acme.example", 92)
    ssc.add_company(cloud, "initech.example", 100)
    async with opened(ssc, tmp_path) as source:
        assert source.scale == RiskScale(low=0.0, high=100.0)
        pages = await pull(source)
    assert [len(page.records) for page in pages] == [2, 1]
    got = records(pages)
    assert {key: r.score for key, r in got.items()} == {
        "acme.example": 92.0,
        "globex.example": 55.0,
        "initech.example": 100.0,
    }
    assert (
        got["acme.example"].attributes["grade"] == "A"
        and got["acme.example"].attributes["portfolio"] == vendors
    )
    assert all(r.headers["Authorization"] == f"Token {DEFAULT_TOKEN}" for r in ssc.requests)
    assert [r.path for r in ssc.requests] == [
        f"/portfolios/{vendors}/companies",
        f"/portfolios/{cloud}/companies",
    ]


async def test_grades_map_to_band_medians_when_asked(ssc: FakeSecurityScorecard, tmp_path: Path) -> None:
    """use_grade: labels A-F on a label scale (A 875, B 625, C 375, D and F 125)."""
    portfolio = ssc.add_portfolio()
    for domain, score in (("a.example", 95), ("b.example", 85), ("d.example", 61), ("f.example", 12)):
        ssc.add_company(portfolio, domain, score)
    ssc.add_company(portfolio, "x.example", 70, grade="Z")
    async with opened(ssc, tmp_path, use_grade=True) as source:
        assert source.scale == RiskScale(labels=GRADE_SCORES)
        pages = await pull(source)
    got = records(pages)
    assert {key: (r.label, r.score) for key, r in got.items()} == {
        "a.example": ("A", None),
        "b.example": ("B", None),
        "d.example": ("D", None),
        "f.example": ("F", None),
    }
    assert [what for page in pages for what in page.refused] == [("x.example", "no grade A-F")]
    assert GRADE_SCORES == {"A": 875.0, "B": 625.0, "C": 375.0, "D": 125.0, "F": 125.0}


async def test_companies_without_a_score_or_key_are_refused(
    ssc: FakeSecurityScorecard, tmp_path: Path
) -> None:
    portfolio = ssc.add_portfolio()
    ssc.add_company(portfolio, "ok.example", 80)
    ssc.add_company(portfolio, "none.example", None)
    ssc.add_company(portfolio, "text.example", "80")
    ssc.add_company(portfolio, "", 70, name="Nameless")
    async with opened(ssc, tmp_path) as source:
        pages = await pull(source)
    assert list(records(pages)) == ["ok.example"]
    assert [what for page in pages for what in page.refused] == [
        ("none.example", "no numeric score"),
        ("text.example", "no numeric score"),
        ("Nameless", "no domain"),
    ]


async def test_an_unknown_portfolio_is_a_configuration_error_and_health_names_it(
    ssc: FakeSecurityScorecard, tmp_path: Path
) -> None:
    ssc.add_portfolio()
    async with opened(ssc, tmp_path, portfolios=["nope"]) as source:
        with pytest.raises(ComponentConfigError, match="portfolio 'nope'"):
            await pull(source)
        health = await source.health()
    assert not health.ok and "no portfolio nope" in health.detail


async def test_429_retry_after_short_is_waited_long_fails_and_a_refused_key(
    ssc: FakeSecurityScorecard, tmp_path: Path
) -> None:
    portfolio = ssc.add_portfolio()
    ssc.add_company(portfolio, "a.example", 90)
    async with opened(ssc, tmp_path) as source:
        assert (await source.health()).ok
        ssc.fail_next(2, 429, retry_after=0)
        assert list(records(await pull(source))) == ["a.example"]
        ssc.fail_next(1, 429, retry_after=900)
        with pytest.raises(TransientError, match="HTTP 429: Too Many Requests") as caught:
            await pull(source)
        assert caught.value.retry_after == 900.0
        ssc.refuse_credentials()
        with pytest.raises(AuthError, match="invalid or missing authentication token"):
            await pull(source)
        health = await source.health()
    assert not health.ok and "401" in health.detail


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"\x00\xffnot json", "not JSON"),
        (b'"entries"', "not an object"),
        (orjson.dumps({"entries": {"a": 1}}), "no entries list"),
    ],
)
async def test_garbage_answers_fail_the_poll_as_transient(
    ssc: FakeSecurityScorecard, tmp_path: Path, body: bytes, said: str
) -> None:
    ssc.add_portfolio()
    ssc.fail_next(1, 200, body=body)
    async with opened(ssc, tmp_path) as source:
        with pytest.raises(TransientError, match="SecurityScorecard GET /portfolios/") as caught:
            await pull(source)
    assert said in str(caught.value)


async def test_an_oversize_answer_is_not_read(ssc: FakeSecurityScorecard, tmp_path: Path) -> None:
    portfolio = ssc.add_portfolio()
    for n in range(40):
        ssc.add_company(portfolio, f"company-{n}-{'x' * 40}.example", 80)
    async with opened(ssc, tmp_path, max_body="4KiB") as source:
        with pytest.raises(TransientError, match="more than 4,096 bytes"):
            await pull(source)


async def test_a_failure_on_the_second_portfolio_keeps_the_first(
    ssc: FakeSecurityScorecard, tmp_path: Path
) -> None:
    first, _second = ssc.add_portfolio(), ssc.add_portfolio()
    ssc.add_company(first, "a.example", 90)
    ssc.fail_next(1, 500, after=1)
    pages: list[RiskPage] = []
    async with opened(ssc, tmp_path) as source:
        with pytest.raises(TransientError, match="HTTP 500"):
            await collect(source, pages)
    assert list(records(pages)) == ["a.example"]


async def collect(source: SecurityScorecardSource, into: list[RiskPage]) -> None:
    async for page in source.pull():
        into.append(page)  # noqa: PERF401 -- one by one, so that what came before a failure stays


_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))


@given(
    entry=st.one_of(
        st.dictionaries(st.sampled_from(["domain", "name", "score", "grade", "industry"]), _values), _values
    ),
    key=st.sampled_from(["domain", "name"]),
    use_grade=st.booleans(),
)
def test_any_entry_is_a_record_or_a_reason_never_an_exception(entry: Any, key: str, use_grade: bool) -> None:
    record, reason = read_company(entry, key, use_grade=use_grade)
    assert (record is None) == bool(reason)
    if record is not None:
        assert record.key
        assert (record.label in GRADE_SCORES) if use_grade else (record.score is not None)
