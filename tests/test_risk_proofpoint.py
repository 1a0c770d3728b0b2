"""The ``proofpoint`` risk source against the fake TAP People API on loopback."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ce_proofpoint import ProofpointSource
from ce_proofpoint.fake import FakeProofpoint
from ce_proofpoint.source import read_vap
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
        "identity": st.fixed_dictionaries(
            {}, optional={"emails": st.lists(st.emails() | SCALAR), "name": JSON}
        )
        | JSON,
        "threatStatistics": st.fixed_dictionaries({}, optional={"attackIndex": JSON}) | JSON,
    },
)


@pytest.fixture
async def tap() -> AsyncIterator[FakeProofpoint]:
    fake = FakeProofpoint()
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(tap: FakeProofpoint, tmp_path: Path, **options: Any) -> AsyncIterator[ProofpointSource]:
    settings = {"principal": tap.principal, "secret": tap.secret, "url": tap.url, **options}
    source = ProofpointSource(
        ProofpointSource.Options.model_validate(settings),
        PluginContext(name="proofpoint", base_dir=tmp_path, data_dir=tmp_path),
    )
    await source.open()
    try:
        yield source
    finally:
        await source.close()


async def pages(source: ProofpointSource) -> list[RiskPage]:
    return [page async for page in source.pull()]


async def test_vap_are_paged_and_each_email_is_a_record(tmp_path: Path, tap: FakeProofpoint) -> None:
    """5 people, size 2: pages 1-3 (totalVapUsers reached), every email of a person a record of its index."""
    tap.add_user("CFO@Example.com", "cfo.alias@example.com", attack_index=2190, vip=True)
    for n in range(4):
        tap.add_user(f"p{n}@example.com", attack_index=100 * n)
    async with opened(tap, tmp_path, page_size=2, window=90) as source:
        got = await pages(source)
    assert [[(r.key, r.score) for r in p.records] for p in got] == [
        [("cfo@example.com", 2190.0), ("cfo.alias@example.com", 2190.0), ("p3@example.com", 300.0)],
        [("p2@example.com", 200.0), ("p1@example.com", 100.0)],
        [("p0@example.com", 0.0)],
    ]
    assert got[0].records[0].attributes == {
        "name": "Person 1",
        "department": "Finance",
        "title": "Controller",
        "vip": "true",
    }
    assert [dict(r.query) for r in tap.requests] == [
        {"window": "90", "size": "2", "page": str(n)} for n in (1, 2, 3)
    ]
    expected = base64.b64encode(f"{tap.principal}:{tap.secret}".encode()).decode()
    assert all(r.headers["Authorization"] == f"Basic {expected}" for r in tap.requests)


async def test_emails_first_keeps_one_record_per_person(tmp_path: Path, tap: FakeProofpoint) -> None:
    """emails: first keys a person by their first email only."""
    tap.add_user("a@example.com", "b@example.com", attack_index=7)
    async with opened(tap, tmp_path, emails="first") as source:
        [page] = await pages(source)
    assert [r.key for r in page.records] == ["a@example.com"]


async def test_people_without_an_index_or_email_are_refused(tmp_path: Path, tap: FakeProofpoint) -> None:
    """No attackIndex, a string, no email; and an email seen twice: refused with why."""
    tap.add_user("none@example.com", attack_index=...)
    tap.add_user("text@example.com", attack_index="lots")
    tap.add_user(attack_index=50)
    tap.add_user("ok@example.com", attack_index=40)
    tap.add_user("OK@example.com", attack_index=30)
    async with opened(tap, tmp_path) as source:
        [page] = await pages(source)
    assert [(r.key, r.score) for r in page.records] == [("ok@example.com", 40.0)]
    guid = tap.users[2]["identity"]["guid"]
    assert sorted(page.refused) == sorted(
        [
            ("user none@example.com", "no attackIndex"),
            ("user text@example.com", 'attackIndex is not a number: "lots"'),
            (f"user {guid}", "no email address in identity.emails"),
            ("user ok@example.com", "listed twice in one poll (the first one is kept)"),
        ]
    )


async def test_429_after_the_daily_limit_is_transient(tmp_path: Path, tap: FakeProofpoint) -> None:
    """Past the 50 requests a day, Proofpoint's 429 (plain text, no Retry-After) fails the poll, transient."""
    tap.add_user("a@example.com")
    tap.daily_limit = 1
    async with opened(tap, tmp_path) as source:
        await pages(source)
        with pytest.raises(TransientError, match="HTTP 429: Too many requests") as caught:
            await pages(source)
    assert caught.value.retry_after is None


