"""The ``teams`` ticket destination against the fake Teams (legacy connector and Workflows) on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pydantic
import pytest
from ce_teams import TeamsSink
from ce_teams.fake import FakeTeams
from ce_teams.sink import MAX_MESSAGE_BYTES, message
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from ce_daemon.errors import AuthError, ComponentConfigError, PermanentError, TransientError
from ce_daemon.plugin import PluginContext, Ticket, TicketRef
from ce_daemon.testing.sinks import closed_port


def ticket(count: int = 1, **changes: Any) -> Ticket:
    values: dict[str, Any] = {
        "key": "policy-user2",
        "rule": "Policy violations",
        "title": "Policy: upload to personal Drive blocked",
        "description": "user2@example.com tried to upload **budget.xlsx**",
        "severity": "medium",
        "fields": {"User": "user2@example.com", "App": "Google Drive"},
        "alert": {"_id": "a2"},
        "count": count,
    }
    return Ticket(**{**values, **changes})


@pytest.fixture
async def teams() -> AsyncIterator[FakeTeams]:
    fake = FakeTeams()
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(tmp_path: Path, url: str) -> AsyncIterator[TeamsSink]:
    sink = TeamsSink(
        TeamsSink.Options.model_validate({"webhook_url": url}),
        PluginContext(name="teams", base_dir=tmp_path, data_dir=tmp_path),
    )
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


async def raised(call: Any) -> Exception:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - each test asserts which error it expected
        await call
    return caught.value


def facts(card: dict[str, Any]) -> dict[str, str]:
    factset = next(b for b in card["body"] if b["type"] == "FactSet")
    return {f["title"]: f["value"] for f in factset["facts"]}


@pytest.mark.parametrize("kind", ["connector", "flow"])
async def test_create_posts_an_adaptive_card(tmp_path: Path, teams: FakeTeams, kind: str) -> None:
    """A legacy connector (200 `1`) and a Workflows trigger (202) both take the Adaptive Card message."""
    url = teams.new_connector() if kind == "connector" else teams.new_flow()
    async with opened(tmp_path, url) as sink:
        ref = await sink.create(ticket())
    assert ref == TicketRef(id="policy-user2")
    assert teams.requests[-1].status == (200 if kind == "connector" else 202)
    [card] = teams.cards
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    title, description, _ = card["body"]
    assert title["text"] == "Policy: upload to personal Drive blocked" and title["color"] == "Warning"
    assert description["text"] == "user2@example.com tried to upload **budget.xlsx**"
    assert facts(card) == {
        "Severity": "medium",
        "Rule": "Policy violations",
        "Seen": "seen once",
        "User": "user2@example.com",
        "App": "Google Drive",
    }
    sent = orjson.loads(teams.requests[-1].body)
    assert sent["type"] == "message"
    assert sent["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"


async def test_update_posts_a_new_card_with_the_count(tmp_path: Path, teams: FakeTeams) -> None:
    """A webhook cannot edit: a duplicate posts another card saying how often the alert was seen."""
    async with opened(tmp_path, teams.new_flow()) as sink:
        ref = await sink.create(ticket())
        assert await sink.update(ref, ticket(count=6)) == ref
    assert len(teams.cards) == 2
    assert teams.cards[1]["body"][0]["text"].endswith("(seen 6 times)")
    assert facts(teams.cards[1])["Seen"] == "seen 6 times"


@pytest.mark.parametrize("kind", ["connector", "flow"])
async def test_429_is_transient_with_retry_after(tmp_path: Path, teams: FakeTeams, kind: str) -> None:
    """429 ('… returned HTTP error 429') is transient with Retry-After; the retry posts."""
    url = teams.new_connector() if kind == "connector" else teams.new_flow()
    teams.fail_next(status=429, retry_after=9)
    async with opened(tmp_path, url) as sink:
        caught = await raised(sink.create(ticket()))
        await sink.create(ticket())
    assert isinstance(caught, TransientError) and caught.retry_after == 9
    assert "HTTP error 429" in str(caught)
    assert len(teams.cards) == 1


async def test_throttling_said_with_a_200_is_transient(tmp_path: Path, teams: FakeTeams) -> None:
    """A legacy connector's 200 whose body says 'HTTP error 429' was not delivered: transient."""
    teams.throttle_with_200()
    async with opened(tmp_path, teams.new_connector()) as sink:
        caught = await raised(sink.create(ticket()))
    assert isinstance(caught, TransientError) and "HTTP error 429" in str(caught)
    assert teams.cards == []


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, b"Bad payload received by generic incoming webhook.", PermanentError),
        (500, None, TransientError),
        (502, None, TransientError),
        (503, None, TransientError),
    ],
)
async def test_answers_are_classified(
    tmp_path: Path, teams: FakeTeams, status: int, body: bytes | None, error: type[Exception]
) -> None:
    """400 is permanent, 5xx transient, each quoting what Teams said."""
    teams.fail_next(status=status, body=body)
    async with opened(tmp_path, teams.new_connector()) as sink:
        caught = await raised(sink.create(ticket()))
    assert type(caught) is error and f"HTTP {status}" in str(caught)


