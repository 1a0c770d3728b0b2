"""SMS through Twilio Programmable Messaging (``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``).

The request is form-encoded: ``To`` (E.164), ``From`` or ``MessagingServiceSid``, ``Body`` (plain text,
whitespace collapsed, control characters dropped, cut with an ellipsis at ``max_length`` ≤ 1,600
characters); HTTP basic auth ``AccountSid:AuthToken``. A created message answers 201 ``{sid, status}``.

Several ``to`` numbers get one message each. Twilio has no idempotency key, so that a ticket retried
after a failure part-way does not text again the numbers that got it, the sink remembers, per ticket
key, which numbers were sent to (the core retries with the same ticket). A number Twilio refuses for
good (21211 invalid ``To``, 21610 unsubscribed, 21614 not a mobile…) does not fail the others: the
ticket is created for those that got it and the refused ones are listed in ``TicketRef.state["failed"]``
(logged as ``twilio.recipients_refused``); when every number is refused the create fails for good.

Errors (``{"code", "message", "more_info", "status"}``): 401 or 20003 → :class:`AuthError`; 429 or 20429
→ :class:`TransientError` with ``Retry-After``; 5xx and connection failures → :class:`TransientError`;
a refused sender (21212, 21606, 21603, 21659…) → :class:`ComponentConfigError`; other 4xx →
:class:`PermanentError` for that number.

A duplicate sends a short "seen again N times" SMS only when ``update: true`` (default false).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated, Any, Self

import aiohttp
import orjson
from pydantic import Field, SecretStr, model_validator

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    ConnectionOptions,
    HttpSession,
    basic,
    excerpt,
    make_session,
    read_at_most,
    redirect_error,
    retry_after,
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    AuthError,
    ComponentConfigError,
    Health,
    PermanentError,
    PluginContext,
    Ticket,
    TicketRef,
    TicketSink,
    TransientError,
)

E164 = Annotated[str, Field(pattern=r"^\+[1-9][0-9]{1,14}$")]
MAX_BODY = 1600
_ELLIPSIS = "…"
_REMEMBERED = 256  # ticket keys whose delivered numbers are kept for a retry
_SENDER_CODES = frozenset({21212, 21603, 21606, 21659, 21703, 21704, 21705})
"""Codes that blame our ``From``/messaging service: every number would be refused alike."""


class TwilioOptions(ConnectionOptions):
    """Options of the ``twilio`` destination."""

    account_sid: Annotated[str, Field(pattern=r"^AC[0-9a-fA-F]{32}$")]
    auth_token: SecretStr
    to: Annotated[list[E164], Field(min_length=1, max_length=50)]
    """The numbers to text, in E.164 (``+14155550100``); each gets its own message."""
    from_: Annotated[E164 | None, Field(alias="from")] = None
    """The sending number (E.164); or set ``messaging_service_sid``."""
    messaging_service_sid: Annotated[str, Field(pattern=r"^MG[0-9a-fA-F]{32}$")] | None = None
    api_url: Annotated[str, Field(pattern=r"^https?://[^/?#]+$")] = "https://api.twilio.com"
    max_length: Annotated[int, Field(ge=20, le=MAX_BODY)] = 320
    """The longest body sent (two GSM-7 segments by default; Twilio takes up to 1,600 characters)."""
    update: bool = False
    """Send a short "seen again" SMS for a duplicate (off: duplicates are counted, not texted)."""

    @model_validator(mode="after")
    def _one_sender(self) -> Self:
        if (self.from_ is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of `from` and `messaging_service_sid`")
        return self


class TwilioSink(HttpSession, TicketSink[TwilioOptions]):
    """The ``twilio`` ticket destination: one SMS per number per ticket."""

    api_version = 1

    def __init__(self, options: TwilioOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        self._account = f"{options.api_url}/2010-04-01/Accounts/{options.account_sid}"
        self._delivered: OrderedDict[str, dict[str, str]] = OrderedDict()

    def new_session(self) -> aiohttp.ClientSession:
        """The session, made on first use by :meth:`session` (with basic auth)."""
        auth = basic(self.options.account_sid, self.options.auth_token)
        return make_session(self.options, self.context.base_dir, Authorization=auth)

    async def health(self) -> Health:
        """``GET /Accounts/{sid}.json``: Twilio takes our credentials and the account is active."""
        try:
            account = await self._request("GET", ".json")
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=str(exc))
        status = account.get("status")
        if status != "active":
            return Health(
                ok=False, detail=f"Twilio account {self.options.account_sid} is {excerpt(str(status))}"
            )
        return Health(ok=True, detail=f"Twilio account {self.options.account_sid} is active")

    # -- tickets -----------------------------------------------------------------------------

    async def create(self, ticket: Ticket) -> TicketRef:
        return await self._text_all(ticket.key, sms_body(ticket, self.options.max_length))

    async def update(self, ref: TicketRef, ticket: Ticket) -> TicketRef:
        if not self.options.update:
            return ref
        body = _cut(f"Seen again {ticket.count} times: {_flat(ticket.title)}", self.options.max_length)
        await self._text_all(f"{ticket.key}#{ticket.count}", body)
        return ref

    async def _text_all(self, memo: str, body: str) -> TicketRef:
        """Text ``body`` to every number not yet sent it for ``memo``; the ref, or the error."""
        delivered = self._delivered.setdefault(memo, {})
        self._delivered.move_to_end(memo)
        while len(self._delivered) > _REMEMBERED:
            self._delivered.popitem(last=False)
        refused: list[tuple[str, str]] = []
        for number in self.options.to:
            if number in delivered:
                continue
            try:
                delivered[number] = await self._send(number, body)
            except PermanentError as exc:
                refused.append((number, str(exc)))
        self._delivered.pop(memo, None)
        if not delivered:
            raise PermanentError("; ".join(reason for _, reason in refused))
        if refused:
            self.log.warning("twilio.recipients_refused", refused=[number for number, _ in refused])
        state = dict(delivered)
        if refused:
            state["failed"] = "; ".join(f"{number}: {reason}" for number, reason in refused)
        first = delivered[next(n for n in self.options.to if n in delivered)]
        return TicketRef(id=first, url="", state=state)

    async def _send(self, number: str, body: str) -> str:
        form = {"To": number, "Body": body}
        if self.options.from_ is not None:
            form["From"] = self.options.from_
        else:
            assert self.options.messaging_service_sid is not None
            form["MessagingServiceSid"] = self.options.messaging_service_sid
        message = await self._request("POST", "/Messages.json", form)
        sid = message.get("sid")
        if not isinstance(sid, str) or not sid:
            raise TransientError(f"Twilio answered a message without a sid: {excerpt(orjson.dumps(message))}")
        return sid

    # -- one API call ------------------------------------------------------------------------

    async def _request(self, method: str, path: str, form: dict[str, str] | None = None) -> dict[str, Any]:
        target = f"Twilio {method} {path.lstrip('/')}"
        url = self._account + path
        try:
            async with self.session().request(method, url, data=form, allow_redirects=False) as response:
                status, headers = response.status, response.headers
                raw = await read_at_most(response, ERROR_BODY_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, target) from exc
        if 300 <= status < 400:
            raise redirect_error(status, headers, target, "set api_url to Twilio's API itself")
        try:
            answer = orjson.loads(raw) if len(raw) <= ERROR_BODY_BYTES else None
        except orjson.JSONDecodeError:
            answer = None
        if 200 <= status < 300:
            if not isinstance(answer, dict):
                raise TransientError(f"{target} answered HTTP {status} with a body that is not a JSON object")
            return answer
        raise _error(target, status, headers, answer if isinstance(answer, dict) else None, raw)


def _error(target: str, status: int, headers: Any, answer: dict[str, Any] | None, raw: bytes) -> Exception:
    """The error for Twilio's ``{"code", "message", "more_info", "status"}`` (or a body that is not that)."""
    if answer is None:
        return status_error(
            status, f"{target} answered HTTP {status}: {excerpt(raw) or '(empty)'}", headers, target
        )
    code = answer.get("code")
    code = code if isinstance(code, int) else 0
    message = f"{target} answered HTTP {status} ({code}): {excerpt(str(answer.get('message') or ''))}"
    if status == 401 or code == 20003:
        return AuthError(f"{message} (check account_sid and auth_token)")
    if status == 429 or code == 20429:
        return TransientError(message, retry_after=retry_after(headers))
    if code in _SENDER_CODES:
        return ComponentConfigError(f"{message} (check `from` / messaging_service_sid)")
    return status_error(status, message, headers, target)


def _flat(text: str) -> str:
    """One line of plain text: control characters dropped, whitespace collapsed."""
    return " ".join("".join(max(c, " ") for c in text).split())


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_ELLIPSIS)].rstrip() + _ELLIPSIS


def sms_body(ticket: Ticket, limit: int = MAX_BODY) -> str:
    """The SMS: severity and title, the rule, then the description, all plain text within ``limit``."""
    lines: Sequence[str] = [
        f"[{ticket.severity.upper()}] {_flat(ticket.title) or ticket.key}",
        f"Rule: {_flat(ticket.rule)}",
    ]
    description = _flat(ticket.description)
    if description:
        lines = [*lines, description]
    return _cut("\n".join(lines), min(limit, MAX_BODY))
