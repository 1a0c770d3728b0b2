"""The ``knowbe4`` risk source against the fake Reporting API on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ce_knowbe4 import KnowBe4Source
from ce_knowbe4.fake import FakeKnowBe4
from ce_knowbe4.source import read_users
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.errors import AuthError, TransientError
from ce_daemon.plugin import PluginContext, RiskPage

SCALAR = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
USER = st.fixed_dictionaries(
    {},
    optional={
        "email": SCALAR | st.emails(),
        "current_risk_score": JSON,
        "status": SCALAR,
        "first_name": JSON,
    },
)


@pytest.fixture
async def kb4() -> AsyncIterator[FakeKnowBe4]:
    fake = FakeKnowBe4()
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(kb4: FakeKnowBe4, tmp_path: Path, **options: Any) -> AsyncIterator[KnowBe4Source]:
    settings = {"token": kb4.key, "url": kb4.url, **options}
    source = KnowBe4Source(
        KnowBe4Source.Options.model_validate(settings),
        PluginContext(name="knowbe4", base_dir=tmp_path, data_dir=tmp_path),
    )
    await source.open()
    try:
        yield source
    finally:
        await source.close()


async def pages(source: KnowBe4Source) -> list[RiskPage]:
    return [page async for page in source.pull()]


async def collect(source: KnowBe4Source, into: list[RiskPage]) -> None:
    """The pages of a poll into ``into``, as they come (those before a failure stay)."""
    async for page in source.pull():
        into.append(page)  # noqa: PERF401 -- kept page by page, up to the failure


async def test_users_are_paged_and_keyed_by_lower_cased_email(tmp_path: Path, kb4: FakeKnowBe4) -> None:
    """5 active users, per_page 2: pages 1-3 read (the third short), emails lower-cased, scores as given."""
    for n in range(5):
        kb4.add_user(f"User{n}@Example.COM", score=10.0 * n)
    async with opened(kb4, tmp_path, per_page=2) as source:
        got = await pages(source)
    assert [[r.key for r in p.records] for p in got] == [
        ["user0@example.com", "user1@example.com"],
        ["user2@example.com", "user3@example.com"],
        ["user4@example.com"],
    ]
    record = got[1].records[1]
    assert record.entity == "user" and record.score == 30.0
    assert record.attributes == {
        "name": "First4 Last4",
        "department": "Finance",
        "job_title": "Analyst",
        "location": "Paris",
    }
    assert [dict(r.query) for r in kb4.requests] == [
        {"page": str(n), "per_page": "2", "status": "active"} for n in (1, 2, 3)
    ]
    assert all(r.headers["Authorization"] == f"Bearer {kb4.key}" for r in kb4.requests)


async def test_archived_users_are_read_only_when_asked(tmp_path: Path, kb4: FakeKnowBe4) -> None:
    """active_only (the default) asks status=active; active_only: false reads archived users too."""
    kb4.add_user("a@example.com")
    kb4.add_user("gone@example.com", status="archived")
    async with opened(kb4, tmp_path) as source:
        [page] = await pages(source)
    assert [r.key for r in page.records] == ["a@example.com"]
    async with opened(kb4, tmp_path, active_only=False) as source:
        [page] = await pages(source)
    assert [r.key for r in page.records] == ["a@example.com", "gone@example.com"]


async def test_missing_or_non_number_scores_are_refused_out_of_range_pass(
    tmp_path: Path, kb4: FakeKnowBe4
) -> None:
    """No score, a string, a boolean, no email: refused with why; 120.5 and -3 pass as is (core skips)."""
    kb4.add_user("none@example.com", score=...)
    kb4.add_user("null@example.com", score=None)
    kb4.add_user("text@example.com", score="45")
    kb4.add_user("bool@example.com", score=True)
    kb4.add_user("", score=10)
    kb4.add_user("high@example.com", score=120.5)
    kb4.add_user("low@example.com", score=-3)
    async with opened(kb4, tmp_path) as source:
        [page] = await pages(source)
    assert {r.key: r.score for r in page.records} == {"high@example.com": 120.5, "low@example.com": -3.0}
    assert page.refused == [
        ("user none@example.com", "no current_risk_score"),
        ("user null@example.com", "no current_risk_score"),
        ("user text@example.com", 'current_risk_score is not a number: "45"'),
        ("user bool@example.com", "current_risk_score is not a number: true"),
        ("user ", "no email address"),
    ]


async def test_an_email_listed_twice_is_kept_once(tmp_path: Path, kb4: FakeKnowBe4) -> None:
    """The same email on two pages (case aside): the first is kept, the second refused."""
    kb4.add_user("dup@example.com", score=10)
    kb4.add_user("DUP@example.com", score=90)
    async with opened(kb4, tmp_path, per_page=1) as source:
        got = await pages(source)
    assert [r.score for p in got for r in p.records] == [10.0]
    assert got[1].refused == [("user DUP@example.com", "listed twice in one poll (the first one is kept)")]


async def test_429_is_transient_with_retry_after(tmp_path: Path, kb4: FakeKnowBe4) -> None:
    """A 429 on the second page fails the poll with the Retry-After asked; the next poll reads all."""
    kb4.add_user("a@example.com")
    kb4.add_user("b@example.com")
    kb4.fail_next(1, 429, retry_after=12, after=1)
    async with opened(kb4, tmp_path, per_page=1) as source:
        read: list[RiskPage] = []
        with pytest.raises(TransientError) as caught:
            await collect(source, read)
        assert caught.value.retry_after == 12.0 and len(read) == 1
        assert len(await pages(source)) == 3


async def test_a_short_429_is_waited_out_inside_the_poll(tmp_path: Path, kb4: FakeKnowBe4) -> None:
    """A 429 asking for no wait (within rate_limit_wait) is retried in the poll, which completes."""
    kb4.add_user("a@example.com")
    kb4.add_user("b@example.com")
    kb4.fail_next(1, 429, retry_after=0, after=1)
    async with opened(kb4, tmp_path, per_page=1) as source:
        got = await pages(source)
    assert [r.key for p in got for r in p.records] == ["a@example.com", "b@example.com"]
    assert [r.status for r in kb4.requests] == [200, 429, 200, 200]


async def test_a_refused_token_is_an_auth_error(tmp_path: Path, kb4: FakeKnowBe4) -> None:
    """A reset key: 401 is an AuthError quoting KnowBe4's message, never the token."""
    kb4.add_user("a@example.com")
    token = kb4.key
    kb4.refuse_credentials()
    async with opened(kb4, tmp_path, token=token) as source:
        with pytest.raises(AuthError, match="HTTP 401: Unauthorized") as caught:
            await pages(source)
    assert token not in str(caught.value)


