"""The ``slack`` ticket destination against the fake Slack on loopback: webhooks and the Web API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pydantic
import pytest
from ce_slack import SlackSink, escape_mrkdwn
from ce_slack.fake import FakeSlack
from ce_slack.message import mrkdwn
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from ce_daemon.errors import AuthError, ComponentConfigError, PermanentError, TransientError
from ce_daemon.plugin import PluginContext, Ticket, TicketRef
from ce_daemon.testing.sinks import closed_port


def ticket(count: int = 1, **changes: Any) -> Ticket:
    values: dict[str, Any] = {
        "key": "dlp-user1-example-com",
        "rule": "DLP <high>",
        "title": "DLP: card numbers uploaded to Box",
        "description": "user1@example.com uploaded *cards.xlsx* <@U123> & <!channel>",
        "severity": "high",
        "fields": {"User": "user1@example.com", "App": "Box"},
        "alert": {"_id": "a1", "timestamp": 1_700_000_000},
        "count": count,
    }
    return Ticket(**{**values, **changes})


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(tmp_path: Path, **options: Any) -> AsyncIterator[SlackSink]:
    sink = SlackSink(
        SlackSink.Options.model_validate(options),
        PluginContext(name="slack", base_dir=tmp_path, data_dir=tmp_path),
    )
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


def api(
    slack: FakeSlack, tmp_path: Path, **options: Any
) -> contextlib.AbstractAsyncContextManager[SlackSink]:
    settings = {"token": slack.token, "channel": "#soc-alerts", "api_url": f"{slack.url}/api", **options}
    return opened(tmp_path, **settings)


async def raised(call: Any) -> Exception:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - each test asserts which error it expected
        await call
    return caught.value


# -- incoming webhook ------------------------------------------------------------------------------


async def test_webhook_posts_header_description_fields_and_context(tmp_path: Path, slack: FakeSlack) -> None:
    """A webhook create posts text and blocks: header (title), escaped description, fields, context."""
    async with opened(tmp_path, webhook_url=slack.new_webhook()) as sink:
        ref = await sink.create(ticket())
    assert ref == TicketRef(id="dlp-user1-example-com", state={"mode": "webhook"})
    [posted] = slack.posted
    header, section, fields, context = posted.blocks
    assert header["text"] == {"type": "plain_text", "text": "DLP: card numbers uploaded to Box"}
    assert section["text"]["text"] == (
        "user1@example.com uploaded *cards.xlsx* &lt;@U123&gt; &amp; &lt;!channel&gt;"
    )
    assert [f["text"] for f in fields["fields"]] == ["User\nuser1@example.com", "App\nBox"]
    assert [e["text"] for e in context["elements"]] == [
        "severity: high",
        "rule: DLP &lt;high&gt;",
        "seen once",
    ]
    assert posted.text.startswith("[high] DLP: card numbers")
    assert slack.requests[-1].headers["Content-Type"] == "application/json"


async def test_webhook_update_posts_a_short_new_message(tmp_path: Path, slack: FakeSlack) -> None:
    """A webhook cannot edit: a duplicate posts a new short message saying how often it was seen."""
    async with opened(tmp_path, webhook_url=slack.new_webhook()) as sink:
        ref = await sink.create(ticket())
        again = await sink.update(ref, ticket(count=3))
    assert again == ref
    assert len(slack.posted) == 2
    assert "seen 3 times" in slack.posted[1].text
    assert slack.posted[1].blocks[-1]["elements"][-1]["text"] == "seen 3 times"


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "invalid_payload", PermanentError),
        (403, "invalid_token", AuthError),
        (403, "action_prohibited", AuthError),
        (404, "channel_not_found", ComponentConfigError),
        (410, "channel_is_archived", ComponentConfigError),
        (500, "rollup_error", TransientError),
        (503, None, TransientError),
    ],
)
async def test_webhook_answers_are_classified(
    tmp_path: Path, slack: FakeSlack, status: int, code: str | None, error: type[Exception]
) -> None:
    """Each of Slack's webhook answers maps onto the error taxonomy, quoting Slack's reason."""
    url = slack.new_webhook()
    slack.fail_next(status=status, code=code)
    async with opened(tmp_path, webhook_url=url) as sink:
        caught = await raised(sink.create(ticket()))
    assert type(caught) is error
    assert f"HTTP {status}" in str(caught)
    assert url not in str(caught) and url.rsplit("/", 1)[1] not in str(caught)


async def test_webhook_revoked_archived_and_unknown_from_the_fake_itself(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """Unscripted: a revoked webhook is an AuthError, an archived channel a config error, nothing posted."""
    slack.add_channel("C0OLD", "old-alerts", archived=True)
    archived = slack.new_webhook("C0OLD")
    async with opened(tmp_path, webhook_url=archived) as sink:
        assert isinstance(await raised(sink.create(ticket())), ComponentConfigError)
    revoked = slack.new_webhook()
    slack.refuse_credentials()
    async with opened(tmp_path, webhook_url=revoked) as sink:
        assert isinstance(await raised(sink.create(ticket())), AuthError)
    async with opened(tmp_path, webhook_url=f"{slack.url}/services/T0/B0/not-a-hook") as sink:
        assert isinstance(await raised(sink.create(ticket())), AuthError)  # no_service: the URL is dead
    assert slack.posted == []


async def test_webhook_429_carries_retry_after(tmp_path: Path, slack: FakeSlack) -> None:
    """A webhook's 429 is transient with Slack's Retry-After; the next attempt posts."""
    url = slack.new_webhook()
    slack.fail_next(status=429, retry_after=7)
    async with opened(tmp_path, webhook_url=url) as sink:
        caught = await raised(sink.create(ticket()))
        assert isinstance(caught, TransientError) and caught.retry_after == 7
        await sink.create(ticket())
    assert len(slack.posted) == 1


async def test_webhook_200_that_is_not_ok_is_transient(tmp_path: Path, slack: FakeSlack) -> None:
    """A 200 whose body is not `ok` is not Slack's answer (a proxy's page): transient, not success."""
    url = slack.new_webhook()
    slack.fail_next(status=200, body=b"<html>portal login</html>")
    async with opened(tmp_path, webhook_url=url) as sink:
        caught = await raised(sink.create(ticket()))
    assert isinstance(caught, TransientError) and "not `ok`" in str(caught)


# -- Web API ---------------------------------------------------------------------------------------


async def test_api_create_posts_with_bearer_and_metadata_and_returns_channel_ts(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """chat.postMessage with the bearer token; the ref is the message's ts, its channel, its permalink."""
    async with api(slack, tmp_path) as sink:
        ref = await sink.create(ticket())
    [posted] = slack.posted
    assert ref.id == posted.ts
    assert ref.state == {"channel": "C0ALERTS", "ts": posted.ts}
    assert ref.url == f"https://fake-soc.slack.com/archives/C0ALERTS/p{posted.ts.replace('.', '')}"
    assert posted.metadata == {
        "event_type": "ce_daemon_ticket",
        "event_payload": {"key": "dlp-user1-example-com", "rule": "DLP <high>"},
    }
    post = next(r for r in slack.requests if r.path == "/api/chat.postMessage")
    assert post.headers["Authorization"] == f"Bearer {slack.token}"
    assert orjson.loads(post.body)["channel"] == "#soc-alerts"


