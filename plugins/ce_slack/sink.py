"""Post a Slack message per ticket: through an incoming webhook, or the Web API's ``chat.postMessage``.

Two modes, by options:

- ``webhook_url`` (the URL is the secret): ``POST`` the message as JSON; Slack answers ``200`` with
  the body ``ok``, or a status and a one-word reason (400 ``invalid_payload``, 403 ``invalid_token``
  or ``action_prohibited``, 404 ``channel_not_found`` or ``no_service`` (the webhook was removed),
  410 ``channel_is_archived``, 429 with ``Retry-After``, 500 ``rollup_error``). A webhook cannot edit
  what it posted: a duplicate posts a new, short message ("seen N times").
- ``token`` (a bot token with ``chat:write``) and ``channel``: ``chat.postMessage`` with
  ``Authorization: Bearer``. The Web API answers HTTP 200 even when it refused the call
  (``{"ok": false, "error": …}``): ``ratelimited`` is transient (with ``Retry-After``), a refused token
  (``invalid_auth``, ``not_authed``, ``account_inactive``, ``token_revoked``, ``token_expired``,
  ``missing_scope``…) an :class:`AuthError`, a channel we cannot post to (``channel_not_found``,
  ``not_in_channel``, ``is_archived``) a :class:`ComponentConfigError`, Slack's own trouble
  (``internal_error``, ``fatal_error``, ``service_unavailable``, ``request_timeout``) transient, any other
  error permanent. The ticket is the message: :class:`TicketRef` holds its channel and ``ts``, its
  link is the message's permalink (``chat.getPermalink``, best effort), and a duplicate edits the
  message in place (``chat.update``: the count becomes "seen N times"); a message deleted meanwhile
  (``message_not_found``, ``cant_update_message``, ``edit_window_closed``) is posted anew.

Idempotency: Slack has no idempotency key and no search by one, so :meth:`SlackSink.find` answers
None and a create whose answer was lost may post the notification twice (once more, at most, per
lost answer). The Web API message carries the ticket's key in its metadata (``event_type``
``ce_daemon_ticket``) so that a person (or a later version reading ``conversations.history``) can tell.

No secret appears in an error: errors name "Slack webhook" or the Web API method, never the URL.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator, model_validator

from ce_daemon.http import (
    ERROR_BODY_BYTES,
    ConnectionOptions,
    HttpSession,
    excerpt,
    json_object,
    make_session,
    read_at_most,
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
from ce_slack import message

API_URL = "https://slack.com/api"
ANSWER_BYTES = 256 * 1024
"""The most of a Web API answer read (``chat.postMessage`` echoes the message: 50 blocks fit)."""

AUTH_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "not_allowed_token_type",
        "ekm_access_denied",
    }
)
CHANNEL_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived", "restricted_action"})
SLACK_TROUBLE = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})
GONE_MESSAGE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})

WEBHOOK_AUTH = frozenset({"invalid_token", "action_prohibited", "no_service", "team_disabled"})
WEBHOOK_CHANNEL = frozenset({"channel_not_found", "channel_is_archived", "user_not_found"})


class SlackOptions(ConnectionOptions):
    """Options of the ``slack`` ticket destination: ``webhook_url``, or ``token`` and ``channel``."""

    webhook_url: SecretStr | None = None
    """An incoming webhook's URL (``https://hooks.slack.com/services/T…/B…/…``); the URL is the secret."""
    token: SecretStr | None = None
    """A bot token (``xoxb-…``) with the ``chat:write`` scope (``chat.postMessage``, ``chat.update``)."""
    channel: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """Where the Web API posts: a channel ID (``C0123…``) or name (``#soc-alerts``)."""
    api_url: Annotated[str, Field(pattern=r"^https?://")] = API_URL
    """The Web API's base (a test server's in tests)."""
    permalink: bool = True
    """Ask ``chat.getPermalink`` for the message's link after posting (the ticket's link)."""

    @field_validator("webhook_url")
    @classmethod
    def _webhook_is_a_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("webhook_url must be an http(s) URL")  # the message never quotes the value
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> SlackOptions:
        if (self.webhook_url is None) == (self.token is None):
            raise ValueError("set either webhook_url, or token and channel")
        if self.token is not None and self.channel is None:
            raise ValueError("token needs a channel to post to")
        if self.webhook_url is not None and self.channel is not None:
            raise ValueError("a webhook posts to the channel it was made for: remove channel")
        return self


