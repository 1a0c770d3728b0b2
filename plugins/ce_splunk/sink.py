"""Send batches to Splunk's HTTP Event Collector (``/services/collector/event``).

Envelopes are concatenated (not a JSON array) and gzipped; requests stay under
``max_request_bytes`` (before compression), a 413 halves the request. Answers follow Splunk's
documented ``{"text", "code"}`` table:

- codes 2/3 (401) and 4/1 (403): the token is refused → :class:`AuthError`;
- code 6 "invalid data format" with ``invalid-event-number`` (also 12/13/15, which carry it too):
  HEC parses a batch in order and stops at the bad event, so the events before it were taken,
  that one is refused alone and the rest is sent again;
- a request refused for good otherwise: its events are refused, the other requests go on;
- code 7 "incorrect index", 10/11 (channel), 14 (acknowledgement disabled): the settings do not
  match the token → :class:`ComponentConfigError`, the route stops, nothing is dead-lettered;
- code 9 "server is busy" (503), 429 and 5xx → :class:`TransientError` with ``Retry-After``;
- anything else 4xx (5 "no data", 6 without an event number) → :class:`PermanentError`.

HEC has no idempotency key: so that a batch retried after a failure half-way does not send again
the requests HEC took, the sink remembers which events of the batch were delivered until it
succeeds (the core retries with the very same records), as for Azure and Chronicle.

With ``acknowledgement: true`` every request carries ``X-Splunk-Request-Channel``, and ``send``
returns only once ``/services/collector/ack`` says every ``ackId`` of the batch was indexed; if
that takes longer than ``ack_timeout``, or the batch fails before, nothing of it counts as
delivered: it is reported transient and sent again whole (at least once, as HEC promises).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator

from ce_daemon.http import (
    HttpOptions,
    HttpSink,
    ItemRefusedError,
    RequestTooLargeError,
    ResumableSender,
    excerpt,
    json_object,
    make_session,
    prepare_body,
    read_body,
    status_error,
    transport_error,
)
from ce_daemon.plugin import (
    ComponentConfigError,
    Health,
    OutRecord,
    PluginContext,
    SendResult,
    Timeout,
    TransientError,
)
from ce_splunk.envelope import EnvelopeWriter

_COLLECTOR_PATH = re.compile(r"/services/collector(?:/event|/raw)?(?:/1\.0)?/?$")
_PER_EVENT_CODES = frozenset({6, 12, 13, 15})
"""Codes whose ``invalid-event-number`` names the one event at fault."""
_CONFIG_CODES = frozenset({7, 10, 11, 14})
_ACK_FIRST_POLL = 0.1
_ACK_MAX_POLL = 2.0


class SplunkHecOptions(HttpOptions):
    """Options of the ``splunk_hec`` sink; ``url`` is the collector's base (``https://splunk:8088``)."""

    token: SecretStr
    index: str | None = None
    """The index events go to (None: the token's default index)."""
    sourcetype: str | None = None
    """A fixed sourcetype; by default ``netskope:alert`` for alerts and ``netskope:event`` for events."""
    source: str | None = None
    host: str | None = None
    fields: dict[str, str] = {}
    """Indexed fields added to every event."""
    gzip: bool = True
    max_request_bytes: Annotated[int, Field(ge=4096, le=1024**3)] = 1_000_000
    """The largest body (before compression) of one request; match the server's ``max_content_length``."""
    acknowledgement: bool = False
    """Wait for indexer acknowledgement (the token must have it enabled)."""
    channel: uuid.UUID | None = None
    """The request channel for acknowledgement (default: a new one per start)."""
    ack_timeout: Timeout = 60.0
    """How long to wait for acknowledgement before the batch is sent again."""

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        """Accept the full endpoint URL too: keep only the collector's base."""
        return _COLLECTOR_PATH.sub("", value.rstrip("/")).rstrip("/")