async def test_5xx_garbage_and_oversize_bodies_are_transient(tmp_path: Path, kb4: FakeKnowBe4) -> None:
    """A 502, HTML, an object instead of a list, and a body past max_body: each a transient failure."""
    kb4.add_user("a@example.com")
    kb4.fail_next(1, 502)
    kb4.fail_next(1, 200, body=b"<html>oops</html>")
    kb4.fail_next(1, 200, body=b'{"users": []}')
    kb4.fail_next(1, 200, body=b"[" + b"{}," * 2000 + b"{}]")
    async with opened(kb4, tmp_path, max_body=4096) as source:
        for expected in (
            "HTTP 502",
            "not JSON: <html>oops</html>",
            "no list of users",
            "more than 4,096 bytes",
        ):
            with pytest.raises(TransientError, match=expected):
                await pages(source)


async def test_a_page_larger_than_asked_is_refused(tmp_path: Path, kb4: FakeKnowBe4) -> None:
    """A peer that answers more users than per_page fails the poll instead of being trusted."""
    kb4.fail_next(1, 200, body=b'[{"email": "a@x.org"}, {"email": "b@x.org"}, {"email": "c@x.org"}]')
    async with opened(kb4, tmp_path, per_page=2) as source:
        with pytest.raises(TransientError, match="3 users for a page of 2"):
            await pages(source)


async def test_the_region_picks_the_base_url(tmp_path: Path) -> None:
    """region: eu reads https://eu.api.knowbe4.com; url overrides it."""
    options = KnowBe4Source.Options.model_validate({"token": "t", "region": "eu"})
    assert options.base == "https://eu.api.knowbe4.com"
    assert KnowBe4Source.Options.model_validate({"token": "t", "url": "http://h/"}).base == "http://h"


def test_the_declared_scale_reproduces_ce_formula() -> None:
    """The inverted linear map of the declared scale equals CE's 1000 - 10 * score."""
    scale = KnowBe4Source.scale
    assert not scale.higher_is_safer
    for raw in (0.0, 12.5, 50.0, 99.9, 100.0):
        inverted = (scale.high - raw) / (scale.high - scale.low) * 1000
        assert inverted == pytest.approx(1000 - 10 * raw)


@given(body=JSON | st.lists(USER | JSON, max_size=6))
def test_any_json_answer_is_read_or_transient(body: Any) -> None:
    """Whatever JSON the API answers, reading it gives records and refusals or raises TransientError."""
    try:
        page = read_users(body, set())
    except TransientError:
        assert not isinstance(body, list)
        return
    assert len(page.records) + len(page.refused) <= len(body)
    assert all(isinstance(r.score, float) for r in page.records)
