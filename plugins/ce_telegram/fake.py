"""A fake Telegram Bot API server that follows the documented requests, answers and errors.

- ``POST /bot<token>/<method>`` (JSON or form body): ``getMe``, ``sendMessage``, ``editMessageText``.
  Answers ``{"ok": true, "result": …}``, or ``{"ok": false, "error_code", "description"}`` with the
  same HTTP status: 401 "Unauthorized" for a token it did not issue, 404 "Not Found" for a path that
  is not a bot method, 400 "Bad Request: chat not found", "…: message text is empty", "…: message is
  too long" (over 4,096 UTF-16 code units after entity parsing), "…: can't parse entities: …" (HTML
  that is not well formed or uses a tag Telegram does not know), "…: message to edit not found",
  "…: message is not modified: …", 403 "Forbidden: bot was blocked by the user" for chats in
  :attr:`FakeTelegram.blocked`.
- Scripted failures (:meth:`fail_next`) answer Telegram's shape; a 429 carries
  ``parameters.retry_after`` (from ``retry_after``) as Telegram does, not a header.
- Sent messages are kept per chat (:attr:`FakeTelegram.messages`), with the text after entity
  parsing (what a person sees) and the raw HTML.
"""

from __future__ import annotations

import html
import secrets
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

ALLOWED_TAGS = frozenset({"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
                          "span", "tg-spoiler", "blockquote", "tg-emoji"})  # fmt: skip


@dataclass
class SentMessage:
    """One message as the fake keeps it."""

    chat_id: str
    message_id: int
    text: str
    html: str
    edits: int = 0


class EntityError(ValueError):
    """HTML Telegram would refuse ("can't parse entities")."""


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            raise EntityError(f'unsupported start tag "{tag}"')
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            raise EntityError(f'unexpected end tag "{tag}"')
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if "<" in data or ">" in data:
            raise EntityError("unescaped < or > in text")
        self.text.append(data)

    def handle_entityref(self, name: str) -> None:
        if name not in ("lt", "gt", "amp", "quot"):
            raise EntityError(f'unsupported HTML entity "&{name};"')
        self.text.append(html.unescape(f"&{name};"))

    def handle_charref(self, name: str) -> None:
        self.text.append(html.unescape(f"&#{name};"))


def parse_entities(markup: str) -> str:
    """The text a person sees for Telegram HTML ``markup``; EntityError where Telegram refuses it."""
    # Telegram wants every <, > and & outside tags and entities escaped: a bare one is an error.
    for index, char in enumerate(markup):
        if char == "&":
            end = markup.find(";", index)
            if end == -1 or not markup[index + 1 : end].replace("#", "").isalnum():
                raise EntityError(f"bare & at byte offset {index}")
    parser = _Parser()
    parser.feed(markup)
    parser.close()
    if parser.open:
        raise EntityError(f'can\'t find end tag corresponding to start tag "{parser.open[-1]}"')
    return "".join(parser.text)