async def test_api_update_edits_the_earlier_message_with_the_count(tmp_path: Path, slack: FakeSlack) -> None:
    """A duplicate edits the message in place (chat.update): one message, now 'seen 4 times'."""
    async with api(slack, tmp_path, permalink=False) as sink:
        ref = await sink.create(ticket())
        again = await sink.update(ref, ticket(count=4))
    assert again == ref and ref.url == ""
    [posted] = slack.posted
    assert posted.edits == 1
    assert posted.blocks[-1]["elements"][-1]["text"] == "seen 4 times"
    assert "seen 4 times" in posted.text
    assert [r.path for r in slack.requests] == ["/api/chat.postMessage", "/api/chat.update"]


async def test_api_update_of_a_deleted_message_posts_a_new_one(tmp_path: Path, slack: FakeSlack) -> None:
    """chat.update answering message_not_found (someone deleted it) posts the message anew: a new ref."""
    async with api(slack, tmp_path) as sink:
        ref = await sink.create(ticket())
        slack.delete(ref.state["channel"], ref.state["ts"])
        again = await sink.update(ref, ticket(count=2))
    assert again.id != ref.id
    assert len(slack.posted) == 2 and slack.posted[1].ts == again.id


async def test_api_update_of_a_webhook_ref_posts_a_new_message(tmp_path: Path, slack: FakeSlack) -> None:
    """A ref made by a webhook (no channel or ts) is updated by posting through the Web API."""
    async with api(slack, tmp_path) as sink:
        again = await sink.update(TicketRef(id="k", state={"mode": "webhook"}), ticket(count=2))
    assert again.state["ts"] == slack.posted[0].ts


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("invalid_auth", AuthError),
        ("not_authed", AuthError),
        ("account_inactive", AuthError),
        ("token_revoked", AuthError),
        ("missing_scope", AuthError),
        ("channel_not_found", ComponentConfigError),
        ("not_in_channel", ComponentConfigError),
        ("is_archived", ComponentConfigError),
        ("msg_too_long", PermanentError),
        ("invalid_blocks", PermanentError),
        ("internal_error", TransientError),
        ("fatal_error", TransientError),
    ],
)
async def test_api_200_ok_false_is_classified(
    tmp_path: Path, slack: FakeSlack, code: str, error: type[Exception]
) -> None:
    """HTTP 200 with {"ok": false, "error": code} is an error, of the kind its code says."""
    slack.fail_next(status=200, code=code)
    async with api(slack, tmp_path) as sink:
        caught = await raised(sink.create(ticket()))
    assert type(caught) is error
    assert code in str(caught)
    assert slack.posted == []


