"""The ``crowdstrike_zta`` risk source against the fake Falcon API on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ce_crowdstrike import CrowdStrikeZtaSource
from ce_crowdstrike.fake import FakeCrowdStrike
from ce_crowdstrike.source import (
    assessments,
    details,
    rate_limit_wait,
    records,
    scroll_page,
    unreadable_ids,
)
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.errors import AuthError, TransientError
from ce_daemon.plugin import PluginContext, RiskPage

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@pytest.fixture
async def falcon() -> AsyncIterator[FakeCrowdStrike]:
    fake = FakeCrowdStrike()
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(
    falcon: FakeCrowdStrike, tmp_path: Path, **options: Any
) -> AsyncIterator[CrowdStrikeZtaSource]:
    settings = {
        "client_id": falcon.client_id,
        "client_secret": falcon.client_secret,
        "url": falcon.url,
        **options,
    }
    source = CrowdStrikeZtaSource(
        CrowdStrikeZtaSource.Options.model_validate(settings),
        PluginContext(name="zta", base_dir=tmp_path, data_dir=tmp_path),
    )
    await source.open()
    try:
        yield source
    finally:
        await source.close()


async def pages(source: CrowdStrikeZtaSource) -> list[RiskPage]:
    return [page async for page in source.pull()]


async def test_every_host_is_scored_by_its_overall_assessment(
    tmp_path: Path, falcon: FakeCrowdStrike
) -> None:
    """250 hosts over 3 scroll pages, batches of 50: one record each, keyed by aid, hostname and platform."""
    hosts = falcon.add_hosts(250, overall=73)
    async with opened(falcon, tmp_path, page_size=100, batch_size=50) as source:
        got = await pages(source)
    assert [len(page.records) for page in got] == [50] * 5  # scroll pages of 100, 100, 50 in batches of 50
    found = {r.key: r for page in got for r in page.records}
    assert set(found) == {h.aid for h in hosts}
    record = found[hosts[0].aid]
    assert record.entity == "device" and record.score == 73.0 and record.seen is not None
    assert record.attributes == {"aid": hosts[0].aid, "hostname": "HOST-0", "platform": "Windows"}
    scrolls = [r for r in falcon.requests if r.path.endswith("devices-scroll/v1")]
    assert len(scrolls) == 3 and "offset" not in scrolls[0].query
    assert falcon.tokens_issued == 1


async def test_key_hostname_lower_cases_and_refuses_a_host_without_one(
    tmp_path: Path, falcon: FakeCrowdStrike
) -> None:
    """key: hostname keys by the lower-cased hostname; a host that has none is refused, with why."""
    [named] = falcon.add_hosts(1)
    [nameless] = falcon.add_hosts(1)
    nameless.hostname = None
    async with opened(falcon, tmp_path, key="hostname") as source:
        [page] = await pages(source)
    assert [r.key for r in page.records] == [named.hostname.lower()]  # type: ignore[union-attr]
    assert page.refused == [(f"host {nameless.aid}", "the host has no hostname (key: hostname)")]


async def test_a_host_without_a_score_is_refused_and_out_of_range_passes(
    tmp_path: Path, falcon: FakeCrowdStrike
) -> None:
    """No assessment (CrowdStrike's 404 for that id) or a non-number: refused; 150 is passed as is."""
    [unassessed] = falcon.add_hosts(1, overall=None)
    [garbled] = falcon.add_hosts(1, overall="high")
    [high] = falcon.add_hosts(1, overall=150)
    [fine] = falcon.add_hosts(1, overall=1)
    async with opened(falcon, tmp_path) as source:
        [page] = await pages(source)
    assert {r.key: r.score for r in page.records} == {high.aid: 150.0, fine.aid: 1.0}
    assert sorted(page.refused) == sorted(
        [
            (f"host {unassessed.aid}", "no Zero Trust Assessment for this host"),
            (f"host {garbled.aid}", 'its assessment has no number as overall score: "high"'),
        ]
    )


async def test_the_token_is_cached_and_renewed_once_on_401(tmp_path: Path, falcon: FakeCrowdStrike) -> None:
    """Two polls share one token; a token lapsed early (401) is renewed once and the poll goes on."""
    falcon.add_hosts(3)
    async with opened(falcon, tmp_path) as source:
        await pages(source)
        await pages(source)
        assert falcon.tokens_issued == 1
        falcon.expire_tokens()
        [page] = await pages(source)
    assert len(page.records) == 3 and falcon.tokens_issued == 2
    assert [r.status for r in falcon.requests if r.path.endswith("scroll/v1")][-2:] == [401, 200]


async def test_refused_credentials_are_an_auth_error(tmp_path: Path, falcon: FakeCrowdStrike) -> None:
    """A rotated secret: the token endpoint's 403 is an AuthError naming the client, never the secret."""
    falcon.add_hosts(1)
    secret = falcon.client_secret
    falcon.refuse_credentials()
    async with opened(falcon, tmp_path, client_secret=secret) as source:
        with pytest.raises(AuthError) as caught:
            await pages(source)
    assert "access_denied" not in str(caught.value) and secret not in str(caught.value)
    assert f"client_id {falcon.client_id}" in str(caught.value)


async def test_a_missing_scope_403_is_an_auth_error(tmp_path: Path, falcon: FakeCrowdStrike) -> None:
    """The API's 403 (a client without the ZTA scope) is an AuthError quoting CrowdStrike's message."""
    falcon.add_hosts(1)
    falcon.fail_next(1, 403, after=1)  # the scroll passes, the assessments are forbidden
    async with opened(falcon, tmp_path) as source:
        with pytest.raises(AuthError, match="403 scripted failure"):
            await pages(source)


async def test_429_waits_for_x_ratelimit_retryafter(tmp_path: Path, falcon: FakeCrowdStrike) -> None:
    """A 429 is transient, retry_after from X-RateLimit-RetryAfter (epoch seconds); the next poll reads."""
    falcon.add_hosts(2)
    falcon.fail_next(1, 429, retry_after=30)
    async with opened(falcon, tmp_path) as source:
        with pytest.raises(TransientError) as caught:
            await pages(source)
        assert caught.value.retry_after is not None and 25 <= caught.value.retry_after <= 31
        [page] = await pages(source)
    assert len(page.records) == 2


async def test_a_short_429_is_waited_out_inside_the_poll(tmp_path: Path, falcon: FakeCrowdStrike) -> None:
    """A 429 whose X-RateLimit-RetryAfter has already come is retried in the poll, which completes."""
    falcon.add_hosts(2)
    falcon.fail_next(1, 429, retry_after=0, after=1)
    async with opened(falcon, tmp_path) as source:
        [page] = await pages(source)
    assert len(page.records) == 2
    assert [r.status for r in falcon.requests if "assessments" in r.path] == [429, 200]


def test_rate_limit_wait_reads_epoch_seconds_then_retry_after() -> None:
    """X-RateLimit-RetryAfter is a moment (epoch seconds); without it, Retry-After in seconds."""
    assert rate_limit_wait({"X-RateLimit-RetryAfter": "1000"}, now=990.0) == 10.0
    assert rate_limit_wait({"X-RateLimit-RetryAfter": "900"}, now=990.0) == 0.0
    assert rate_limit_wait({"X-RateLimit-RetryAfter": "soon", "Retry-After": "7"}, now=0.0) == 7.0
    assert rate_limit_wait({}, now=0.0) is None


async def test_5xx_and_garbage_bodies_are_transient(tmp_path: Path, falcon: FakeCrowdStrike) -> None:
    """A 503, a 200 that is not JSON, and a 200 of another shape each fail the poll as transient."""
    falcon.add_hosts(1)
    falcon.fail_next(1, 503)
    falcon.fail_next(1, 200, body=b"<html>maintenance</html>")
    falcon.fail_next(1, 200, body=b'{"resources": "nope"}')
    async with opened(falcon, tmp_path) as source:
        for expected in ("HTTP 503", "not JSON: <html>maintenance</html>", "no {resources: [...]}"):
            with pytest.raises(TransientError, match=expected.replace("[", r"\[").replace("]", r"\]")):
                await pages(source)


async def test_an_oversize_body_is_not_read(tmp_path: Path, falcon: FakeCrowdStrike) -> None:
    """A body past max_body fails the poll (transient) without being read whole."""
    falcon.add_hosts(1)
    falcon.fail_next(1, 200, body=b'{"resources": [' + b'"a",' * 5000 + b'"a"]}')
    async with opened(falcon, tmp_path, max_body=4096) as source:
        with pytest.raises(TransientError, match="more than 4,096 bytes"):
            await pages(source)


async def test_a_peer_that_stops_answering_mid_poll_times_out(
    tmp_path: Path, falcon: FakeCrowdStrike
) -> None:
    """The assessments request hangs: the poll fails as transient once the timeout passes."""
    falcon.add_hosts(3)
    falcon.hold_next(1)
    async with opened(falcon, tmp_path, timeout=0.3) as source:
        with pytest.raises(TransientError, match="no answer in time"):
            await pages(source)
    falcon.release_held()


def test_the_declared_scale_reproduces_ce_score_times_ten() -> None:
    """The linear map of the declared scale onto 0-1000 equals CE's score * 10 on ZTA's range."""
    scale = CrowdStrikeZtaSource.scale
    for raw in (1, 37, 50, 99, 100):
        linear = (raw - scale.low) / (scale.high - scale.low) * 1000
        assert linear == pytest.approx(raw * 10) and scale.higher_is_safer


def test_an_entry_of_the_scroll_that_is_no_id_is_refused_alone() -> None:
    """A scroll page with a number among its ids: the ids are read, the number refused."""
    body = {"resources": ["a" * 32, 7, ""], "meta": {"pagination": {"offset": "x", "total": 3}}}
    assert scroll_page(body, 10) == (["a" * 32], "x", 3)
    assert unreadable_ids(body) == [("a host id", "not a string: 7"), ("a host id", 'not a string: ""')]


@given(scroll=JSON, found=JSON, hosts=JSON, ids=st.lists(st.text(min_size=1, max_size=8), max_size=5))
def test_any_json_from_the_api_is_read_or_transient(
    scroll: Any, found: Any, hosts: Any, ids: list[str]
) -> None:
    """Whatever JSON each call answers, reading it gives records and refusals or raises TransientError."""
    try:
        scroll_page(scroll, 5000)
        unreadable_ids(scroll)
        page = records(ids, assessments(found), details(hosts), key="hostname")
    except TransientError:
        return
    assert len(page.records) + len(page.refused) == len(ids)
