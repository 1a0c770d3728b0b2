"""What the Netskope plugins share: the tenant's address and token, one session, bounded calls.

`TenantClient` holds the session and makes the calls; the list sinks (`TenantSink`) and the risk
actions (`ce_netskope.risk`) each own one.

A call answers ``(status, body)`` for 2xx and for the one refusal a sink reads itself (a 400, which
names invalid entries); every other status is classified once by :func:`ce_daemon.http.status_error`.
A 429 whose ``Retry-After`` is short is waited out inside the push (nothing was applied); a longer
one is raised as :class:`TransientError` for the core to wait. A connection lost before the whole
answer arrived is a :class:`TransientError` too: the change may have landed, so the push that
retries it looks at the list again before writing.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import aiohttp
import orjson
from pydantic import Field, SecretStr
from typing_extensions import TypeVar

from ce_daemon.http import (
    MAX_ANSWER_BYTES,
    ConnectionOptions,
    excerpt,
    make_session,
    read_body,
    read_excerpt,
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
    ThreatSink,
    TransientError,
    register_secret,
)

SHORT_WAIT = 2.0
"""The longest ``Retry-After`` (seconds) waited out inside one push; longer ones go back to the core."""
RATE_LIMIT_ATTEMPTS = 3
"""How many 429s in a row one call waits out before it gives up."""
DRAIN_LIMIT = 256 * 1024**2
"""How much of an answer nobody reads (a deploy lists every list of the tenant) is drained at most."""
_DRAIN_CHUNK = 1024**2


class TenantConnection(ConnectionOptions):
    """Where the tenant is and the API token (plus ``timeout`` and ``tls``)."""

    url: Annotated[str, Field(pattern=r"^https?://[^/?#]+/?$")]
    """The tenant's base URL (``https://example.goskope.com``), without a path."""
    token: SecretStr
    """The REST API token (v2 for URL lists and risk actions, v1 for file-hash lists)."""


class TenantOptions(TenantConnection):
    """A list sink's tenant, token and list."""

    list: Annotated[str, Field(min_length=1, max_length=255)]
    """The name of the list this destination owns (no other writer should use it)."""


TenantOptionsT_co = TypeVar("TenantOptionsT_co", bound=TenantOptions, covariant=True, default=TenantOptions)


class Answer:
    """A 2xx or 400 answer: its status, headers and body (bytes; empty when it was drained)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self, target: str) -> Any:
        """The body as JSON; a :class:`TransientError` when it is not (a broken or hostile peer)."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise TransientError(
                f"{target} answered HTTP {self.status} with a body that is not JSON: {excerpt(self.body)}"
            ) from None


class TenantClient:
    """One session to one tenant for a plugin's life, and its calls.

    ``headers`` go on every request (the v2 token header; v1 has none). The session is made on first use.
    """

    def __init__(self, options: TenantConnection, context: PluginContext, headers: Mapping[str, str]) -> None:
        self.options = options
        self.context = context
        self.base = options.url.rstrip("/")
        self._headers = dict(headers)
        self._session: aiohttp.ClientSession | None = None
        register_secret(options.token.get_secret_value())

    def session(self) -> aiohttp.ClientSession:
        """The session, made on first use."""
        if self._session is None:
            self._session = make_session(self.options, self.context.base_dir, **self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        params: list[tuple[str, str]] | None = None,
        read: bool = True,
        keep: frozenset[int] = frozenset({400}),
    ) -> Answer:
        """One request; a 2xx :class:`Answer` or one whose status is in ``keep``, else the classified error.

        ``read`` False drains a 2xx body without keeping it (a deploy's answer, the list a PATCH
        echoes): the call still fails when the connection drops before its end.
        """
        target = f"{method} {path}"
        data = None if body is None else orjson.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in range(1, RATE_LIMIT_ATTEMPTS + 1):
            try:
                async with self.session().request(
                    method,
                    self.base + path,
                    data=None if data is None else io.BytesIO(data),  # a list's 7 MB stay off the loop
                    params=params,
                    headers=headers,
                    allow_redirects=False,
                ) as response:
                    status, answer_headers = response.status, response.headers
                    if 200 <= status < 300:
                        payload = await read_body(response, target) if read else await _drain(response)
                        return Answer(status, answer_headers, payload)
                    if status in keep:
                        return Answer(
                            status, answer_headers, await read_body(response, target, MAX_ANSWER_BYTES)
                        )
                    text = "" if 300 <= status < 400 else await read_excerpt(response)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(exc, f"{self.base}: {target}") from exc
            wait = retry_after(answer_headers)
            if status == 429 and wait is not None and wait <= SHORT_WAIT and attempt < RATE_LIMIT_ATTEMPTS:
                self.context.log.info("netskope.rate_limited", request=target, wait=wait)
                await asyncio.sleep(wait)
                continue
            message = f"{self.base}: {target} answered HTTP {status}" + (f": {text}" if text else "")
            raise status_error(status, message, answer_headers, target)
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


class TenantSink(ThreatSink[TenantOptionsT_co]):
    """A threat sink talking to one Netskope tenant through one session for its life."""

    api_version: ClassVar[int] = 1
    _client: TenantClient | None = None

    def __init__(self, options: TenantOptionsT_co, context: PluginContext) -> None:
        super().__init__(options, context)
        self.base = options.url.rstrip("/")
        register_secret(options.token.get_secret_value())

    def headers(self) -> dict[str, str]:
        """Headers every request of this sink carries (the v2 token header; v1 has none)."""
        return {}

    def client(self) -> TenantClient:
        """The sink's client, made on first use."""
        if self._client is None:
            self._client = TenantClient(self.options, self.context, self.headers())
        return self._client

    def session(self) -> aiohttp.ClientSession:
        """The sink's session, made on first use."""
        return self.client().session()

    async def open(self) -> None:
        self.session()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        params: list[tuple[str, str]] | None = None,
        read: bool = True,
    ) -> Answer:
        """One request; a 2xx or 400 :class:`Answer`, else the classified error (`TenantClient.call`)."""
        return await self.client().call(method, path, body, params=params, read=read)


class TenantPlugin:
    """What a plugin talking to one tenant through one :class:`TenantClient` for its life shares: open,
    close, and a health check that makes :meth:`probe` (a read that changes nothing). Put it first
    among the bases."""

    client: TenantClient

    async def open(self) -> None:
        self.client.session()

    async def close(self) -> None:
        await self.client.close()

    async def probe(self) -> None:
        """The read :meth:`health` makes."""
        raise NotImplementedError

    async def health(self) -> Health:
        """The probe must be allowed to our token."""
        try:
            await self.probe()
        except (TransientError, AuthError, PermanentError, ComponentConfigError) as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True)


async def _drain(response: aiohttp.ClientResponse) -> bytes:
    """Read an answer to its end (or `DRAIN_LIMIT`) keeping nothing: a dropped connection still raises."""
    drained = 0
    while drained < DRAIN_LIMIT:
        chunk = await response.content.read(_DRAIN_CHUNK)
        if not chunk:
            break
        drained += len(chunk)
    return b""


def error_messages(parsed: object) -> str:
    """The ``errors`` of a Netskope error body, joined and scrubbed (``""`` when it has none)."""
    if not isinstance(parsed, dict):
        return ""
    errors = parsed.get("errors")
    if isinstance(errors, str):
        errors = [errors]
    if not isinstance(errors, list):
        return excerpt(str(parsed.get("message") or parsed.get("msg") or ""))
    return excerpt("; ".join(str(error) for error in errors[:5]))