async def test_api_ratelimited_carries_retry_after_on_200_and_on_429(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """`ratelimited` is transient with Retry-After, whether Slack says it with HTTP 429 or 200 ok:false."""
    slack.fail_next(status=429, retry_after=30)
    slack.fail_next(status=200, code="ratelimited", retry_after=3)
    async with api(slack, tmp_path) as sink:
        for wait in (30, 3):
            caught = await raised(sink.create(ticket()))
            assert isinstance(caught, TransientError) and caught.retry_after == wait
        await sink.create(ticket())
    assert len(slack.posted) == 1


async def test_api_refusals_from_the_fake_itself(tmp_path: Path, slack: FakeSlack) -> None:
    """Unscripted: unknown channel, bot not in the channel, archived channel, wrong token."""
    slack.add_channel("C0PRIV", "private", bot_member=False)
    slack.add_channel("C0ARCH", "archive", archived=True)
    for channel, code in (
        ("#nowhere", "channel_not_found"),
        ("C0PRIV", "not_in_channel"),
        ("C0ARCH", "is_archived"),
    ):
        async with api(slack, tmp_path, channel=channel) as sink:
            caught = await raised(sink.create(ticket()))
        assert isinstance(caught, ComponentConfigError) and code in str(caught)
    async with api(slack, tmp_path, token="xoxb-wrong-token-000000") as sink:
        caught = await raised(sink.create(ticket()))
        health = await sink.health()
    assert isinstance(caught, AuthError) and "invalid_auth" in str(caught)
    assert not health.ok and "invalid_auth" in health.detail


async def test_api_health_uses_auth_test(tmp_path: Path, slack: FakeSlack) -> None:
    """health() calls auth.test: healthy with the workspace's name."""
    async with api(slack, tmp_path) as sink:
        health = await sink.health()
    assert health.ok and "Fake SOC" in health.detail


async def test_api_5xx_and_garbage_are_transient(tmp_path: Path, slack: FakeSlack) -> None:
    """A 503, a 200 that is not JSON, and JSON without `ok` are all transient (nothing known posted)."""
    slack.fail_next(status=503)
    slack.fail_next(status=200, body=b"<html>gateway</html>")
    slack.fail_next(status=200, body=b'{"hello": "proxy"}')
    async with api(slack, tmp_path) as sink:
        for _ in range(3):
            assert isinstance(await raised(sink.create(ticket())), TransientError)


async def test_long_texts_fit_block_kit_limits(tmp_path: Path, slack: FakeSlack) -> None:
    """A long title, description and many fields are cut to Block Kit's limits: Slack takes the message."""
    big = ticket(
        title="T" * 500,
        description="<&>" * 5000,
        fields={f"field{i}": "v" * 5000 for i in range(25)},
    )
    async with api(slack, tmp_path) as sink:
        await sink.create(big)
    header, section, fields, _ = slack.posted[0].blocks
    assert len(header["text"]["text"]) == 150
    assert len(section["text"]["text"]) <= 3000 and section["text"]["text"].endswith(";…")
    assert len(fields["fields"]) == 10


# -- secrets ---------------------------------------------------------------------------------------


async def test_webhook_url_and_token_never_in_errors_or_logs(tmp_path: Path, slack: FakeSlack) -> None:
    """The webhook URL (its secret path) and the token appear in no error and no log line."""
    url = slack.new_webhook()
    secret = url.rsplit("/", 1)[1]
    dead = f"http://127.0.0.1:{closed_port()}/services/T0/B0/{secret}"
    errors: list[str] = []
    with capture_logs() as logs:
        for status in (400, 403, 404, 429, 500):
            slack.fail_next(status=status)
            async with opened(tmp_path, webhook_url=url) as sink:
                errors.append(str(await raised(sink.create(ticket()))))
        async with opened(tmp_path, webhook_url=dead) as sink:
            errors.append(str(await raised(sink.create(ticket()))))
        slack.fail_next(status=200, code="invalid_auth")
        async with api(slack, tmp_path) as sink:
            errors.append(str(await raised(sink.create(ticket()))))
            slack.fail_next(status=200, code="internal_error", after=1)
            ref = await sink.create(ticket())  # the permalink failed: logged, not raised
            assert ref.url == ""
        async with opened(
            tmp_path, token=slack.token, channel="C0", api_url=f"http://127.0.0.1:{closed_port()}"
        ) as sink:
            errors.append(str(await raised(sink.create(ticket()))))
    text = "\n".join(errors) + repr(logs)
    assert logs, "the failed permalink was logged"
    for value in (url, secret, slack.token):
        assert value not in text
    assert "Slack webhook" in errors[5] and "127.0.0.1" in errors[5]  # where, without the secret path


def test_options_need_exactly_one_mode_and_never_quote_the_secret() -> None:
    """Webhook or token+channel, not both, not neither; no error message (the loader shows) quotes the URL."""
    secret_url = "https://hooks.slack.com/services/T0/B0/very-secret-part"
    for options in (
        {},
        {"webhook_url": secret_url, "token": "xoxb-1"},
        {"token": "xoxb-1"},
        {"webhook_url": secret_url, "channel": "#x"},
        {"webhook_url": "ftp://very-secret-part"},
    ):
        with pytest.raises(pydantic.ValidationError) as caught:
            SlackSink.Options.model_validate(options)
        assert "very-secret-part" not in repr([e["msg"] for e in caught.value.errors()])
    assert "very-secret-part" not in repr(SlackSink.Options.model_validate({"webhook_url": secret_url}))


# -- mrkdwn escaping -------------------------------------------------------------------------------


@given(st.text())
def test_escaped_text_has_no_markup_and_reads_back_the_same(text: str) -> None:
    """Escaped text holds no < or >, every & starts one of Slack's three escapes, and unescapes back."""
    escaped = escape_mrkdwn(text)
    assert "<" not in escaped and ">" not in escaped
    assert escaped.count("&") == sum(escaped.count(e) for e in ("&amp;", "&lt;", "&gt;"))
    assert _unescape(escaped) == text


@given(st.text(alphabet=st.sampled_from("ab&<>é\n*_")), st.integers(min_value=2, max_value=60))
def test_cut_text_stays_within_the_limit_and_never_splits_an_escape(text: str, limit: int) -> None:
    """mrkdwn(text, limit) is at most `limit` characters, a prefix of the escaped text (ellipsis aside)."""
    cut = mrkdwn(text, limit)
    assert len(cut) <= limit
    body = cut.removesuffix("…") if cut != escape_mrkdwn(text) else cut
    assert escape_mrkdwn(text).startswith(body)
    assert _unescape(body) == text[: len(_unescape(body))]


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


async def test_slow_and_oversized_answers_are_transient(tmp_path: Path, slack: FakeSlack) -> None:
    """An answer that does not come in time, and one larger than the sink reads, are transient."""
    slack.hold_next()
    async with api(slack, tmp_path, timeout=0.2) as sink:
        caught = await raised(sink.create(ticket()))
        slack.release_held()
    assert isinstance(caught, TransientError) and "no answer in time" in str(caught)
    slack.fail_next(status=200, body=b'{"ok": true, "pad": "' + b"x" * 400_000 + b'"}')
    async with api(slack, tmp_path) as sink:
        caught = await raised(sink.create(ticket()))
    assert isinstance(caught, TransientError) and "more than" in str(caught)


async def test_fake_takes_a_form_with_the_token_as_slack_does(slack: FakeSlack) -> None:
    """The fake's Web API also takes form-encoded calls with a `token` field (blocks as JSON text)."""

    form = {"token": slack.token, "channel": "C0ALERTS", "text": "hi", "blocks": orjson.dumps([]).decode()}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{slack.url}/api/chat.postMessage", data=form) as r,
    ):
        answer = await r.json()
    assert answer["ok"] is True and slack.posted[0].text == "hi"
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{slack.url}/api/chat.postMessage", data={}) as r,
    ):
        assert (r.status, await r.json()) == (200, {"ok": False, "error": "not_authed"})
