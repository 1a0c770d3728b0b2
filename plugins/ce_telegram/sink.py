"""Notifications through the Telegram Bot API (``sendMessage``; ``editMessageText`` for a duplicate).

``POST {api_url}/bot<token>/<method>`` with a JSON body; the answer is ``{"ok": true, "result": …}``
or ``{"ok": false, "error_code", "description", "parameters": {"retry_after", "migrate_to_chat_id"}}``.
Text goes as ``parse_mode: HTML`` with ``&``, ``<`` and ``>`` escaped (the only characters Telegram asks
to escape outside tags) and is cut with an ellipsis so that the markup itself stays within Telegram's
4,096 characters (counted in UTF-16 code units, as Telegram counts them): a cut never falls inside a
tag or an entity. Link previews are off (``link_preview_options.is_disabled``, the field that
replaced ``disable_web_page_preview`` in Bot API 7.0).

The bot token is part of the URL path. It is registered for scrubbing and every message this plugin
raises or logs is built without the URL and scrubbed of the token again, so that no error text,
excerpt or log line carries it (a transport error from aiohttp may quote the URL: it is never chained).

Errors: 429 → :class:`TransientError` with ``retry_after``; 401 (and 404, Telegram's answer to a
malformed token) → :class:`AuthError`; 400 "chat not found", 403 (the bot was blocked or removed) and
a group migrated to a supergroup → :class:`ComponentConfigError`; other 400s → :class:`PermanentError`;
5xx and connection failures → :class:`TransientError`.

Telegram has no idempotency key and cannot be searched: a message whose answer was lost is sent again.
A duplicate edits the earlier message (its ``chat_id`` and ``message_id`` are in ``TicketRef.state``) to
show the count; "message is not modified" is success, and a message that can no longer be edited is
replaced by a new one.
"""

from __future__ import annotations

import html
import urllib.parse
from typing import Annotated, Any

import aiohttp
import orjson
from pydantic import Field, SecretStr

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    ConnectionOptions,
    HttpSession,
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
    register_secret,
)

MAX_TEXT = 4096
"""Telegram's limit on a message's text (UTF-16 code units)."""
MAX_TITLE = 256
"""The title line is cut to this many characters first, so that the body always has room."""
MAX_ANSWER = 1024**2
_ELLIPSIS = "…"
_REDACTED = "[REDACTED]"
_EDIT_GONE = ("message to edit not found", "message can't be edited")


class TelegramOptions(ConnectionOptions):
    """Options of the ``telegram`` destination: the bot, the chat, and where the Bot API is."""

    token: SecretStr
    """The bot's token from @BotFather (``123456:ABC…``); it travels in the URL path."""
    chat_id: int | Annotated[str, Field(pattern=r"^@[A-Za-z][A-Za-z0-9_]{3,31}$")]
    """A chat's numeric id (groups are negative) or a public channel's ``@username``."""
    api_url: Annotated[str, Field(pattern=r"^https?://[^/?#]+(/[^?#]*)?$")] = "https://api.telegram.org"
    """The Bot API server (a local ``telegram-bot-api`` server, or a test fake)."""
    message_thread_id: Annotated[int, Field(ge=1)] | None = None
    """The forum topic to post in (supergroups with topics)."""
    disable_notification: bool = False
    """Send silently (no sound on the recipients' devices)."""