class SlackSink(HttpSession, TicketSink[SlackOptions]):
    """The ``slack`` ticket destination (incoming webhook or ``chat.postMessage``)."""

    api_version = 1

    def __init__(self, options: SlackOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        self._secrets: list[str] = []
        if options.webhook_url is not None:
            url = options.webhook_url.get_secret_value()
            parts = urlsplit(url)
            self._secrets = [url, url[len(f"{parts.scheme}://{parts.netloc}") :]]
        elif options.token is not None:
            self._secrets = [options.token.get_secret_value()]
        for secret in self._secrets:
            register_secret(secret)
        self._api = options.api_url.rstrip("/")

    @property
    def webhook(self) -> bool:
        """True when this destination posts through an incoming webhook."""
        return self.options.webhook_url is not None

    def new_session(self) -> aiohttp.ClientSession:
        """The destination's session, made by :meth:`session` (with the bearer token in Web API mode)."""
        headers = {}
        if self.options.token is not None:
            headers["Authorization"] = f"Bearer {self.options.token.get_secret_value()}"
        return make_session(self.options, self.context.base_dir, **headers)

    async def health(self) -> Health:
        """Web API: ``auth.test`` takes the token. A webhook cannot be probed without posting: not checked."""
        if self.webhook:
            return Health(ok=True, detail="incoming webhook (not probed: a probe would post)")
        try:
            answer = await self._call("auth.test", {})
        except Exception as exc:  # noqa: BLE001 - health reports every failure instead of raising
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"Slack workspace {excerpt(str(answer.get('team', '?')), 100)}")

    # -- the ticket operations ------------------------------------------------------------------

    async def create(self, ticket: Ticket) -> TicketRef:
        """Post the ticket's message; Web API: the ref holds its channel and ``ts``."""
        text, blocks = message.fallback_text(ticket), message.blocks(ticket)
        if self.webhook:
            await self._post_webhook({"text": text, "blocks": blocks, "unfurl_links": False})
            return TicketRef(id=ticket.key, state={"mode": "webhook"})
        answer = await self._call(
            "chat.postMessage",
            {
                "channel": self.options.channel,
                "text": text,
                "blocks": blocks,
                "metadata": message.metadata(ticket),
                "unfurl_links": False,
                "unfurl_media": False,
            },
        )
        channel, ts = answer.get("channel"), answer.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            raise PermanentError(
                f"Slack chat.postMessage answered ok without channel and ts: {excerpt(repr(answer))}"
            )
        return TicketRef(id=ts, url=await self._permalink(channel, ts), state={"channel": channel, "ts": ts})

    async def update(self, ref: TicketRef, ticket: Ticket) -> TicketRef:
        """Web API: edit the earlier message (``chat.update``); webhook: post a short "seen N times"."""
        if self.webhook:
            text = message.repeat_text(ticket)
            await self._post_webhook(
                {"text": text, "blocks": message.repeat_blocks(ticket), "unfurl_links": False}
            )
            return ref
        channel, ts = ref.state.get("channel"), ref.state.get("ts")
        if not channel or not ts:  # posted by a webhook before the options changed: post anew
            return await self.create(ticket)
        try:
            await self._call(
                "chat.update",
                {
                    "channel": channel,
                    "ts": ts,
                    "text": message.fallback_text(ticket),
                    "blocks": message.blocks(ticket),
                },
                gone_ok=True,
            )
        except _MessageGoneError:
            self.log.info("slack.message_gone", ts=ts)
            return await self.create(ticket)
        return ref

    # -- HTTP ------------------------------------------------------------------------------------

    async def _post_webhook(self, payload: dict[str, Any]) -> None:
        target = "Slack webhook"
        assert self.options.webhook_url is not None
        try:
            async with self.session().post(
                self.options.webhook_url.get_secret_value(),
                data=orjson.dumps(payload),
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
            ) as response:
                status, headers = response.status, response.headers
                raw = await read_at_most(response, ERROR_BODY_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport(exc, target) from exc
        said = excerpt(raw, 200)
        if status == 200 and raw.strip() == b"ok":
            return
        if status == 200:  # not Slack's answer (a proxy's page): whether it posted is unknown
            raise TransientError(f"{target} answered HTTP 200 but not `ok`: {said or '(empty)'}")
        reason = said.split(" ", 1)[0] if said else ""
        answered = f"{target} answered HTTP {status}" + (f": {said}" if said else "")
        if status == 429:
            raise TransientError(answered, retry_after=retry_after(headers))
        if reason in WEBHOOK_AUTH or status == 403:
            raise AuthError(f"{answered} (the webhook URL was refused: make a new one)")
        if reason in WEBHOOK_CHANNEL or status in (404, 410):
            raise ComponentConfigError(f"{answered} (the webhook's channel cannot take messages)")
        raise status_error(status, answered, headers, target)

    async def _call(self, method: str, payload: dict[str, Any], *, gone_ok: bool = False) -> dict[str, Any]:
        """One Web API call, JSON in and out; Slack's ``ok: false`` raised as its error."""
        target = f"Slack {method}"
        try:
            async with self.session().post(
                f"{self._api}/{method}",
                data=orjson.dumps(payload),
                headers={"Content-Type": "application/json; charset=utf-8"},
                allow_redirects=False,
            ) as response:
                status, headers = response.status, response.headers
                raw = await read_at_most(response, ANSWER_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport(exc, target) from exc
        if len(raw) > ANSWER_BYTES:
            raise TransientError(f"{target} answered more than {ANSWER_BYTES:,} bytes; it was not read")
        answer = json_object(raw)
        if status == 429:
            raise TransientError(f"{target}: rate limited (HTTP 429)", retry_after=retry_after(headers))
        if not 200 <= status < 300:
            raise status_error(
                status, f"{target} answered HTTP {status}: {excerpt(raw) or '(empty)'}", headers, target
            )
        if answer is None:
            raise TransientError(f"{target} answered a body that is not JSON: {excerpt(raw) or '(empty)'}")
        if answer.get("ok") is True:
            return answer
        if "ok" not in answer:  # not Slack's answer (a proxy's JSON): whether it posted is unknown
            raise TransientError(f"{target} answered JSON without `ok`: {excerpt(raw) or '(empty)'}")
        error = str(answer.get("error") or "unknown_error")
        said = f"{target} refused: {excerpt(error, 100)}"
        if error == "ratelimited":
            raise TransientError(said, retry_after=retry_after(headers))
        if error in AUTH_ERRORS:
            raise AuthError(f"{said} (check the bot token and its chat:write scope)")
        if error in CHANNEL_ERRORS:
            raise ComponentConfigError(f"{said} (invite the bot to the channel, or fix `channel`)")
        if error in SLACK_TROUBLE:
            raise TransientError(said, retry_after=retry_after(headers))
        if gone_ok and error in GONE_MESSAGE:
            raise _MessageGoneError(said)
        raise PermanentError(said)

    async def _permalink(self, channel: str, ts: str) -> str:
        """The message's link, or "" when Slack does not give it (the message is posted either way)."""
        if not self.options.permalink:
            return ""
        try:
            answer = await self._call("chat.getPermalink", {"channel": channel, "message_ts": ts})
        except Exception as exc:  # noqa: BLE001 - a link is a nicety: the ticket exists already
            self.log.info("slack.permalink_failed", error=str(exc))
            return ""
        link = answer.get("permalink")
        return link if isinstance(link, str) and link.startswith("https://") else ""

    def _transport(self, exc: BaseException, target: str) -> TransientError:
        """A connection failure, with any secret the library quoted (a URL) taken out."""
        error = transport_error(exc, target)
        text = str(error)
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        return TransientError(excerpt(text, 1000))


class _MessageGoneError(Exception):
    """``chat.update`` found no message to edit (deleted, or too old to edit)."""