async def test_refused_signature_and_removed_webhook(tmp_path: Path, teams: FakeTeams) -> None:
    """A Workflows URL whose signature is refused is an AuthError; a removed webhook a config error."""
    flow = teams.new_flow()
    teams.refuse_credentials()
    async with opened(tmp_path, flow) as sink:
        caught = await raised(sink.create(ticket()))
    assert isinstance(caught, AuthError) and "DirectApiAuthorizationRequired" in str(caught)
    async with opened(tmp_path, f"{teams.url}/webhookb2/gone/IncomingWebhook/0123456789") as sink:
        caught = await raised(sink.create(ticket()))
    assert isinstance(caught, ComponentConfigError)
    assert teams.cards == []


async def test_a_huge_ticket_fits_under_the_28kb_cap(tmp_path: Path, teams: FakeTeams) -> None:
    """A description of a megabyte and many large fields are cut: the message stays under Teams' cap."""
    big = ticket(
        description="é" * 1_000_000, fields={f"f{i}": "x" * 5000 for i in range(40)}, title="t" * 2000
    )
    async with opened(tmp_path, teams.new_connector()) as sink:
        await sink.create(big)
    assert teams.requests[-1].wire_bytes <= MAX_MESSAGE_BYTES
    assert teams.cards[0]["body"][1]["text"].endswith("…")


async def test_webhook_url_and_signature_never_in_errors_or_logs(tmp_path: Path, teams: FakeTeams) -> None:
    """The webhook URL, its secret path and a Workflows `sig` appear in no error and no log line."""
    flow = teams.new_flow()
    sig = parse_qs(urlsplit(flow).query)["sig"][0]
    connector = teams.new_connector()
    secret = connector.rsplit("/", 1)[1]
    errors: list[str] = []
    with capture_logs() as logs:
        for url in (flow, connector):
            for status in (400, 429, 500):
                teams.fail_next(status=status, body=f"echo {url}".encode())  # a proxy quoting the request
                async with opened(tmp_path, url) as sink:
                    errors.append(str(await raised(sink.create(ticket()))))
        async with opened(tmp_path, flow.replace(teams.url, f"http://127.0.0.1:{closed_port()}")) as sink:
            errors.append(str(await raised(sink.create(ticket()))))
        teams.refuse_credentials()
        async with opened(tmp_path, flow) as sink:
            errors.append(str(await raised(sink.create(ticket()))))
    text = "\n".join(errors) + repr(logs)
    for value in (flow, sig, connector, secret):
        assert value not in text


def test_options_refuse_what_is_not_a_url_without_quoting_it() -> None:
    """A webhook_url that is not http(s) is refused; the message does not quote it, repr hides it."""
    with pytest.raises(pydantic.ValidationError) as caught:
        TeamsSink.Options.model_validate({"webhook_url": "teams-secret-value"})
    assert "teams-secret-value" not in repr([e["msg"] for e in caught.value.errors()])
    options = TeamsSink.Options.model_validate(
        {"webhook_url": "https://x.example/hook?sig=teams-secret-value"}
    )
    assert "teams-secret-value" not in repr(options)


@given(
    st.text(max_size=40_000),
    st.dictionaries(st.text(max_size=200), st.text(max_size=3000), max_size=30),
    st.integers(min_value=1, max_value=10**9),
)
def test_any_ticket_makes_a_card_under_the_cap(description: str, fields: dict[str, str], count: int) -> None:
    """Whatever the description, fields and count, the message is one Adaptive Card under the byte cap."""
    for repeat in (False, True):
        built = message(ticket(description=description, fields=fields, count=count), repeat=repeat)
        assert len(orjson.dumps(built)) <= MAX_MESSAGE_BYTES
        assert built["attachments"][0]["content"]["body"][1]["text"]


async def test_no_answer_in_time_is_transient(tmp_path: Path, teams: FakeTeams) -> None:
    """A webhook that does not answer within `timeout` is a transient failure."""
    teams.hold_next()
    url = teams.new_flow()
    sink = TeamsSink(
        TeamsSink.Options.model_validate({"webhook_url": url, "timeout": 0.2}),
        PluginContext(name="teams", base_dir=tmp_path, data_dir=tmp_path),
    )
    try:
        caught = await raised(sink.create(ticket()))
    finally:
        teams.release_held()
        await sink.close()
    assert isinstance(caught, TransientError) and "no answer in time" in str(caught)
