"""The ``okta`` risk source against the fake Okta org on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ce_okta import LEVELS, OktaSource
from ce_okta.fake import DEFAULT_TOKEN, FakeOkta
from ce_okta.source import Identity, next_link, read_risk, read_user
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.errors import AuthError, TransientError
from ce_daemon.plugin import PluginContext, RiskPage, RiskRecord, RiskScale


@pytest.fixture
async def okta() -> AsyncIterator[FakeOkta]:
    fake = FakeOkta()
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(fake: FakeOkta, tmp_path: Path, **options: Any) -> AsyncIterator[OktaSource]:
    source = OktaSource(
        OktaSource.Options.model_validate({"url": fake.url, "token": DEFAULT_TOKEN, **options}),
        PluginContext(name="okta", base_dir=tmp_path, data_dir=tmp_path),
    )
    await source.open()
    try:
        yield source
    finally:
        await source.close()


async def pull(source: OktaSource) -> list[RiskPage]:
    return [page async for page in source.pull()]


async def collect(source: OktaSource, into: list[RiskPage]) -> None:
    async for page in source.pull():
        into.append(page)  # noqa: PERF401 -- one by one, so that what came before a failure stays


def records(pages: list[RiskPage]) -> dict[str, RiskRecord]:
    return {record.key: record for page in pages for record in page.records}


def refused(pages: list[RiskPage]) -> list[tuple[str, str]]:
    return [what for page in pages for what in page.refused]


async def test_users_are_listed_through_link_headers_and_each_risk_read(
    okta: FakeOkta, tmp_path: Path
) -> None:
    """Five users by pages of two (Link rel=next): labels LOW/MEDIUM/HIGH, NONE gives no record."""
    okta.add_user("Ann@Example.com", "HIGH")
    okta.add_user("bob@example.com", "LOW")
    okta.add_user("cat@example.com", None)  # never scored: NONE
    okta.add_user("dan@example.com", "MEDIUM")
    okta.add_user("eve@example.com", "HIGH", status="DEPROVISIONED")  # filtered out by status
    okta.add_user("fay@example.com", "LOW")
    async with opened(okta, tmp_path, page_size=2) as source:
        assert source.entities == frozenset({"user"})
        assert source.scale == RiskScale(labels={"LOW": 875.0, "MEDIUM": 625.0, "HIGH": 375.0})
        pages = await pull(source)
    assert len(pages) == 3 and refused(pages) == []
    assert {key: r.label for key, r in records(pages).items()} == {
        "ann@example.com": "HIGH",
        "bob@example.com": "LOW",
        "dan@example.com": "MEDIUM",
        "fay@example.com": "LOW",
    }
    ann = records(pages)["ann@example.com"]
    assert ann.score is None and ann.attributes["reason"] == "Admin override risk"
    assert ann.attributes["login"] == "Ann@Example.com" and ann.attributes["okta_id"].startswith("00u")
    lists = [r for r in okta.requests if r.path == "/api/v1/users"]
    assert [r.query.get("filter") for r in lists] == ['status eq "ACTIVE"'] * 3
    assert all(r.headers["Authorization"] == f"SSWS {DEFAULT_TOKEN}" for r in okta.requests)
    assert LEVELS == {"LOW": 875.0, "MEDIUM": 625.0, "HIGH": 375.0}


async def test_risk_calls_are_bounded_by_concurrency(okta: FakeOkta, tmp_path: Path) -> None:
    for n in range(12):
        okta.add_user(f"u{n}@example.com", "LOW")
    okta.risk_delay = 0.02
    async with opened(okta, tmp_path) as source:
        assert len(records(await pull(source))) == 12
    assert okta.most_in_flight == 4
    okta.most_in_flight = 0
    async with opened(okta, tmp_path, concurrency=2) as source:
        await pull(source)
    assert okta.most_in_flight == 2


async def test_max_users_bounds_the_risk_calls(okta: FakeOkta, tmp_path: Path) -> None:
    for n in range(7):
        okta.add_user(f"u{n}@example.com", "LOW")
    async with opened(okta, tmp_path, page_size=3, max_users=4) as source:
        pages = await pull(source)
    assert len(records(pages)) == 4
    assert sum(r.path.endswith("/risk") for r in okta.requests) == 4


async def test_records_without_a_level_unknown_levels_and_keyless_users_are_refused(
    okta: FakeOkta, tmp_path: Path
) -> None:
    okta.add_user("ok@example.com", "MEDIUM")
    no_level = okta.add_user("nolevel@example.com")
    okta.risks[no_level["id"]] = {"reason": "no level here"}
    odd = okta.add_user("odd@example.com")
    okta.risks[odd["id"]] = {"riskLevel": "SEVERE"}
    garbage = okta.add_user("garbage@example.com")
    okta.risks[garbage["id"]] = ["HIGH"]
    nameless = okta.add_user("", "HIGH", login="nameless")
    async with opened(okta, tmp_path) as source:
        pages = await pull(source)
    assert list(records(pages)) == ["ok@example.com"]
    assert refused(pages) == [
        ("nolevel@example.com", "no riskLevel"),
        ("odd@example.com", "unknown riskLevel 'SEVERE'"),
        ("garbage@example.com", "risk answer not an object"),
        (nameless["id"], "no email in the profile"),
    ]


async def test_a_user_gone_before_its_risk_is_refused_not_fatal(okta: FakeOkta, tmp_path: Path) -> None:
    okta.add_user("a@example.com", "LOW")
    okta.add_user("b@example.com", "HIGH")

    async with opened(okta, tmp_path) as source:
        original = okta._risk_of

        def gone_for_b(request: Any) -> Any:
            if request.match_info["id"] == okta.users[1]["id"]:
                okta.users.pop(1)
            return original(request)

        okta._risk_of = gone_for_b  # type: ignore[method-assign]
        pages = await pull(source)
    assert list(records(pages)) == ["a@example.com"]
    assert refused(pages) == [("b@example.com", "user gone (404) before its risk was read")]


async def test_the_rate_limit_headers_pause_and_429_waits_for_the_reset(
    okta: FakeOkta, tmp_path: Path
) -> None:
    """Remaining spent: the source holds until X-Rate-Limit-Reset (now), takes the 429s, reads every user."""
    for n in range(6):
        okta.add_user(f"u{n}@example.com", "HIGH")
    okta.rate_limit = okta.remaining = 3
    async with opened(okta, tmp_path, concurrency=1) as source:
        pages = await pull(source)
    assert len(records(pages)) == 6
    assert any(r.status == 429 for r in okta.requests)


async def test_a_long_rate_limit_reset_fails_the_poll_with_its_delay(okta: FakeOkta, tmp_path: Path) -> None:
    okta.add_user("a@example.com", "HIGH")
    okta.reset_in = 3600
    okta.remaining = 0
    async with opened(okta, tmp_path) as source:
        with pytest.raises(TransientError, match="HTTP 429: E0000047") as caught:
            await pull(source)
    assert caught.value.retry_after is not None and caught.value.retry_after > 3000


async def test_429_with_retry_after(okta: FakeOkta, tmp_path: Path) -> None:
    okta.add_user("a@example.com", "HIGH")
    async with opened(okta, tmp_path) as source:
        okta.fail_next(1, 429, retry_after=0, after=1)  # the risk call
        assert list(records(await pull(source))) == ["a@example.com"]
        okta.fail_next(1, 429, retry_after=7200)
        with pytest.raises(TransientError, match="E0000047") as caught:
            await pull(source)
    assert caught.value.retry_after == 7200.0


async def test_a_refused_token_is_an_auth_error_and_health_says_so(okta: FakeOkta, tmp_path: Path) -> None:
    okta.add_user("a@example.com", "HIGH")
    async with opened(okta, tmp_path) as source:
        assert (await source.health()).ok
        okta.refuse_credentials()
        with pytest.raises(AuthError, match="E0000011: Invalid token provided"):
            await pull(source)
        health = await source.health()
    assert not health.ok and "401" in health.detail and DEFAULT_TOKEN not in health.detail


async def test_a_failure_on_the_second_page_keeps_the_first(okta: FakeOkta, tmp_path: Path) -> None:
    for n in range(4):
        okta.add_user(f"u{n}@example.com", "LOW")
    okta.fail_next(1, 500, after=3)  # list, two risks, then the second list page
    pages: list[RiskPage] = []
    async with opened(okta, tmp_path, page_size=2) as source:
        with pytest.raises(TransientError, match="HTTP 500"):
            await collect(source, pages)
    assert list(records(pages)) == ["u0@example.com", "u1@example.com"]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"<html>login</html>", "not JSON: <html>login</html>"),
        (orjson.dumps({"users": []}), "no list of users"),
    ],
)
async def test_garbage_lists_fail_the_poll(okta: FakeOkta, tmp_path: Path, body: bytes, said: str) -> None:
    okta.fail_next(1, 200, body=body)
    async with opened(okta, tmp_path) as source:
        with pytest.raises(TransientError, match="Okta GET /api/v1/users") as caught:
            await pull(source)
    assert said in str(caught.value)


async def test_an_oversize_list_is_not_read(okta: FakeOkta, tmp_path: Path) -> None:
    for n in range(30):
        okta.add_user(f"user-{n}-{'x' * 40}@example.com", "LOW")
    async with opened(okta, tmp_path, max_body="4KiB") as source:
        with pytest.raises(TransientError, match="more than 4,096 bytes"):
            await pull(source)


async def test_a_next_link_to_another_origin_is_not_followed(okta: FakeOkta, tmp_path: Path) -> None:
    okta.add_user("a@example.com", "LOW")
    original = okta._users

    def elsewhere(request: Any) -> Any:
        response = original(request)
        response.headers["Link"] = '<https://evil.example/api/v1/users?after=x>; rel="next"'
        return response

    okta._users = elsewhere  # type: ignore[method-assign]
    pages: list[RiskPage] = []
    async with opened(okta, tmp_path) as source:
        with pytest.raises(TransientError, match="another origin"):
            await collect(source, pages)
    assert list(records(pages)) == ["a@example.com"]


@pytest.mark.parametrize(
    "link",
    [
        '<http://[::1>; rel="next"',
        '</api/v1/groups?after=x>; rel="next"',
        "<https://evil.example/api/v1/users>; rel=next",
    ],
)
async def test_a_next_link_that_is_no_url_or_elsewhere_fails_the_poll(
    okta: FakeOkta, tmp_path: Path, link: str
) -> None:
    okta.add_user("a@example.com", "LOW")
    original = okta._users

    def patched(request: Any) -> Any:
        response = original(request)
        response.headers["Link"] = link
        return response

    okta._users = patched  # type: ignore[method-assign]
    async with opened(okta, tmp_path) as source:
        with pytest.raises(TransientError, match="next link"):
            await pull(source)


def test_next_link_reads_rfc_8288_headers() -> None:
    assert next_link(['<https://o.example/a?after=1>; rel="next", <https://o.example/a>; rel="self"']) == (
        "https://o.example/a?after=1"
    )
    assert (
        next_link(['<https://o.example/a>; rel="self"', "<https://o.example/b>; REL=next"])
        == "https://o.example/b"
    )
    assert next_link(['<https://o.example/a>; rel="self"']) is None
    assert next_link([]) is None


@given(st.lists(st.text(alphabet=st.sampled_from('<>;,="relnxt /:?a'), max_size=60), max_size=3))
def test_next_link_never_raises(values: list[str]) -> None:
    found = next_link(values)
    assert found is None or ("<" not in found and ">" not in found)


@given(
    user=st.one_of(
        st.none(),
        st.text(max_size=5),
        st.fixed_dictionaries(
            {},
            optional={
                "id": st.one_of(st.text(max_size=12), st.integers(), st.none()),
                "profile": st.one_of(
                    st.none(),
                    st.dictionaries(
                        st.sampled_from(["email", "login", "firstName"]), st.one_of(st.text(), st.integers())
                    ),
                ),
            },
        ),
    ),
    risk=st.one_of(
        st.none(),
        st.lists(st.text(max_size=4), max_size=2),
        st.dictionaries(
            st.sampled_from(["riskLevel", "reason"]),
            st.one_of(
                st.sampled_from(["LOW", "medium", "HIGH", "NONE", "??"]), st.text(), st.integers(), st.none()
            ),
        ),
    ),
)
def test_any_user_and_risk_answer_is_a_record_nothing_or_a_reason(user: Any, risk: Any) -> None:
    identity, why = read_user(user, "email")
    assert (identity is None) == bool(why)
    record, reason = read_risk(risk, identity or Identity("00u1", "a@example.com", {}))
    assert not (record is not None and reason)
    if record is not None:
        assert record.label in LEVELS and record.score is None and record.key