def utf16_units(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts message length."""
    return len(text.encode("utf-16-le")) // 2


class FakeTelegram(FakeHttpServer):
    """A Bot API server for one bot (``token``), keeping the messages it was sent."""

    def __init__(
        self,
        *,
        token: str | None = None,
        chats: Iterable[int | str] = (-1001234567890,),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.token = token or f"{secrets.randbelow(10**9)}:{secrets.token_urlsafe(26)}"
        self.chats = {str(chat) for chat in chats}
        self.blocked: set[str] = set()
        self.messages: dict[int, SentMessage] = {}
        self._next_id = 1

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.post(r"/{bot:bot[^/]*}/{method}", self._method)]

    def refuse_credentials(self) -> None:
        """The bot's token is revoked (@BotFather /revoke): the old one gets 401."""
        self.token = f"{secrets.randbelow(10**9)}:{secrets.token_urlsafe(26)}"

    def error_body(self, status: int) -> bytes:
        return orjson.dumps(_error_payload(status, HTTPStatus(status).phrase))

    async def intercept(self, request: web.Request) -> web.Response | None:
        failure = await self.scripted()
        if failure is None:
            return None
        if failure.body is not None:
            body = failure.body
        else:
            wait = int(float(failure.retry_after)) if failure.retry_after is not None else None
            description = failure.message if failure.message != "scripted failure" else None
            phrase = description or (
                f"Too Many Requests: retry after {wait}"
                if failure.status == 429
                else HTTPStatus(failure.status).phrase
            )
            payload = _error_payload(failure.status, phrase)
            if failure.status == 429 and wait is not None:
                payload["parameters"] = {"retry_after": wait}
            body = orjson.dumps(payload)
        await self.record(request, b"", failure.status)
        return web.Response(status=failure.status, body=body, content_type="application/json")

    def sent(self) -> list[SentMessage]:
        """The messages held, in the order they were sent."""
        return sorted(self.messages.values(), key=lambda m: m.message_id)

    async def _method(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.match_info["bot"] != f"bot{self.token}":
            await self.record(request, body, 401)
            return _error(401, "Unauthorized")
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        try:
            params = _params(request, body)
        except ValueError:
            await self.record(request, body, 400)
            return _error(400, "Bad Request: invalid request body")
        method = request.match_info["method"]
        handler = {"getMe": self._get_me, "sendMessage": self._send, "editMessageText": self._edit}.get(
            method
        )
        if handler is None:
            await self.record(request, body, 404)
            return _error(404, "Not Found")
        response = handler(params)
        await self.record(request, body, response.status)
        return response

    def _get_me(self, params: dict[str, Any]) -> web.Response:
        bot_id = int(self.token.split(":", 1)[0] or 0)
        return _ok({"id": bot_id, "is_bot": True, "first_name": "CE", "username": "ce_daemon_bot"})

    def _check(self, params: dict[str, Any]) -> tuple[str, str] | web.Response:
        chat = str(params.get("chat_id", ""))
        if chat not in self.chats:
            return _error(400, "Bad Request: chat not found")
        if chat in self.blocked:
            return _error(403, "Forbidden: bot was blocked by the user")
        markup = params.get("text")
        if not isinstance(markup, str) or not markup.strip():
            return _error(400, "Bad Request: message text is empty")
        if params.get("parse_mode") == "HTML":
            try:
                text = parse_entities(markup)
            except EntityError as exc:
                return _error(400, f"Bad Request: can't parse entities: {exc}")
        else:
            text = markup
        if utf16_units(text) > 4096:
            return _error(400, "Bad Request: message is too long")
        return chat, text

    def _send(self, params: dict[str, Any]) -> web.Response:
        checked = self._check(params)
        if isinstance(checked, web.Response):
            return checked
        chat, text = checked
        message = SentMessage(chat, self._next_id, text, str(params["text"]))
        self._next_id += 1
        self.messages[message.message_id] = message
        return _ok(self._message(message))

    def _edit(self, params: dict[str, Any]) -> web.Response:
        checked = self._check(params)
        if isinstance(checked, web.Response):
            return checked
        chat, text = checked
        try:
            message = self.messages[int(params.get("message_id", 0))]
        except (KeyError, TypeError, ValueError):
            return _error(400, "Bad Request: message to edit not found")
        if message.chat_id != chat:
            return _error(400, "Bad Request: message to edit not found")
        if message.html == params["text"]:
            return _error(
                400,
                "Bad Request: message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message",
            )
        message.text, message.html, message.edits = text, str(params["text"]), message.edits + 1
        return _ok(self._message(message))

    @staticmethod
    def _message(message: SentMessage) -> dict[str, Any]:
        chat_id: int | str = (
            int(message.chat_id) if message.chat_id.lstrip("-").isdigit() else message.chat_id
        )
        chat = {"id": chat_id, "type": "supergroup" if str(chat_id).startswith("-100") else "private"}
        return {"message_id": message.message_id, "date": 1_700_000_000, "chat": chat, "text": message.text}


def _params(request: web.Request, body: bytes) -> dict[str, Any]:
    if request.content_type == "application/json":
        parsed = orjson.loads(body) if body else {}
        if not isinstance(parsed, dict):
            raise ValueError("not an object")
        return parsed
    return dict(parse_qsl(body.decode()))


def _error_payload(code: int, description: str) -> dict[str, Any]:
    return {"ok": False, "error_code": code, "description": description}


def _error(code: int, description: str) -> web.Response:
    return json_response(_error_payload(code, description), code)


def _ok(result: Any) -> web.Response:
    return json_response({"ok": True, "result": result})
