"""The `email` ticket destination against a real aiosmtpd server on loopback: plain, STARTTLS, SMTPS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ce_email import EmailOptions, EmailSink, compose
from ce_email.fake import FakeSmtp, Mode
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

USERS = {"ce-daemon": "s3cret-password"}
TO = ["soc@example.com", "oncall@example.com"]


def ticket(count: int = 1, **changes: Any) -> Ticket:
    values: dict[str, Any] = {
        "key": "rule-1-abc123",
        "rule": "DLP",
        "title": "Upload of <secret> & more",
        "description": "alice uploaded <b>plans</b>",
        "severity": "high",
        "fields": {"user": "alice@example.com", "<script>": "x&y"},
        "alert": {},
        "count": count,
    }
    values.update(changes)
    return Ticket(**values)


def options(server: FakeSmtp, **changes: Any) -> EmailOptions:
    values: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "security": server.mode,
        "from": "ce-daemon@example.com",
        "to": TO,
        "timeout": 5,
    }
    if server.users:
        values.update(username="ce-daemon", password=USERS["ce-daemon"])
    if server.ca_file is not None:
        values["tls"] = {"ca_file": str(server.ca_file)}
    values.update(changes)
    return EmailOptions.model_validate(values)


def make(server: FakeSmtp, tmp_path: Path, **changes: Any) -> EmailSink:
    return EmailSink(options(server, **changes), PluginContext("mail", tmp_path, tmp_path))


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[FakeSmtp]:
    async with FakeSmtp(tmp_path) as server:
        yield server


async def serve(tmp_path: Path, mode: Mode, users: dict[str, str] | None = USERS) -> FakeSmtp:
    server = FakeSmtp(tmp_path, mode=mode, users=users)
    await server.start()
    return server


async def test_plain_mail_with_text_and_escaped_html(plain: FakeSmtp, tmp_path: Path) -> None:
    """One mail to every recipient: text and HTML alternatives, the HTML escaped, Message-ID from the key."""
    sink = make(plain, tmp_path)
    assert (await sink.health()).ok
    ref = await sink.create(ticket())
    [mail] = plain.messages
    assert mail.rcpt_tos == tuple(TO) and not mail.tls
    message = mail.message
    assert message["Message-ID"] == "<rule-1-abc123@ce-daemon>" == ref.id
    assert message["Subject"] == "[ce-daemon] [high] Upload of <secret> & more"
    text = message.get_body(("plain",))
    page = message.get_body(("html",))
    assert text is not None and page is not None
    assert "alice uploaded <b>plans</b>" in text.get_content()
    markup = page.get_content()
    assert "&lt;b&gt;plans&lt;/b&gt;" in markup and "&lt;script&gt;" in markup and "<script>" not in markup


async def test_resend_carries_the_same_message_id(plain: FakeSmtp, tmp_path: Path) -> None:
    """A ticket sent again (its answer lost) is the same Message-ID: the receiver can drop the duplicate."""
    sink = make(plain, tmp_path)
    await sink.create(ticket())
    await sink.create(ticket())
    first, second = (mail.message["Message-ID"] for mail in plain.messages)
    assert first == second


async def test_update_is_a_reply_to_the_first_mail(plain: FakeSmtp, tmp_path: Path) -> None:
    """A duplicate is "Re: …" with In-Reply-To/References to the first mail and a Message-ID of its own."""
    sink = make(plain, tmp_path)
    ref = await sink.create(ticket())
    assert await sink.update(ref, ticket(count=4)) == ref
    reply = plain.messages[-1].message
    assert reply["Subject"] == "Re: [ce-daemon] [high] Upload of <secret> & more"
    assert reply["In-Reply-To"] == reply["References"] == ref.id
    assert reply["Message-ID"] == "<rule-1-abc123.4@ce-daemon>"
    body = reply.get_body(("plain",))
    assert body is not None and "Seen again (4 times)" in body.get_content()


async def test_starttls_with_auth_verified_against_the_test_ca(tmp_path: Path) -> None:
    """STARTTLS, the certificate verified against the test CA, AUTH, then the mail."""
    server = await serve(tmp_path, "starttls")
    try:
        sink = make(server, tmp_path)
        assert (await sink.health()).ok
        await sink.create(ticket())
    finally:
        await server.stop()
    [mail] = server.messages
    assert mail.tls and mail.login == "ce-daemon"


async def test_implicit_tls_with_auth(tmp_path: Path) -> None:
    """Implicit TLS (SMTPS), the certificate verified against the test CA, AUTH, then the mail."""
    server = await serve(tmp_path, "tls")
    try:
        await make(server, tmp_path).create(ticket())
    finally:
        await server.stop()
    [mail] = server.messages
    assert mail.tls and mail.login == "ce-daemon"


async def test_a_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    """Without the test CA the server's certificate does not verify: transient, nothing sent."""
    server = await serve(tmp_path, "tls")
    try:
        sink = EmailSink(options(server, tls={"verify": True}), PluginContext("m", tmp_path, tmp_path))
        with pytest.raises(TransientError, match=r"SMTP 127\.0\.0\.1"):
            await sink.create(ticket())
        assert not (await sink.health()).ok
    finally:
        await server.stop()
    assert server.messages == []