class SplunkHecSink(HttpSink[SplunkHecOptions]):
    """The ``splunk_hec`` log sink."""

    api_version = 1
    max_batch_bytes = 900_000

    def __init__(self, options: SplunkHecOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        opts = self.options
        self._writer = EnvelopeWriter(
            index=opts.index,
            sourcetype=opts.sourcetype,
            source=opts.source,
            host=opts.host,
            fields=opts.fields,
        )
        self._channel = str(opts.channel or uuid.uuid4())
        self._event_url = f"{opts.url}/services/collector/event"
        self._sender = ResumableSender()

    def new_session(self) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Splunk {self.options.token.get_secret_value()}"}
        if self.options.acknowledgement:
            headers["X-Splunk-Request-Channel"] = self._channel
        return make_session(self.options, self.context.base_dir, **headers)

    # -- health ------------------------------------------------------------------------------

    async def health(self) -> Health:
        """HEC's health endpoint, then the token: an empty POST must get "No data", not 401/403."""
        session = self.session()
        url = f"{self.options.url}/services/collector/health"
        try:
            async with session.get(url, allow_redirects=False) as response:
                answer = await _answer(response)
                if response.status != 200:
                    text = answer.get("text") or f"HTTP {response.status}"
                    return Health(ok=False, detail=f"HEC unhealthy: {text}")
            async with session.post(self._event_url, data=b"", allow_redirects=False) as response:
                answer = await _answer(response)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Health(ok=False, detail=str(transport_error(exc, url)))
        if status in (401, 403):
            return Health(ok=False, detail=f"HEC refused the token: {_describe(status, answer)}")
        if status == 200 or answer.get("code") == 5:
            return Health(ok=True, detail=f"HEC healthy at {self.options.url}")
        return Health(ok=False, detail=f"HEC answered {_describe(status, answer)}")

    # -- sending -----------------------------------------------------------------------------

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        acks: list[int] = []
        try:
            result = await self._sender.send(
                batch,
                self._writer.envelope,
                lambda envelopes: self._post(envelopes, acks),
                limit=self.options.max_request_bytes,
                oversize=lambda size: f"HEC event of {size} bytes exceeds max_request_bytes",
                on_split=lambda part: self.log.info("splunk.request_split", events=len(part)),
            )
            if acks:
                await self._wait_for_acks(acks)
        except BaseException:
            if self.options.acknowledgement:
                self._sender.forget()  # nothing HEC has not confirmed counts as delivered
            raise
        return result

    async def _post(self, envelopes: list[bytes], acks: list[int]) -> None:
        """Deliver ``envelopes`` in one request (their ``ackId`` goes in ``acks``).

        HEC parses a request in order and stops at a bad event: those before it were taken.
        """
        body = b"".join(envelopes)
        status, answer, headers = await self._request(self._event_url, body, compress=self.options.gzip)
        if 200 <= status < 300:
            if isinstance(answer.get("ackId"), int):
                acks.append(answer["ackId"])
            return
        if status == 413:
            raise RequestTooLargeError(_describe(status, answer))
        bad = answer.get("invalid-event-number")
        per_event = status == 400 and answer.get("code") in _PER_EVENT_CODES
        if per_event and isinstance(bad, int) and 0 <= bad < len(envelopes):
            raise ItemRefusedError(bad, f"HEC refused the event: {_describe(status, answer)}")
        raise _error(status, answer, headers)

    async def _request(
        self, url: str, body: bytes, *, compress: bool
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        """POST ``body``; the status, HEC's JSON answer and the headers (errors are the caller's to map)."""
        session = self.session()
        body, headers = await prepare_body(body, "application/json", compress=compress)
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                return response.status, await _answer(response), response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, url) from exc

    async def _wait_for_acks(self, ack_ids: list[int]) -> None:
        """Poll ``/services/collector/ack`` until every id is true, or give up after ``ack_timeout``."""
        pending = set(ack_ids)
        url = f"{self.options.url}/services/collector/ack"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.ack_timeout
        delay = _ACK_FIRST_POLL
        while pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.log.warning("splunk.ack_timeout", pending=len(pending), channel=self._channel)
                raise TransientError(
                    f"HEC did not confirm indexing of {len(pending)} request(s) within "
                    f"{self.options.ack_timeout:g}s; the batch will be sent again"
                )
            await asyncio.sleep(min(delay, remaining))  # indexing takes time: poll with a growing pause
            delay = min(delay * 2, _ACK_MAX_POLL)
            poll = orjson.dumps({"acks": sorted(pending)})
            status, answer, headers = await self._request(url, poll, compress=False)
            if not 200 <= status < 300:
                raise _error(status, answer, headers)
            statuses = answer.get("acks")
            if isinstance(statuses, dict):
                pending -= {int(key) for key, done in statuses.items() if done is True and key.isdigit()}


async def _answer(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """HEC's JSON answer (``{}`` when the body is not a JSON object, say from a proxy)."""
    body = await read_body(response, "Splunk HEC")
    answer = json_object(body)
    return answer if answer is not None else {"text": excerpt(body, 200)}


def _describe(status: int, answer: dict[str, Any]) -> str:
    text = answer.get("text")
    code = answer.get("code")
    described = f"HTTP {status}"
    if code is not None:
        described += f" code {code}"
    if text:
        described += f": {text}"
    if isinstance(answer.get("invalid-event-number"), int):
        described += f" (event {answer['invalid-event-number']})"
    return described


def _error(status: int, answer: dict[str, Any], headers: Mapping[str, str]) -> Exception:
    """The error taxonomy for a HEC failure (see the module docstring)."""
    code = answer.get("code")
    message = f"Splunk HEC answered {_describe(status, answer)}"
    if code in _CONFIG_CODES:
        hints = {
            7: "is `index` allowed for this token?",
            10: "the token needs indexer acknowledgement: set `acknowledgement: true`",
            11: "`channel` must be a UUID",
            14: "the token has indexer acknowledgement off: set `acknowledgement: false`",
        }
        return ComponentConfigError(f"{message}; {hints[code]}")
    busy = True if code == 9 else None  # "Server is busy"
    return status_error(status, message, headers, "Splunk HEC", retry=busy)
