"""The ``entra_id`` risk source against the fake Entra ID and Graph on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ce_entra import LEVELS, EntraIdSource
from ce_entra.fake import CLIENT_ID, CLIENT_SECRET, TENANT_ID, FakeGraph
from ce_entra.source import read_risky_user
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.errors import AuthError, TransientError
from ce_daemon.plugin import PluginContext, RiskPage, RiskRecord, RiskScale

RISKY = "/v1.0/identityProtection/riskyUsers"


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    fake = FakeGraph()
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(fake: FakeGraph, tmp_path: Path, **options: Any) -> AsyncIterator[EntraIdSource]:
    settings = {
        "tenant_id": TENANT_ID,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "authority": fake.url,
        "graph_url": fake.url,
        **options,
    }
    source = EntraIdSource(
        EntraIdSource.Options.model_validate(settings),
        PluginContext(name="entra", base_dir=tmp_path, data_dir=tmp_path),
    )
    await source.open()
    try:
        yield source
    finally:
        await source.close()


async def pull(source: EntraIdSource) -> list[RiskPage]:
    return [page async for page in source.pull()]


async def collect(source: EntraIdSource, into: list[RiskPage]) -> None:
    async for page in source.pull():
        into.append(page)  # noqa: PERF401 -- one by one, so that what came before a failure stays


def records(pages: list[RiskPage]) -> dict[str, RiskRecord]:
    return {record.key: record for page in pages for record in page.records}


def refused(pages: list[RiskPage]) -> list[tuple[str, str]]:
    return [what for page in pages for what in page.refused]


def graph_calls(fake: FakeGraph) -> list[Any]:
    return [r for r in fake.requests if r.path == RISKY]


async def test_risky_users_are_read_through_next_links_with_one_token(
    graph: FakeGraph, tmp_path: Path
) -> None:
    graph.add_user("Ann@Contoso.com", "high")
    graph.add_user("bob@contoso.com", "low", riskLastUpdatedDateTime="2026-11-30T08:00:00Z")
    graph.add_user("cat@contoso.com", "none", state="remediated")
    graph.add_user("dan@contoso.com", "medium")
    graph.add_user("eve@contoso.com", "high", isDeleted=True)
    async with opened(graph, tmp_path, page_size=2) as source:
        assert source.entities == frozenset({"user"})
        assert source.scale == RiskScale(labels={"low": 875.0, "medium": 625.0, "high": 375.0})
        pages = await pull(source)
    assert len(pages) == 3 and refused(pages) == []
    got = records(pages)
    assert {key: r.label for key, r in got.items()} == {
        "ann@contoso.com": "high",
        "bob@contoso.com": "low",
        "dan@contoso.com": "medium",
    }
    assert got["bob@contoso.com"].seen == 1_796_025_600.0  # 2026-11-30T08:00:00Z
    assert got["ann@contoso.com"].attributes["risk_state"] == "atRisk"
    assert graph.tokens_issued == 1
    assert [r.query.get("$skiptoken") for r in graph_calls(graph)] == [None, "2", "4"]
    assert LEVELS == {"low": 875.0, "medium": 625.0, "high": 375.0}


async def test_the_filter_is_sent_to_graph(graph: FakeGraph, tmp_path: Path) -> None:
    graph.add_user("a@contoso.com", "high")
    graph.add_user("b@contoso.com", "low", state="dismissed")
    async with opened(graph, tmp_path, filter="riskState eq 'atRisk'") as source:
        pages = await pull(source)
    assert list(records(pages)) == ["a@contoso.com"]
    assert graph_calls(graph)[0].query["$filter"] == "riskState eq 'atRisk'"


async def test_a_revoked_token_is_renewed_once_and_the_request_sent_again(
    graph: FakeGraph, tmp_path: Path
) -> None:
    graph.add_user("a@contoso.com", "high")
    async with opened(graph, tmp_path) as source:
        await pull(source)
        graph.revoke_tokens()
        pages = await pull(source)
    assert list(records(pages)) == ["a@contoso.com"]
    assert graph.tokens_issued == 2
    assert [r.status for r in graph_calls(graph)] == [200, 401, 200]


async def test_an_expiring_token_is_renewed_before_it_is_used(tmp_path: Path) -> None:
    """A token that lapses at once (expires_in 0) is never reused: each call fetches a new one, no 401."""
    fake = FakeGraph(token_lifetime=0)
    fake.add_user("a@contoso.com", "high")
    async with fake:
        async with opened(fake, tmp_path) as source:
            await pull(source)
            await pull(source)
    assert fake.tokens_issued == 2
    assert [r.status for r in graph_calls(fake)] == [200, 200]


async def test_a_rotated_secret_is_an_auth_error_and_health_says_so(graph: FakeGraph, tmp_path: Path) -> None:
    graph.add_user("a@contoso.com", "high")
    async with opened(graph, tmp_path) as source:
        assert (await source.health()).ok
        graph.refuse_credentials()
        with pytest.raises(AuthError, match="invalid_client: AADSTS7000215"):
            await pull(source)
        health = await source.health()
    assert not health.ok and "401" in health.detail and CLIENT_SECRET not in health.detail


async def test_a_fresh_token_refused_too_is_an_auth_error(graph: FakeGraph, tmp_path: Path) -> None:
    graph.add_user("a@contoso.com", "high")
    graph.fail_next(1, 401, code="InvalidAuthenticationToken", message="Access token validation failure.")
    graph.fail_next(1, 401, code="InvalidAuthenticationToken", message="Access token validation failure.")
    async with opened(graph, tmp_path) as source:
        with pytest.raises(AuthError, match="InvalidAuthenticationToken: Access token validation failure"):
            await pull(source)
    assert graph.tokens_issued == 2


async def test_403_missing_permission_is_an_auth_error(graph: FakeGraph, tmp_path: Path) -> None:
    graph.fail_next(1, 403, code="Forbidden", message="You cannot perform the requested operation.")
    async with opened(graph, tmp_path) as source:
        with pytest.raises(AuthError, match="HTTP 403 Forbidden"):
            await pull(source)


async def test_429_retry_after_short_is_waited_long_fails(graph: FakeGraph, tmp_path: Path) -> None:
    graph.add_user("a@contoso.com", "high")
    async with opened(graph, tmp_path) as source:
        graph.fail_next(2, 429, code="TooManyRequests", message="Too many requests.", retry_after=0)
        assert list(records(await pull(source))) == ["a@contoso.com"]
        graph.fail_next(1, 429, code="TooManyRequests", message="Too many requests.", retry_after=120)
        with pytest.raises(TransientError, match="HTTP 429 TooManyRequests: Too many requests") as caught:
            await pull(source)
    assert caught.value.retry_after == 120.0


async def test_hidden_unknown_and_keyless_users_are_refused(graph: FakeGraph, tmp_path: Path) -> None:
    graph.add_user("ok@contoso.com", "medium")
    graph.add_user("hidden@contoso.com", "hidden")
    graph.add_user("odd@contoso.com", "unknownFutureValue")
    graph.add_user("nolevel@contoso.com", None)
    nameless = graph.add_user("", "high")
    async with opened(graph, tmp_path) as source:
        pages = await pull(source)
    assert list(records(pages)) == ["ok@contoso.com"]
    assert refused(pages) == [
        ("hidden@contoso.com", "riskLevel hidden (the tenant's licence hides it: Entra ID P2 is needed)"),
        ("odd@contoso.com", "unknown riskLevel 'unknownfuturevalue'"),
        ("nolevel@contoso.com", "no riskLevel"),
        (nameless["id"], "no userPrincipalName"),
    ]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"<html>gateway</html>", "not JSON: <html>gateway</html>"),
        (b"[]", "not an object"),
        (orjson.dumps({"value": None}), "no value list"),
    ],
)
async def test_garbage_answers_fail_the_poll(
    graph: FakeGraph, tmp_path: Path, body: bytes, said: str
) -> None:
    graph.fail_next(1, 200, body=body)
    async with opened(graph, tmp_path) as source:
        with pytest.raises(TransientError, match="Graph GET") as caught:
            await pull(source)
    assert said in str(caught.value)


async def test_an_oversize_answer_is_not_read(graph: FakeGraph, tmp_path: Path) -> None:
    for n in range(30):
        graph.add_user(f"user-{n}-{'x' * 40}@contoso.com", "low")
    async with opened(graph, tmp_path, max_body="4KiB") as source:
        with pytest.raises(TransientError, match="more than 4,096 bytes"):
            await pull(source)


async def test_a_next_link_off_graph_is_not_followed_and_the_pages_read_stay(
    graph: FakeGraph, tmp_path: Path
) -> None:
    page = {
        "value": [graph.add_user("a@contoso.com", "high")],
        "@odata.nextLink": "https://evil.example/next",
    }
    graph.fail_next(1, 200, body=orjson.dumps(page))
    pages: list[RiskPage] = []
    async with opened(graph, tmp_path) as source:
        with pytest.raises(TransientError, match="nextLink off"):
            await collect(source, pages)
    assert list(records(pages)) == ["a@contoso.com"]
    assert len(graph_calls(graph)) == 1


async def test_a_failure_mid_poll_keeps_the_pages_read(graph: FakeGraph, tmp_path: Path) -> None:
    for n in range(4):
        graph.add_user(f"u{n}@contoso.com", "low")
    graph.fail_next(1, 503, after=1)
    pages: list[RiskPage] = []
    async with opened(graph, tmp_path, page_size=2) as source:
        with pytest.raises(TransientError, match="HTTP 503"):
            await collect(source, pages)
    assert list(records(pages)) == ["u0@contoso.com", "u1@contoso.com"]


async def test_a_peer_that_does_not_answer_in_time_fails_the_poll(graph: FakeGraph, tmp_path: Path) -> None:
    graph.hold_next(1)
    try:
        async with opened(graph, tmp_path, timeout=0.2) as source:
            with pytest.raises(TransientError, match="no answer in time"):
                await pull(source)
    finally:
        graph.release_held()


@given(
    user=st.one_of(
        st.none(),
        st.integers(),
        st.dictionaries(
            st.sampled_from(["riskLevel", "userPrincipalName", "isDeleted", "riskLastUpdatedDateTime", "id"]),
            st.one_of(
                st.sampled_from(["low", "Medium", "HIGH", "none", "hidden", "2026-12-01T10:00:00Z"]),
                st.text(max_size=30),
                st.booleans(),
                st.integers(),
                st.none(),
            ),
        ),
    )
)
def test_any_risky_user_is_a_record_nothing_or_a_reason(user: Any) -> None:
    record, why = read_risky_user(user)
    assert not (record is not None and why)
    if record is not None:
        assert record.label in LEVELS and record.key == record.key.lower() and record.key