async def test_a_scripted_429_honours_retry_after_and_5xx_is_transient(
    tmp_path: Path, tap: FakeProofpoint
) -> None:
    """A 429 with Retry-After carries it; a 500 is transient too; then the poll reads."""
    tap.add_user("a@example.com")
    tap.fail_next(1, 429, retry_after=60)
    tap.fail_next(1, 500)
    async with opened(tap, tmp_path) as source:
        with pytest.raises(TransientError) as caught:
            await pages(source)
        assert caught.value.retry_after == 60.0
        with pytest.raises(TransientError, match="HTTP 500: Internal Server Error"):
            await pages(source)
        [page] = await pages(source)
    assert [r.key for r in page.records] == ["a@example.com"]


async def test_refused_credentials_are_an_auth_error(tmp_path: Path, tap: FakeProofpoint) -> None:
    """A rotated secret: 401 is an AuthError, and neither the secret nor its basic encoding is quoted."""
    secret = tap.secret
    tap.refuse_credentials()
    async with opened(tap, tmp_path, secret=secret) as source:
        with pytest.raises(AuthError, match="HTTP 401") as caught:
            await pages(source)
    encoded = base64.b64encode(f"{tap.principal}:{secret}".encode()).decode()
    assert secret not in str(caught.value) and encoded not in str(caught.value)


async def test_garbage_and_oversize_bodies_are_transient(tmp_path: Path, tap: FakeProofpoint) -> None:
    """HTML, a list instead of the object, and a body past max_body each fail the poll (transient)."""
    tap.fail_next(1, 200, body=b"<html>login</html>")
    tap.fail_next(1, 200, body=b"[]")
    tap.fail_next(1, 200, body=b'{"users": [' + b"{}," * 3000 + b"{}]}")
    async with opened(tap, tmp_path, max_body=4096) as source:
        for expected in ("not JSON: <html>login</html>", "no {users:", "more than 4,096 bytes"):
            with pytest.raises(TransientError, match=expected.replace("{", r"\{")):
                await pages(source)


async def test_a_peer_that_hangs_times_out(tmp_path: Path, tap: FakeProofpoint) -> None:
    """The request is held: the poll fails as transient once the timeout passes."""
    tap.hold_next(1)
    async with opened(tap, tmp_path, timeout=0.3) as source:
        with pytest.raises(TransientError, match="no answer in time"):
            await pages(source)
    tap.release_held()


async def test_health_spends_no_request(tmp_path: Path, tap: FakeProofpoint) -> None:
    """Health makes no call: the People API's 50 requests a day are kept for polls."""
    async with opened(tap, tmp_path) as source:
        assert (await source.health()).ok
    assert tap.requests == []


def test_the_declared_scale_reproduces_ce_population_formula() -> None:
    """Population min-max, inverted, onto 1-1000: CE's (1 - (x - min)/(max - min)) * 999 + 1 at the edges."""
    scale = ProofpointSource.scale
    assert scale.population and not scale.higher_is_safer
    population = [0.0, 250.0, 1000.0, 4000.0]
    low, high = min(population), max(population)
    ce = [(1 - (x - low) / (high - low)) * 999 + 1 for x in population]
    assert ce[0] == 1000 and ce[-1] == 1 and ce == sorted(ce, reverse=True)


@given(
    body=JSON
    | st.fixed_dictionaries({"users": st.lists(USER | JSON, max_size=5)}, optional={"totalVapUsers": JSON})
)
def test_any_json_answer_is_read_or_transient(body: Any) -> None:
    """Whatever JSON the API answers, reading it gives records and refusals or raises TransientError."""
    try:
        page, count, total = read_vap(body, set())
    except TransientError:
        assert not (isinstance(body, dict) and isinstance(body.get("users"), list))
        return
    assert count == len(body["users"]) and (total is None or isinstance(total, int))
    assert all(isinstance(r.score, float) for r in page.records)
