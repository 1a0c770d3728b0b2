"""Tickets as mail over SMTP with aiosmtplib: STARTTLS (587), implicit TLS (465) or, to loopback only, none.

Each ticket is one ``multipart/alternative`` message (text/plain and text/html, everything from the
alert escaped in the HTML) whose ``Message-ID`` is derived from the ticket key (``<key@ce-daemon>``):
a mail sent again after a lost answer carries the same Message-ID, so that a receiver can drop the
duplicate. A duplicate ticket is a reply to the first mail (``In-Reply-To``/``References``, subject
``Re: …``) with a Message-ID of its own derived from the key and the count.

Replies map onto the error taxonomy by RFC 5321's classes: 4xx → :class:`TransientError`, 5xx →
:class:`PermanentError`, 535 (and 530, authentication required) → :class:`AuthError`; a server that
does not offer what we need (STARTTLS, AUTH) → :class:`ComponentConfigError`; connection failures,
timeouts and refused certificates → :class:`TransientError`. Some recipients refused while others took
the mail: the ticket is created, the refused ones listed in ``TicketRef.state["failed"]``.
"""

from __future__ import annotations

import email.utils
import html
import ipaddress
import ssl
from email.message import EmailMessage
from typing import Annotated, Literal, Self

import aiosmtplib
from pydantic import Field, SecretStr, model_validator

from ce_daemon.http import TlsOptions, excerpt, ssl_context
from ce_daemon.plugin import (
    AuthError,
    ComponentConfigError,
    Health,
    PermanentError,
    PluginContext,
    PluginOptions,
    Ticket,
    TicketRef,
    TicketSink,
    Timeout,
    TransientError,
)

Address = Annotated[str, Field(pattern=r"^[^@\s<>,;\"()]+@[^@\s<>,;\"()]+$", max_length=254)]
_PORTS = {"starttls": 587, "tls": 465, "none": 25}
MAX_SUBJECT = 200


class EmailOptions(PluginOptions):
    """Options of the ``email`` destination."""

    host: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9.:\[\]-]+$")]
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Default by ``security``: 587 (starttls), 465 (tls), 25 (none)."""
    security: Literal["starttls", "tls", "none"] = "starttls"
    """``starttls`` (required, not opportunistic), ``tls`` (implicit TLS), ``none`` (loopback only)."""
    username: str | None = None
    password: SecretStr | None = None
    from_: Annotated[Address, Field(alias="from")]
    to: Annotated[list[Address], Field(min_length=1, max_length=100)]
    subject_prefix: Annotated[str, Field(max_length=64)] = "[ce-daemon]"
    message_id_domain: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+$")] = "ce-daemon"
    """The right-hand side of the Message-IDs (``<key@ce-daemon>``)."""
    timeout: Timeout = 30.0
    tls: TlsOptions = TlsOptions()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both `username` and `password`, or neither")
        if self.security == "none" and not _loopback(self.host):
            raise ValueError(
                f"security: none sends mail (and any password) in clear; it is allowed only to loopback,"
                f" not to {self.host!r}: use starttls or tls"
            )
        return self


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class EmailSink(TicketSink[EmailOptions]):
    """The ``email`` ticket destination: one mail per ticket, a reply per duplicate."""

    api_version = 1

    def __init__(self, options: EmailOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        self.port = options.port or _PORTS[options.security]
        self.target = f"SMTP {options.host}:{self.port}"

    def _client(self) -> aiosmtplib.SMTP:
        options = self.options
        context = ssl_context(options.tls, self.context.base_dir) if options.security != "none" else False
        return aiosmtplib.SMTP(
            hostname=options.host,
            port=self.port,
            username=options.username,
            password=options.password.get_secret_value() if options.password is not None else None,
            use_tls=options.security == "tls",
            start_tls=options.security == "starttls" if options.security != "none" else False,
            tls_context=context if isinstance(context, ssl.SSLContext) else None,
            validate_certs=context is not False,
            timeout=options.timeout,
        )

    async def health(self) -> Health:
        """Connect, (STARTTLS), EHLO and log in: the server is there and takes our credentials."""
        try:
            async with self._client() as client:
                await client.noop()
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=str(self._error(exc)))
        return Health(ok=True, detail=f"{self.target} ({self.options.security})")

    # -- tickets -----------------------------------------------------------------------------

    async def create(self, ticket: Ticket) -> TicketRef:
        message = compose(ticket, self.options)
        refused = await self._send(message)
        state = {"message_id": str(message["Message-ID"]), "subject": str(message["Subject"])}
        if refused:
            state["failed"] = refused
        return TicketRef(id=state["message_id"], state=state)

    async def update(self, ref: TicketRef, ticket: Ticket) -> TicketRef:
        first = ref.state.get("message_id") or message_id(ticket.key, self.options.message_id_domain)
        subject = ref.state.get("subject") or ""
        await self._send(compose(ticket, self.options, reply_to=(first, subject)))
        return ref

    async def _send(self, message: EmailMessage) -> str:
        """Send ``message``; the recipients refused while others took it (empty: none), as text."""
        try:
            async with self._client() as client:
                refused, _ = await client.send_message(message)
        except Exception as exc:
            raise self._error(exc) from exc
        if not refused:
            return ""
        text = "; ".join(
            f"{address}: {reply.code} {excerpt(reply.message)}" for address, reply in refused.items()
        )
        self.log.warning("email.recipients_refused", refused=text)
        return text

    def _error(self, exc: BaseException) -> Exception:
        """``exc`` (aiosmtplib's, or the socket's) as an error of the taxonomy."""
        target = self.target
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            text = "; ".join(f"{r.recipient}: {r.code} {excerpt(r.message)}" for r in exc.recipients)
            message = f"{target} refused every recipient: {text}"
            transient = any(400 <= r.code < 500 for r in exc.recipients)
            return TransientError(message) if transient else PermanentError(message)
        if isinstance(exc, aiosmtplib.SMTPNotSupported) or (
            type(exc) is aiosmtplib.SMTPException and "not supported" in str(exc)
        ):
            return ComponentConfigError(
                f"{target}: {excerpt(str(exc))} (check `security` and the credentials)"
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return reply_error(target, exc.code, exc.message)
        if isinstance(exc, TimeoutError):
            return TransientError(f"{target}: no answer in time")
        return TransientError(f"{target}: {type(exc).__name__}: {excerpt(str(exc))}")


def reply_error(target: str, code: int, text: str) -> Exception:
    """An SMTP reply as an error: 530/534/535 → AuthError, 4xx → transient, 5xx → permanent."""
    message = f"{target} answered {code} {excerpt(text)}"
    if code in (530, 534, 535):
        return AuthError(f"{message} (check username and password)")
    if code >= 500:
        return PermanentError(message)
    return TransientError(message)


# -- the message -------------------------------------------------------------------------------


def message_id(key: str, domain: str, count: int | None = None) -> str:
    """The Message-ID of a ticket's first mail (``count`` None) or of the reply for ``count``."""
    left = key if count is None else f"{key}.{count}"
    return f"<{left}@{domain}>"


