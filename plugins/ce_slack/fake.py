"""A fake Slack: incoming webhooks and the Web API methods the ``slack`` destination calls.

Incoming webhooks (``POST /services/T…/B…/<secret>``) answer ``200 ok`` (``text/plain``) or a status
with a one-word reason, as Slack does: 400 ``invalid_payload`` (not JSON) or ``no_text`` (neither
text nor blocks) or ``invalid_blocks``, 403 ``invalid_token`` (a revoked webhook), 404
``no_service`` (an unknown one) and ``channel_not_found``, 410 ``channel_is_archived``, 429
``rate_limited`` with ``Retry-After``. The Web API (``POST /api/<method>``: ``auth.test``,
``chat.postMessage``, ``chat.update``, ``chat.getPermalink``) takes JSON or a form, the token as
``Authorization: Bearer`` or a ``token`` field, and answers HTTP 200 ``{"ok": false, "error": …}``
for what it refuses (``not_authed``, ``invalid_auth``, ``channel_not_found``, ``not_in_channel``,
``is_archived``, ``no_text``, ``msg_too_long``, ``invalid_blocks``, ``message_not_found``…), HTTP 429
``ratelimited`` with ``Retry-After`` when rate limited.

Scripting (:meth:`FakeHttpServer.fail_next`): a failure with status 200 and a ``code`` answers
``{"ok": false, "error": code}`` on the Web API; any other status answers the code (or a default)
as the body of a webhook, or as the Web API's error object.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

TEXT_LIMIT = 40_000
MAX_BLOCKS = 50
_DEFAULT_ERRORS = {429: "ratelimited", 500: "internal_error", 503: "service_unavailable"}


@dataclass
class Channel:
    """A channel of the fake workspace."""

    id: str
    name: str
    archived: bool = False
    bot_member: bool = True


@dataclass
class Message:
    """A message as the fake holds it (Web API messages may be edited)."""

    channel: str
    ts: str
    text: str
    blocks: list[Any]
    metadata: Any = None
    edits: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Webhook:
    """An incoming webhook: the channel it posts to, and whether it was revoked."""

    channel: str
    revoked: bool = False


class FakeSlack(FakeHttpServer):
    """Incoming webhooks and a few Web API methods of one workspace (see the module docstring)."""

    def __init__(self, *, token: str = "xoxb-fake-token-0123456789") -> None:  # noqa: S107 - a test token
        super().__init__()
        self.token = token
        self.team = "T0FAKE"
        self.channels: dict[str, Channel] = {"C0ALERTS": Channel("C0ALERTS", "soc-alerts")}
        self.webhooks: dict[str, Webhook] = {}
        self.messages: dict[tuple[str, str], Message] = {}
        self.posted: list[Message] = []
        """Every message posted, by webhook or Web API, in order (edits change the Message in place)."""
        self._ts = 0

    # -- set-up -----------------------------------------------------------------------------------

    def add_channel(self, channel_id: str, name: str, **flags: bool) -> Channel:
        """Add a channel (``archived``, ``bot_member`` flags)."""
        channel = Channel(channel_id, name, **flags)
        self.channels[channel_id] = channel
        return channel

    def new_webhook(self, channel: str = "C0ALERTS") -> str:
        """A new incoming webhook posting to ``channel``: its full URL (the fake must be started)."""
        path = f"/services/{self.team}/B{secrets.token_hex(4).upper()}/{secrets.token_urlsafe(18)}"
        self.webhooks[path] = Webhook(channel)
        return f"{self.url}{path}"

    def refuse_credentials(self) -> None:
        """The bot token is rotated and every webhook revoked."""
        self.token = f"xoxb-{secrets.token_hex(12)}"
        for hook in self.webhooks.values():
            hook.revoked = True

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/services/{team}/{bot}/{secret}", self._webhook),
            web.post("/api/{method}", self._api),
        ]

    # -- incoming webhooks ----------------------------------------------------------------------

    async def _webhook(self, request: web.Request) -> web.Response:  # noqa: PLR0911 - one answer per refusal
        scripted = await self.scripted()
        if scripted is not None:
            body = (
                scripted.body
                if scripted.body is not None
                else (scripted.code or _webhook_default(scripted.status)).encode()
            )
            await self.record(request, b"", scripted.status)
            return web.Response(
                status=scripted.status, body=body, headers=scripted.headers, content_type="text/plain"
            )
        body = await request.read()
        hook = self.webhooks.get(request.path)
        if hook is None:
            return await self._text(request, body, 404, "no_service")
        if hook.revoked:
            return await self._text(request, body, 403, "invalid_token")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return await self._text(request, body, 400, "invalid_payload")
        if not isinstance(payload, dict):
            return await self._text(request, body, 400, "invalid_payload")
        channel = self.channels.get(hook.channel)
        if channel is None:
            return await self._text(request, body, 404, "channel_not_found")
        if channel.archived:
            return await self._text(request, body, 410, "channel_is_archived")
        problem = _message_problem(payload)
        if problem is not None:
            return await self._text(request, body, 400, problem)
        posted = Message(
            channel.id, self._next_ts(), str(payload.get("text", "")), list(payload.get("blocks") or [])
        )
        self.posted.append(posted)
        return await self._text(request, body, 200, "ok")

    async def _text(self, request: web.Request, body: bytes, status: int, text: str) -> web.Response:
        await self.record(request, body, status)
        return web.Response(status=status, text=text, content_type="text/plain")

    # -- Web API -----------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:  # noqa: PLR0911 - one answer per refusal
        scripted = await self.scripted()
        if scripted is not None:
            await self.record(request, b"", scripted.status)
            if scripted.body is not None:
                return web.Response(status=scripted.status, body=scripted.body, headers=scripted.headers)
            error = scripted.code or _DEFAULT_ERRORS.get(scripted.status, "internal_error")
            return json_response({"ok": False, "error": error}, scripted.status, scripted.headers)
        body = await request.read()
        try:
            args = _arguments(request, body)
        except ValueError:
            return await self._answer(request, body, {"ok": False, "error": "invalid_json"})
        token = _token(request, args)
        if token is None:
            return await self._answer(request, body, {"ok": False, "error": "not_authed"})
        if not hmac.compare_digest(token, self.token):
            return await self._answer(request, body, {"ok": False, "error": "invalid_auth"})
        method = request.match_info["method"]
        handler = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.getPermalink": self._permalink,
        }.get(method)
        if handler is None:
            return await self._answer(request, body, {"ok": False, "error": "unknown_method"}, 404)
        return await self._answer(request, body, handler(args))

    async def _answer(
        self, request: web.Request, body: bytes, answer: dict[str, Any], status: int = 200
    ) -> web.Response:
        await self.record(request, body, status)
        return json_response(answer, status)

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "team": "Fake SOC", "team_id": self.team, "user": "ce-bot", "bot_id": "B0BOT"}

    def _channel(self, name: Any) -> Channel | dict[str, Any]:
        if not isinstance(name, str) or not name:
            return {"ok": False, "error": "channel_not_found"}
        bare = name.lstrip("#")
        channel = self.channels.get(bare) or next((c for c in self.channels.values() if c.name == bare), None)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if channel.archived:
            return {"ok": False, "error": "is_archived"}
        if not channel.bot_member:
            return {"ok": False, "error": "not_in_channel"}
        return channel

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args.get("channel"))
        if isinstance(channel, dict):
            return channel
        problem = _message_problem(args)
        if problem is not None:
            return {"ok": False, "error": problem}
        posted = Message(
            channel.id,
            self._next_ts(),
            str(args.get("text", "")),
            list(args.get("blocks") or []),
            args.get("metadata"),
        )
        self.messages[(channel.id, posted.ts)] = posted
        self.posted.append(posted)
        return {
            "ok": True,
            "channel": channel.id,
            "ts": posted.ts,
            "message": {"text": posted.text, "type": "message"},
        }

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args.get("channel"))
        if isinstance(channel, dict):
            return channel
        found = self.messages.get((channel.id, str(args.get("ts"))))
        if found is None:
            return {"ok": False, "error": "message_not_found"}
        problem = _message_problem(args)
        if problem is not None:
            return {"ok": False, "error": problem}
        found.history.append({"text": found.text, "blocks": found.blocks})
        found.text, found.blocks = str(args.get("text", "")), list(args.get("blocks") or [])
        found.edits += 1
        return {"ok": True, "channel": channel.id, "ts": found.ts, "text": found.text}

    def _permalink(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args.get("channel"))
        if isinstance(channel, dict):
            return channel
        ts = str(args.get("message_ts"))
        if (channel.id, ts) not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        return {
            "ok": True,
            "channel": channel.id,
            "permalink": f"https://fake-soc.slack.com/archives/{channel.id}/p{ts.replace('.', '')}",
        }

    def delete(self, channel: str, ts: str) -> None:
        """Delete a message (a person removed it)."""
        self.messages.pop((channel, ts), None)

    def _next_ts(self) -> str:
        self._ts += 1
        return f"{1_700_000_000 + self._ts}.{self._ts:06d}"


def _webhook_default(status: int) -> str:
    return {429: "rate_limited", 500: "rollup_error"}.get(status, "internal_error")


def _arguments(request: web.Request, body: bytes) -> dict[str, Any]:
    """The call's arguments: a JSON object, or a form whose ``blocks`` and ``metadata`` are JSON text."""
    if request.content_type == "application/json":
        try:
            parsed = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError as exc:
            raise ValueError(str(exc)) from exc
        if not isinstance(parsed, dict):
            raise ValueError("not an object")
        return parsed
    form: dict[str, Any] = dict(parse_qsl(body.decode("utf-8", "replace")))
    for key in ("blocks", "metadata"):
        if key in form:
            try:
                form[key] = orjson.loads(form[key])
            except orjson.JSONDecodeError as exc:
                raise ValueError(str(exc)) from exc
    return form


