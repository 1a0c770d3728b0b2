"""The `twilio` ticket destination against a fake Twilio Messages API on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from ce_twilio import TwilioOptions, TwilioSink, sms_body
from ce_twilio.fake import FakeTwilio
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.plugin import (
    AuthError,
    ComponentConfigError,
    PermanentError,
    PluginContext,
    Ticket,
    TransientError,
)

ALICE, BOB = "+14155550100", "+14155550101"


def ticket(count: int = 1, **changes: Any) -> Ticket:
    values: dict[str, Any] = {
        "key": "rule-1-abc123",
        "rule": "Malware",
        "title": "Malware\tfound\non laptop-7",
        "description": "EICAR in downloads",
        "severity": "critical",
        "fields": {},
        "alert": {},
        "count": count,
    }
    values.update(changes)
    return Ticket(**values)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    server = FakeTwilio()
    async with server:
        yield server


def make(fake: FakeTwilio, tmp_path: Path, **options: Any) -> TwilioSink:
    values: dict[str, Any] = {
        "account_sid": fake.account_sid,
        "auth_token": fake.auth_token,
        "to": [ALICE],
        "from": "+15005550006",
        "api_url": fake.url,
        "timeout": 5,
    }
    values.update(options)
    return TwilioSink(TwilioOptions.model_validate(values), PluginContext("sms", tmp_path, tmp_path))


@pytest.fixture
async def sink(fake: FakeTwilio, tmp_path: Path) -> AsyncIterator[TwilioSink]:
    plugin = make(fake, tmp_path, to=[ALICE, BOB])
    try:
        yield plugin
    finally:
        await plugin.close()


async def test_health_and_one_sms_per_number(fake: FakeTwilio, sink: TwilioSink) -> None:
    """health reads the account; create sends one form-encoded SMS to each number, basic auth."""
    assert (await sink.health()).ok
    ref = await sink.create(ticket())
    assert [sms.to for sms in fake.sent] == [ALICE, BOB]
    assert ref.id == fake.sent[0].sid and ref.state == {ALICE: fake.sent[0].sid, BOB: fake.sent[1].sid}
    form = parse_qs(fake.requests[-1].body.decode())
    assert form["From"] == ["+15005550006"]
    assert form["Body"] == ["[CRITICAL] Malware found on laptop-7\nRule: Malware\nEICAR in downloads"]


async def test_messaging_service_instead_of_from(fake: FakeTwilio, tmp_path: Path) -> None:
    """With messaging_service_sid the request carries MessagingServiceSid and no From."""
    service = next(iter(fake.services))
    plugin = make(fake, tmp_path, **{"from": None, "messaging_service_sid": service})
    try:
        await plugin.create(ticket())
    finally:
        await plugin.close()
    form = parse_qs(fake.requests[-1].body.decode())
    assert form["MessagingServiceSid"] == [service] and "From" not in form


async def test_one_refused_number_does_not_fail_the_others(fake: FakeTwilio, sink: TwilioSink) -> None:
    """21211 for one number: the other gets its SMS, the ref names the refused one."""
    fake.invalid.add(ALICE)
    ref = await sink.create(ticket())
    assert [sms.to for sms in fake.sent] == [BOB]
    assert ref.id == fake.sent[0].sid and "21211" in ref.state["failed"] and ALICE in ref.state["failed"]


async def test_every_number_refused_is_permanent(fake: FakeTwilio, sink: TwilioSink) -> None:
    """All numbers refused → PermanentError quoting Twilio."""
    fake.invalid.update({ALICE, BOB})
    with pytest.raises(PermanentError, match="Invalid 'To' Phone Number"):
        await sink.create(ticket())


async def test_retry_after_partial_failure_texts_no_one_twice(fake: FakeTwilio, sink: TwilioSink) -> None:
    """429/20429 on the second number: transient with Retry-After; the retry texts only that number."""
    fake.fail_next(status=429, retry_after=3, after=1)
    with pytest.raises(TransientError) as caught:
        await sink.create(ticket())
    assert caught.value.retry_after == 3 and "20429" in str(caught.value)
    ref = await sink.create(ticket())
    assert [sms.to for sms in fake.sent] == [ALICE, BOB]
    assert set(ref.state) == {ALICE, BOB}


async def test_5xx_and_garbage_are_transient(fake: FakeTwilio, sink: TwilioSink) -> None:
    """503 and a 201 that is not JSON are transient."""
    fake.fail_next(status=503)
    with pytest.raises(TransientError):
        await sink.create(ticket())
    fake.fail_next(status=201, body=b"<html>")
    with pytest.raises(TransientError, match="not a JSON object"):
        await sink.create(ticket(key="other"))


async def test_refused_credentials_are_auth_error(fake: FakeTwilio, sink: TwilioSink) -> None:
    """401/20003 → AuthError; health says so too, without the token."""
    token = fake.auth_token
    fake.refuse_credentials()
    with pytest.raises(AuthError, match="20003") as caught:
        await sink.create(ticket())
    health = await sink.health()
    assert not health.ok and token not in str(caught.value) + health.detail


async def test_refused_sender_is_a_config_error(fake: FakeTwilio, tmp_path: Path) -> None:
    """21212 (our From is not valid) → ComponentConfigError: every number would be refused alike."""
    plugin = make(fake, tmp_path, **{"from": "+15005550009"})
    try:
        with pytest.raises(ComponentConfigError, match="21212"):
            await plugin.create(ticket())
    finally:
        await plugin.close()


async def test_update_texts_only_when_asked(fake: FakeTwilio, tmp_path: Path) -> None:
    """update: false (default) sends nothing for a duplicate; update: true a short "seen again" SMS."""
    quiet = make(fake, tmp_path)
    loud = make(fake, tmp_path, update=True)
    try:
        ref = await quiet.create(ticket())
        assert await quiet.update(ref, ticket(count=2)) == ref and len(fake.sent) == 1
        assert await loud.update(ref, ticket(count=4)) == ref
    finally:
        await quiet.close()
        await loud.close()
    assert fake.sent[-1].body == "Seen again 4 times: Malware found on laptop-7"


def test_options_are_validated() -> None:
    """Numbers are E.164; exactly one of from and messaging_service_sid."""
    base = {"account_sid": "AC" + "0" * 32, "auth_token": "t" * 32, "to": [ALICE]}
    with pytest.raises(ValueError, match="to"):
        TwilioOptions.model_validate({**base, "to": ["0155 555"], "from": "+15005550006"})
    with pytest.raises(ValueError, match="exactly one"):
        TwilioOptions.model_validate(base)
    with pytest.raises(ValueError, match="exactly one"):
        TwilioOptions.model_validate(
            {**base, "from": "+15005550006", "messaging_service_sid": "MG" + "0" * 32}
        )


@given(title=st.text(max_size=3000), description=st.text(max_size=3000), limit=st.integers(20, 1600))
def test_sms_body_is_plain_and_within_the_limit(title: str, description: str, limit: int) -> None:
    """Whatever the alert holds, the body is non-empty, within the limit, no control character but newline."""
    body = sms_body(ticket(title=title, description=description), limit)
    assert 0 < len(body) <= limit
    assert all(char >= " " or char == "\n" for char in body)
