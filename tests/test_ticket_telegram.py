"""The `telegram` ticket destination against a fake Bot API on loopback: send, edit, errors, no leak."""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ce_telegram import TelegramOptions, TelegramSink, render
from ce_telegram.fake import EntityError, FakeTelegram, parse_entities, utf16_units
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from ce_daemon.plugin import (
    AuthError,
    ComponentConfigError,
    PermanentError,
    PluginContext,
    Ticket,
    TicketRef,
    TransientError,
)

CHAT = -1001234567890


def ticket(count: int = 1, **changes: Any) -> Ticket:
    values: dict[str, Any] = {
        "key": "rule-1-abc123",
        "rule": "DLP to Telegram",
        "title": "DLP violation by <alice@example.com> & co",
        "description": "File upload of secrets.xlsx to Dropbox",
        "severity": "high",
        "fields": {"user": "alice@example.com", "app": "Dropbox"},
        "alert": {"_id": "a1"},
        "count": count,
    }
    values.update(changes)
    return Ticket(**values)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(chats=(CHAT,))
    async with server:
        yield server


def make(fake: FakeTelegram, tmp_path: Path, **options: Any) -> TelegramSink:
    values: dict[str, Any] = {"token": fake.token, "chat_id": CHAT, "api_url": fake.url, "timeout": 5}
    values.update(options)
    return TelegramSink(TelegramOptions.model_validate(values), PluginContext("tg", tmp_path, tmp_path))


@pytest.fixture
async def sink(fake: FakeTelegram, tmp_path: Path) -> AsyncIterator[TelegramSink]:
    plugin = make(fake, tmp_path)
    await plugin.open()
    try:
        yield plugin
    finally:
        await plugin.close()


def no_token(fake: FakeTelegram, exc: BaseException) -> None:
    text = str(exc) + "".join(traceback.format_exception(exc))
    assert fake.token not in text
    assert fake.token.split(":", 1)[1] not in text


async def test_health_and_create_send_one_html_message(fake: FakeTelegram, sink: TelegramSink) -> None:
    """health asks getMe; create sends one HTML message, escaped, link previews off, and returns its ids."""
    assert (await sink.health()).ok
    ref = await sink.create(ticket())
    [message] = fake.sent()
    assert ref.id == str(message.message_id)
    assert ref.state == {"chat_id": str(CHAT), "message_id": ref.id}
    assert ref.url == f"https://t.me/c/1234567890/{ref.id}"
    assert message.text.startswith("DLP violation by <alice@example.com> & co\n")
    assert "&lt;alice@example.com&gt; &amp; co" in message.html
    request = fake.requests[-1]
    assert request.path.endswith("/sendMessage")
    assert b'"parse_mode":"HTML"' in request.body and b'"is_disabled":true' in request.body


async def test_update_edits_the_earlier_message_with_the_count(
    fake: FakeTelegram, sink: TelegramSink
) -> None:
    """A duplicate edits the same message to show the count; no second message is sent."""
    ref = await sink.create(ticket())
    again = await sink.update(ref, ticket(count=3))
    assert again == ref
    [message] = fake.sent()
    assert message.edits == 1 and "Seen 3 times" in message.text


async def test_update_with_the_same_text_is_success(fake: FakeTelegram, sink: TelegramSink) -> None:
    """Telegram's "message is not modified" (an edit replayed after a lost answer) counts as done."""
    ref = await sink.create(ticket())
    await sink.update(ref, ticket(count=2))
    assert await sink.update(ref, ticket(count=2)) == ref
    assert fake.requests[-1].status == 400 and len(fake.sent()) == 1


async def test_update_of_a_message_gone_sends_a_new_one(fake: FakeTelegram, sink: TelegramSink) -> None:
    """A message that can no longer be edited is replaced by a new message (a new ref)."""
    ref = await sink.create(ticket())
    fake.messages.clear()
    again = await sink.update(ref, ticket(count=2))
    assert again.id != ref.id and len(fake.sent()) == 1


async def test_update_without_state_sends_a_new_message(fake: FakeTelegram, sink: TelegramSink) -> None:
    """A ref that carries no message id (from another version) is answered with a new message."""
    await sink.update(TicketRef(id="x"), ticket(count=2))
    assert len(fake.sent()) == 1


async def test_429_is_transient_with_retry_after(fake: FakeTelegram, sink: TelegramSink) -> None:
    """{"ok": false, "error_code": 429, "parameters": {"retry_after": 7}} → TransientError(retry_after=7)."""
    fake.fail_next(status=429, retry_after=7)
    with pytest.raises(TransientError) as caught:
        await sink.create(ticket())
    assert caught.value.retry_after == 7
    assert "Too Many Requests" in str(caught.value)
    await sink.create(ticket())
    assert len(fake.sent()) == 1


async def test_5xx_and_garbage_are_transient(fake: FakeTelegram, sink: TelegramSink) -> None:
    """A 502 and a 200 whose body is not JSON are both transient."""
    fake.fail_next(status=502)
    with pytest.raises(TransientError):
        await sink.create(ticket())
    fake.fail_next(status=200, body=b"<html>proxy</html>")
    with pytest.raises(TransientError, match="not JSON"):
        await sink.create(ticket())