def _token(request: web.Request, args: dict[str, Any]) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :]
    token = args.get("token")
    return token if isinstance(token, str) else None


def _message_problem(args: dict[str, Any]) -> str | None:
    """Slack's error for a message it would refuse, or None."""
    text, blocks = args.get("text"), args.get("blocks")
    if not text and not blocks:
        return "no_text"
    if isinstance(text, str) and len(text) > TEXT_LIMIT:
        return "msg_too_long"
    if blocks is not None and (
        not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS or not all(_block_ok(b) for b in blocks)
    ):
        return "invalid_blocks"
    return None


def _block_ok(block: Any) -> bool:
    """A block within Block Kit's limits (the kinds the destination sends)."""
    if not isinstance(block, dict):
        return False
    kind, text = block.get("type"), block.get("text")
    if kind == "header":
        return (
            isinstance(text, dict)
            and text.get("type") == "plain_text"
            and 0 < len(str(text.get("text", ""))) <= 150
        )
    if kind == "section":
        fields = block.get("fields")
        if fields is not None and (
            not isinstance(fields, list)
            or len(fields) > 10
            or any(len(str(f.get("text", ""))) > 2000 for f in fields)
        ):
            return False
        return fields is not None or (isinstance(text, dict) and 0 < len(str(text.get("text", ""))) <= 3000)
    if kind == "context":
        elements = block.get("elements")
        return isinstance(elements, list) and 0 < len(elements) <= 10
    return kind in ("divider", "actions", "image", "rich_text")
