"""A real SMTP server for tests: aiosmtpd on loopback, recording what it is sent, scriptable to refuse.

:class:`FakeSmtp` runs aiosmtpd's ``Controller`` (its own thread and event loop) on ``127.0.0.1`` and
a free port, in one of three modes: ``none`` (plain SMTP), ``starttls`` (STARTTLS offered and required
before MAIL and AUTH) or ``tls`` (implicit TLS, SMTPS), with a throwaway CA and a server certificate
for 127.0.0.1 from :mod:`ce_daemon.testing.tls` (:attr:`FakeSmtp.ca_file` is what a client trusts).
With ``users`` it offers AUTH PLAIN and LOGIN (in ``starttls`` mode only after STARTTLS), checked
against them (a wrong password answers ``535 5.7.8``), and requires AUTH before MAIL (``530``).

Every accepted message is kept in :attr:`FakeSmtp.messages` (envelope and parsed message).
:meth:`FakeSmtp.fail_next` makes the next commands of a stage (``MAIL``, ``RCPT``, ``DATA``) answer a
given reply instead (``451 4.3.0 …``, ``550 5.1.1 …``); :attr:`FakeSmtp.refused` lists recipients
refused at RCPT with their reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import secrets
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from ce_daemon.testing.tls import self_signed_tls

Mode = Literal["none", "starttls", "tls"]
Stage = Literal["MAIL", "RCPT", "DATA"]


@dataclass(frozen=True)
class ReceivedMail:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    message: EmailMessage
    tls: bool
    login: str | None


class _Controller(Controller):
    """aiosmtpd's controller on port 0: the port the system chose is read back before the first connection."""

    def _trigger_server(self) -> None:
        server = self.server
        if self.port == 0 and isinstance(server, asyncio.Server):
            self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class FakeSmtp:
    """An aiosmtpd server on loopback that records messages and refuses on demand."""

    def __init__(
        self,
        directory: Path,
        *,
        mode: Mode = "none",
        users: Mapping[str, str] | None = None,
    ) -> None:
        self.mode = mode
        self.users = dict(users or {})
        self.messages: list[ReceivedMail] = []
        self.refused: dict[str, str] = {}
        self.ca_file: Path | None = None
        self._script: dict[str, deque[str]] = {"MAIL": deque(), "RCPT": deque(), "DATA": deque()}
        self._lock = threading.Lock()
        self._controller: _Controller | None = None
        context = None
        if mode != "none":
            context, self.ca_file = self_signed_tls(directory / f"smtp-{secrets.token_hex(4)}")
        parameters: dict[str, Any] = {"server_hostname": "fake-smtp.test", "enable_SMTPUTF8": True}
        if self.users:
            parameters["authenticator"] = self._authenticate
            # aiosmtpd counts only STARTTLS as TLS for AUTH (not implicit TLS), and warns when AUTH is
            # required without it: AUTH before MAIL is enforced in handle_MAIL instead.
            parameters["auth_require_tls"] = mode == "starttls"
        if mode == "starttls":
            parameters.update(tls_context=context, require_starttls=True)
        elif mode == "tls":
            parameters["ssl_context"] = context
        self._parameters = parameters

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The port it listens on (0 before :meth:`start`)."""
        return int(self._controller.port) if self._controller is not None else 0

    async def start(self) -> int:
        """Start the server (in its thread) and return its port."""
        controller = _Controller(self, hostname="127.0.0.1", port=0, **self._parameters)
        await asyncio.to_thread(controller.start)
        self._controller = controller
        return self.port

    async def stop(self) -> None:
        """Stop the server once its connections have closed; a second call does nothing.

        aiosmtpd's ``stop`` ends the server's loop at once. A connection the client has just closed
        (a refused TLS handshake, say) may then still have its socket open on the server's side, and
        the socket is only reclaimed, with a ResourceWarning, by the garbage collector in whatever
        test runs next. So the listener closes first, and ``stop`` waits (at most
        :data:`_DRAIN_SECONDS`) until every connection it accepted is closed.
        """
        if self._controller is not None:
            controller, self._controller = self._controller, None
            drained = asyncio.run_coroutine_threadsafe(_drain(controller.server), controller.loop)
            with contextlib.suppress(TimeoutError):  # a server loop that no longer runs cannot drain
                await asyncio.wait_for(asyncio.wrap_future(drained), _DRAIN_SECONDS + 1)
            await asyncio.to_thread(controller.stop)

    async def __aenter__(self) -> FakeSmtp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- scripting ---------------------------------------------------------------------------

    def fail_next(self, reply: str, *, stage: Stage = "DATA", count: int = 1) -> None:
        """Answer the next ``count`` commands of ``stage`` with ``reply`` (``"451 4.3.0 Try later"``)."""
        with self._lock:
            self._script[stage].extend([reply] * count)

    def refuse_credentials(self) -> None:
        """Every user's password changes: the next AUTH answers 535."""
        with self._lock:
            self.users = {user: secrets.token_hex(8) for user in self.users}

    def _scripted(self, stage: str) -> str | None:
        with self._lock:
            queue = self._script[stage]
            return queue.popleft() if queue else None

    # -- aiosmtpd hooks (run in the server's thread) -----------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            with self._lock:
                if login in self.users and secrets.compare_digest(self.users[login], password):
                    return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(  # noqa: N802 -- aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        scripted = self._scripted("MAIL")
        if scripted is not None:
            return scripted
        if self.users and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802 -- aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        scripted = self._scripted("RCPT")
        if scripted is not None:
            return scripted
        with self._lock:
            refusal = self.refused.get(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 -- aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        scripted = self._scripted("DATA")
        if scripted is not None:
            return scripted
        content = envelope.original_content or b""
        parsed: Any = BytesParser(policy=email.policy.default).parsebytes(content)
        auth_data: Any = session.auth_data  # what _authenticate returned: the login
        login = auth_data if isinstance(auth_data, str) else None
        mail = ReceivedMail(
            str(envelope.mail_from), tuple(envelope.rcpt_tos), content, parsed, _tls(server), login
        )
        with self._lock:
            self.messages.append(mail)
        return "250 2.0.0 Message accepted for delivery"


_DRAIN_SECONDS = 5.0


async def _drain(server: asyncio.AbstractServer | None) -> None:
    """Close the listener and wait until each connection it accepted has closed its socket.

    Python 3.11's ``wait_closed`` waits for the connections only when it is called before ``close``
    (3.12 waits either way), so the wait starts first. A client that keeps its connection open past
    :data:`_DRAIN_SECONDS` is left to aiosmtpd's ``stop``.
    """
    if server is None:
        return
    closed = asyncio.ensure_future(server.wait_closed())
    await asyncio.sleep(0)  # one turn: the task made above runs first and registers its wait
    server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed, _DRAIN_SECONDS)


def _tls(server: SMTP) -> bool:
    """Whether the session runs over TLS, STARTTLS or implicit (``session.ssl`` tells only STARTTLS)."""
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None