async def test_wrong_password_is_auth_error(tmp_path: Path) -> None:
    """535 from AUTH → AuthError, and the password is nowhere in it."""
    server = await serve(tmp_path, "starttls")
    try:
        server.refuse_credentials()
        with pytest.raises(AuthError, match="535") as caught:
            await make(server, tmp_path).create(ticket())
    finally:
        await server.stop()
    assert USERS["ce-daemon"] not in str(caught.value)


async def test_451_is_transient_550_permanent(plain: FakeSmtp, tmp_path: Path) -> None:
    """451 at DATA → TransientError; 550 → PermanentError; 535 scripted at MAIL → AuthError."""
    sink = make(plain, tmp_path)
    plain.fail_next("451 4.3.0 Try again later")
    with pytest.raises(TransientError, match="451"):
        await sink.create(ticket())
    plain.fail_next("550 5.7.1 Message rejected by policy")
    with pytest.raises(PermanentError, match="550"):
        await sink.create(ticket())
    plain.fail_next("535 5.7.8 Authentication credentials invalid", stage="MAIL")
    with pytest.raises(AuthError, match="535"):
        await sink.create(ticket())
    await sink.create(ticket())
    assert len(plain.messages) == 1


async def test_one_refused_recipient_is_reported(plain: FakeSmtp, tmp_path: Path) -> None:
    """One recipient refused (550 at RCPT): the other gets the mail, the ref names the refused one."""
    plain.refused[TO[0]] = "550 5.1.1 No such user"
    ref = await make(plain, tmp_path).create(ticket())
    assert plain.messages[0].rcpt_tos == (TO[1],)
    assert TO[0] in ref.state["failed"] and "550" in ref.state["failed"]


async def test_every_recipient_refused(plain: FakeSmtp, tmp_path: Path) -> None:
    """Every recipient refused: 5xx → permanent, a 4xx among them → transient."""
    sink = make(plain, tmp_path)
    plain.refused.update({TO[0]: "550 5.1.1 No such user", TO[1]: "550 5.1.1 No such user"})
    with pytest.raises(PermanentError, match="refused every recipient"):
        await sink.create(ticket())
    plain.refused[TO[1]] = "452 4.2.2 Mailbox full"
    with pytest.raises(TransientError):
        await sink.create(ticket())


async def test_server_down_is_transient(tmp_path: Path) -> None:
    """Nobody listening → TransientError."""
    server = FakeSmtp(tmp_path)
    await server.start()
    sink = make(server, tmp_path)
    await server.stop()
    with pytest.raises(TransientError):
        await sink.create(ticket())


async def test_starttls_required_but_not_offered_is_a_config_error(plain: FakeSmtp, tmp_path: Path) -> None:
    """security: starttls against a server without STARTTLS → ComponentConfigError (never sent in clear)."""
    sink = make(plain, tmp_path, security="starttls")
    with pytest.raises(ComponentConfigError):
        await sink.create(ticket())
    assert plain.messages == []


def test_security_none_only_to_loopback() -> None:
    """security: none is refused for any host but loopback; username and password go together."""
    base = {"from": "a@example.com", "to": ["b@example.com"], "security": "none"}
    with pytest.raises(ValueError, match="loopback"):
        EmailOptions.model_validate({**base, "host": "smtp.example.com"})
    for host in ("127.0.0.1", "localhost", "::1"):
        EmailOptions.model_validate({**base, "host": host})
    with pytest.raises(ValueError, match="both"):
        EmailOptions.model_validate({**base, "host": "localhost", "username": "u"})
    with pytest.raises(ValueError, match="to"):
        EmailOptions.model_validate({**base, "host": "localhost", "to": ["not an address"]})


@given(
    title=st.text(max_size=500),
    description=st.text(max_size=500),
    key=st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True),
)
def test_compose_never_breaks_headers(title: str, description: str, key: str) -> None:
    """Whatever the alert holds: one-line subject within bounds, Message-ID from the key, serialisable."""
    opts = EmailOptions.model_validate(
        {"host": "localhost", "security": "none", "from": "a@x.org", "to": ["b@x.org"]}
    )
    message = compose(ticket(title=title, description=description, key=key), opts)
    assert message["Message-ID"] == f"<{key}@ce-daemon>"
    subject = str(message["Subject"])
    assert "\n" not in subject and "\r" not in subject and len(subject) <= 200
    assert message.as_bytes()


async def test_a_server_that_never_greets_is_transient(tmp_path: Path) -> None:
    """A peer that accepts the connection and says nothing: TransientError once the timeout passes."""
    connected: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        opts = EmailOptions.model_validate(
            {"host": "127.0.0.1", "port": port, "security": "none", "from": "a@x.org", "to": ["b@x.org"],
             "timeout": 0.3}
        )  # fmt: skip
        with pytest.raises(TransientError, match="SMTP"):
            await EmailSink(opts, PluginContext("m", tmp_path, tmp_path)).create(ticket())
    finally:
        for writer in connected:
            writer.close()
        server.close()
        await server.wait_closed()