async def test_oversize_answer_is_refused(fake: FakeTelegram, sink: TelegramSink) -> None:
    """An answer of more than a megabyte is not read."""
    fake.fail_next(status=200, body=b"[" + b"0," * 600_000 + b"0]")
    with pytest.raises(TransientError, match="more than"):
        await sink.create(ticket())


async def test_revoked_token_is_auth_error_without_the_token(fake: FakeTelegram, tmp_path: Path) -> None:
    """401 Unauthorized → AuthError; neither the error, its traceback nor the logs carry the token."""
    plugin = make(fake, tmp_path)
    token = fake.token
    fake.refuse_credentials()
    try:
        with capture_logs() as logs, pytest.raises(AuthError) as caught:
            await plugin.create(ticket())
        health = await plugin.health()
    finally:
        await plugin.close()
    assert token not in str(caught.value) and token not in repr(logs)
    assert not health.ok and token not in health.detail and "Unauthorized" in health.detail


async def test_unknown_chat_is_a_config_error(fake: FakeTelegram, tmp_path: Path) -> None:
    """400 "chat not found" → ComponentConfigError (fix chat_id), not a per-ticket refusal."""
    plugin = make(fake, tmp_path, chat_id=42)
    try:
        with pytest.raises(ComponentConfigError, match="chat not found"):
            await plugin.create(ticket())
    finally:
        await plugin.close()


async def test_blocked_bot_is_a_config_error(fake: FakeTelegram, sink: TelegramSink) -> None:
    """403 "bot was blocked by the user" → ComponentConfigError."""
    fake.blocked.add(str(CHAT))
    with pytest.raises(ComponentConfigError, match="blocked"):
        await sink.create(ticket())


async def test_other_400_is_permanent(fake: FakeTelegram, sink: TelegramSink) -> None:
    """Another 400 (Telegram refusing this message) → PermanentError."""
    fake.fail_next(status=400, message="Bad Request: can't parse entities: whatever")
    with pytest.raises(PermanentError, match="parse entities"):
        await sink.create(ticket())


async def test_transport_failures_never_quote_the_token(fake: FakeTelegram, tmp_path: Path) -> None:
    """A peer that does not answer in time, and one that is gone: transient, and the token is nowhere."""
    plugin = make(fake, tmp_path, timeout=0.2)
    try:
        fake.hold_next()
        with capture_logs() as logs, pytest.raises(TransientError) as slow:
            await plugin.create(ticket())
        fake.release_held()
        no_token(fake, slow.value)
        await fake.stop()
        with pytest.raises(TransientError) as down:
            await plugin.create(ticket())
        no_token(fake, down.value)
        assert fake.token not in repr(logs)
    finally:
        await plugin.close()


async def test_an_answer_echoing_the_token_is_scrubbed(fake: FakeTelegram, sink: TelegramSink) -> None:
    """A proxy quoting our URL back: the token is replaced in the excerpt."""
    fake.fail_next(status=400, message=f"Bad Request: /bot{fake.token}/sendMessage is odd")
    with pytest.raises(PermanentError) as caught:
        await sink.create(ticket())
    no_token(fake, caught.value)
    assert "[REDACTED]" in str(caught.value)


def test_chat_id_and_api_url_are_validated(tmp_path: Path) -> None:
    """A chat is a number or an @username; api_url is an http(s) base without a query."""
    with pytest.raises(ValueError, match="chat_id"):
        TelegramOptions.model_validate({"token": "1:x", "chat_id": "my chat"})
    with pytest.raises(ValueError, match="api_url"):
        TelegramOptions.model_validate({"token": "1:x", "chat_id": 1, "api_url": "ftp://x"})
    assert TelegramOptions.model_validate({"token": "1:x", "chat_id": "@alerts_channel"}).chat_id


def test_a_long_message_is_cut_within_4096_units() -> None:
    """A description of 10,000 ampersands is cut with an ellipsis; the markup stays within the limit."""
    text = render(ticket(description="&" * 10_000))
    assert utf16_units(text) <= 4096 and text.endswith("…")
    assert parse_entities(text).startswith("DLP violation")


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=3000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(title=_TEXT, description=_TEXT, fields=st.dictionaries(_TEXT, _TEXT, max_size=4))
def test_rendering_never_breaks_markup_or_the_limit(
    title: str, description: str, fields: dict[str, str]
) -> None:
    """Whatever the alert holds, the message is well-formed Telegram HTML within 4,096 UTF-16 units."""
    text = render(ticket(title=title, description=description, fields=fields))
    assert utf16_units(text) <= 4096
    try:
        shown = parse_entities(text)
    except EntityError as exc:  # pragma: no cover - the assertion message says what broke
        pytest.fail(f"{exc}: {text[:200]!r}")
    assert shown.strip()
    if not text.endswith("…"):
        visible = "".join(char for char in description if char >= " " or char in "\n\t")
        assert visible.strip() in shown


async def test_ok_without_a_message_is_transient(fake: FakeTelegram, sink: TelegramSink) -> None:
    """{"ok": true} without a message object: transient (nothing to keep for an update)."""
    fake.fail_next(status=200, body=b'{"ok": true, "result": {}}')
    with pytest.raises(TransientError, match="without a message"):
        await sink.create(ticket())