def _line(text: str) -> str:
    return " ".join("".join(c if c >= " " and c != "\x7f" else " " for c in text).split())


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def compose(
    ticket: Ticket, options: EmailOptions, *, reply_to: tuple[str, str] | None = None
) -> EmailMessage:
    """The mail for ``ticket``: a new thread, or (``reply_to`` = first Message-ID and subject) a reply."""
    domain = options.message_id_domain
    message = EmailMessage()
    title = _line(ticket.title) or ticket.key
    subject = _cut(f"{options.subject_prefix} [{ticket.severity}] {title}".strip(), MAX_SUBJECT)
    if reply_to is None:
        message["Message-ID"] = message_id(ticket.key, domain)
        message["Subject"] = subject
    else:
        first, first_subject = reply_to
        message["Message-ID"] = message_id(ticket.key, domain, ticket.count)
        base = first_subject or subject
        message["Subject"] = base if base.lower().startswith("re:") else f"Re: {base}"
        message["In-Reply-To"] = first
        message["References"] = first
    message["From"] = options.from_
    message["To"] = ", ".join(options.to)
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["X-CE-Daemon-Key"] = ticket.key
    message.set_content(_text(ticket, reply=reply_to is not None))
    message.add_alternative(_html(ticket, reply=reply_to is not None), subtype="html")
    return message


def _rows(ticket: Ticket) -> list[tuple[str, str]]:
    rows = [("Severity", ticket.severity), ("Rule", ticket.rule)]
    if ticket.count > 1:
        rows.append(("Seen", f"{ticket.count} times"))
    rows.extend((str(name), str(value)) for name, value in ticket.fields.items())
    return rows


def _text(ticket: Ticket, *, reply: bool) -> str:
    lines = [f"Seen again ({ticket.count} times): {ticket.title}" if reply else ticket.title, ""]
    lines.extend(f"{name}: {value}" for name, value in _rows(ticket))
    if ticket.description.strip():
        lines.extend(("", ticket.description.strip()))
    return "\n".join(lines) + "\n"


def _html(ticket: Ticket, *, reply: bool) -> str:
    def e(text: str) -> str:
        return html.escape(text, quote=True)

    heading = f"Seen again ({ticket.count} times): {ticket.title}" if reply else ticket.title
    rows = "".join(
        f'<tr><th align="left">{e(name)}</th><td>{e(value)}</td></tr>' for name, value in _rows(ticket)
    )
    description = ticket.description.strip()
    body = f'<pre style="white-space:pre-wrap">{e(description)}</pre>' if description else ""
    return f"<!DOCTYPE html><html><body><h2>{e(heading)}</h2><table>{rows}</table>{body}</body></html>\n"