class TelegramSink(HttpSession, TicketSink[TelegramOptions]):
    """The ``telegram`` ticket destination: one HTML message per ticket, edited for duplicates."""

    api_version = 1

    def __init__(self, options: TelegramOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        self._token = options.token.get_secret_value()
        register_secret(self._token)
        self._base = options.api_url.rstrip("/")

    def _clean(self, text: str) -> str:
        """``text`` without the token (also URL-encoded), whatever its length."""
        for form in {self._token, urllib.parse.quote(self._token, safe="")}:
            if form:
                text = text.replace(form, _REDACTED)
        return text

    def new_session(self) -> aiohttp.ClientSession:
        """The session, made on first use by :meth:`session`."""
        return make_session(self.options, self.context.base_dir)

    async def health(self) -> Health:
        """``getMe`` answers with our token: the Bot API is reachable and knows the bot."""
        try:
            me = await self._call("getMe", {})
        except Exception as exc:  # noqa: BLE001 -- health reports every failure instead of raising
            return Health(ok=False, detail=self._clean(str(exc)))
        name = me.get("username") if isinstance(me, dict) else None
        return Health(ok=True, detail=f"Telegram bot @{excerpt(str(name), 64)}")

    # -- tickets -----------------------------------------------------------------------------

    async def create(self, ticket: Ticket) -> TicketRef:
        payload = {**self._chat(), "text": render(ticket), **self._format()}
        if self.options.disable_notification:
            payload["disable_notification"] = True
        message = await self._call("sendMessage", payload)
        return self._ref(message)

    async def update(self, ref: TicketRef, ticket: Ticket) -> TicketRef:
        chat_id, message_id = ref.state.get("chat_id"), ref.state.get("message_id")
        if not chat_id or not message_id or not message_id.isdigit():
            return await self.create(ticket)
        payload = {
            "chat_id": chat_id,
            "message_id": int(message_id),
            "text": render(ticket),
            **self._format(),
        }
        try:
            await self._call("editMessageText", payload)
        except PermanentError as exc:
            reason = str(exc).lower()
            if "message is not modified" in reason:
                return ref
            if not any(words in reason for words in _EDIT_GONE):
                raise
            self.log.info("telegram.edit_replaced", message_id=message_id, reason=self._clean(str(exc)))
            return await self.create(ticket)
        return ref

    def _chat(self) -> dict[str, Any]:
        chat: dict[str, Any] = {"chat_id": self.options.chat_id}
        if self.options.message_thread_id is not None:
            chat["message_thread_id"] = self.options.message_thread_id
        return chat

    @staticmethod
    def _format() -> dict[str, Any]:
        return {"parse_mode": "HTML", "link_preview_options": {"is_disabled": True}}

    def _ref(self, message: Any) -> TicketRef:
        if not isinstance(message, dict) or not isinstance(message.get("message_id"), int):
            quoted = self._clean(excerpt(orjson.dumps(message)))
            raise TransientError(f"Telegram sendMessage answered ok without a message: {quoted}")
        chat = message.get("chat")
        chat_id = chat.get("id") if isinstance(chat, dict) else None
        chat_id = chat_id if isinstance(chat_id, int) else self.options.chat_id
        message_id = str(message["message_id"])
        url = _link(chat, message_id)
        return TicketRef(id=message_id, url=url, state={"chat_id": str(chat_id), "message_id": message_id})

    # -- one Bot API call --------------------------------------------------------------------

    async def _call(self, method: str, payload: dict[str, Any]) -> Any:
        """``method`` with ``payload``; the ``result`` of an ``ok`` answer, else the mapped error."""
        target = f"Telegram {method}"
        url = f"{self._base}/bot{self._token}/{method}"
        try:
            async with self.session().post(
                url,
                data=orjson.dumps(payload),
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
            ) as response:
                status, headers = response.status, response.headers
                limit = MAX_ANSWER if 200 <= status < 300 else ERROR_BODY_BYTES
                raw = await read_at_most(response, limit + 1)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Never chained: aiohttp's own message may quote the URL, token included.
            raise TransientError(self._clean(str(transport_error(exc, target)))) from None
        if 300 <= status < 400:
            raise ComponentConfigError(
                self._clean(str(redirect_error(status, headers, target, "set api_url to the Bot API itself")))
            )
        if len(raw) > limit:
            raise TransientError(f"{target} answered a body of more than {limit:,} bytes; it was not read")
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            quoted = self._clean(excerpt(raw)) or "(empty)"
            if 200 <= status < 300:
                raise TransientError(
                    f"{target} answered HTTP {status} with a body that is not JSON: {quoted}"
                )
            raise status_error(status, f"{target} answered HTTP {status}: {quoted}", headers, target)
        if answer.get("ok") is True and 200 <= status < 300:
            return answer.get("result")
        raise self._error(target, status, headers, answer)

    def _error(self, target: str, status: int, headers: Any, answer: dict[str, Any]) -> Exception:
        code = answer.get("error_code")
        code = code if isinstance(code, int) else status
        description = self._clean(excerpt(str(answer.get("description") or "")))
        message = f"{target} answered {code}: {description or '(no description)'}"
        parameters = answer.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else {}
        lowered = description.lower()
        if code == 429 or status == 429:
            wait = parameters.get("retry_after")
            delay = float(wait) if isinstance(wait, int | float) and wait >= 0 else retry_after(headers)
            return TransientError(message, retry_after=delay)
        if code in (401, 404):
            return AuthError(f"{message} (check the bot token)")
        migrated = parameters.get("migrate_to_chat_id")
        if isinstance(migrated, int):
            return ComponentConfigError(f"{message}: the group is now the supergroup {migrated}; set chat_id")
        if code == 403 or (code == 400 and "chat not found" in lowered):
            return ComponentConfigError(f"{message} (check chat_id, and that the bot is a member)")
        if code == 400:
            return PermanentError(message)
        return status_error(code if 400 <= code < 600 else status, message, headers, target)


def _link(chat: Any, message_id: str) -> str:
    """``https://t.me/<username>/<id>`` for a public chat, ``https://t.me/c/<id>/<id>`` for a supergroup."""
    if not isinstance(chat, dict):
        return ""
    username = chat.get("username")
    if isinstance(username, str) and username.replace("_", "").isalnum():
        return f"https://t.me/{username}/{message_id}"
    chat_id = chat.get("id")
    if isinstance(chat_id, int) and str(chat_id).startswith("-100"):
        return f"https://t.me/c/{str(chat_id)[4:]}/{message_id}"
    return ""


# -- the message -------------------------------------------------------------------------------


def _units(text: str) -> int:
    """Length in UTF-16 code units (what Telegram counts)."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def _escaped_cost(char: str) -> int:
    if char == "&":
        return 5
    if char in "<>":
        return 4
    return 2 if ord(char) > 0xFFFF else 1


def escape_within(text: str, budget: int) -> str:
    """``text`` HTML-escaped, cut (with an ellipsis) so that the result takes at most ``budget`` units.

    The cut falls between characters of the plain text, never inside an entity.
    """
    escaped = html.escape(text, quote=False)
    if _units(escaped) <= budget:
        return escaped
    if budget <= 0:
        return ""
    room, end = budget - _units(_ELLIPSIS), 0
    for end, char in enumerate(text):  # noqa: B007 -- the loop leaves `end` at the cut
        cost = _escaped_cost(char)
        if cost > room:
            break
        room -= cost
    else:
        end = len(text)
    return html.escape(text[:end], quote=False) + _ELLIPSIS


def _plain(text: str) -> str:
    """Text Telegram takes: no NUL or other C0 controls but newline and tab, no lone surrogates."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return "".join(char for char in text if char >= " " or char in "\n\t")


def render(ticket: Ticket, limit: int = MAX_TEXT) -> str:
    """The message's HTML: the title in bold, then rule, severity, count, description and fields.

    Everything from the ticket is escaped; the whole stays within ``limit`` UTF-16 code units.
    """
    title = escape_within(" ".join(_plain(ticket.title).split()) or ticket.key, MAX_TITLE)
    head = f"<b>{title}</b>\n"
    lines = [f"Severity: {ticket.severity}", f"Rule: {ticket.rule}"]
    if ticket.count > 1:
        lines.append(f"Seen {ticket.count} times")
    if ticket.description.strip():
        lines.extend(("", ticket.description.strip()))
    if ticket.fields:
        lines.append("")
        lines.extend(f"{name}: {value}" for name, value in ticket.fields.items())
    body = escape_within(_plain("\n".join(lines)), limit - _units(head))
    return head + body
