"""HTTP plumbing every HTTP plugin shares: TLS options, sessions, and status classification.

Plugins use this instead of each writing their own: verification is on by default, a custom
CA and a client certificate are options, ``Retry-After`` (seconds or an HTTP date) is
honoured, and statuses map onto the core's error taxonomy the same way everywhere:

- 408, 425, 429 and 5xx (except 501, 505) → :class:`TransientError` (retry the batch);
- 401 and 403 → :class:`AuthError` (stop the component, no retry storm);
- 3xx → :class:`ComponentConfigError` naming where it pointed: no redirect is ever followed, since the
  credentials a session carries would go along to wherever it points (:func:`make_session` refuses
  one even when a request allows it);
- any other 4xx → :class:`PermanentError` (dead-letter what was sent).

:func:`status_error` is that classification, written once; a sink first handles what only its
vendor says (a 413 to split, a 404 naming a missing index, an error code that means "busy") and
hands every other answer to it, with the vendor's own verdict when its error code gives one.

Answers are read within bounds (:func:`read_body`, :func:`read_at_most`, :func:`read_excerpt`): a target
cannot make us hold more than what we need of what it sends.

It also holds what several HTTP plugins need alike: one session for a plugin's life
(:class:`HttpSession`; for a log sink :class:`HttpSink`), gzip bodies (:func:`prepare_body`),
requests kept under a byte cap and halved when the target says they are too large
(:func:`split_by_size`, :func:`send_halving`), a batch sent in several requests without sending
again what a target took (:class:`ResumableSender`), and OAuth 2.0 access tokens cached until they
expire, renewed once when an API refuses one (:class:`OAuth2Token`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import gzip
import ssl
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import orjson
from pydantic import Field, SecretStr
from typing_extensions import TypeVar
from zlib_ng import zlib_ng

from ce_daemon import __version__, redact
from ce_daemon.errors import AuthError, CeDaemonError, ComponentConfigError, PermanentError, TransientError
from ce_daemon.plugin import (
    LogSink,
    OutBatch,
    OutRecord,
    PluginContext,
    PluginOptions,
    SecretOrText,
    SendResult,
    Timeout,
)

USER_AGENT = f"ce-daemon/{__version__}"
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504, 507, 508, 509, 520, 521, 522, 523, 524})
_GZIP_IN_THREAD = 256 * 1024  # compress larger bodies off the event loop
_TOKEN_REFRESH_MARGIN = 300.0  # renew early so that a request never leaves with a token about to lapse
_EXCERPT_MARGIN = 8192  # read past an excerpt's cut, so that a secret across the cut is still recognised
MAX_ANSWER_BYTES = 16 * 1024**2
"""The largest answer body a sink parses (an Elasticsearch bulk answer for 5,000 documents is ~1 MB)."""
ERROR_BODY_BYTES = 64 * 1024
"""How much of an error answer is read to find its code and message (the rest is never read)."""

# aiohttp inflates every gzipped answer with one zlib per process: zlib-ng, a drop-in that inflates the
# same streams 2.2x faster. Netskope's pages come gzipped, and inflating them was the largest cost of
# ingestion left (2.1 of ~8 CPU-µs per record, bench_ingest).
aiohttp.set_zlib_backend(zlib_ng)


class TlsOptions(PluginOptions):
    """TLS settings for an outgoing connection (verification on by default)."""

    verify: bool = True
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    min_version: str = "1.2"


class ConnectionOptions(PluginOptions):
    """What every connection has: how long to wait for an answer, and TLS."""

    timeout: Timeout = 30.0
    tls: TlsOptions = TlsOptions()


class HttpOptions(ConnectionOptions):
    """What every HTTP target given by URL has: where, how long to wait, TLS, extra headers."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    headers: dict[str, SecretOrText] = {}
    """Extra request headers; a value may be a secret reference (``X-Api-Key: {$env: KEY}``)."""


def ssl_context(tls: TlsOptions, base_dir: Path | None = None) -> ssl.SSLContext | bool:
    """An SSL context for ``tls`` (False only when verification is switched off on purpose)."""
    if not tls.verify and tls.client_cert is None:
        return False

    def resolve(path: Path) -> str:
        return str(path if path.is_absolute() or base_dir is None else base_dir / path)

    context = ssl.create_default_context(cafile=resolve(tls.ca_file) if tls.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert is not None:
        context.load_cert_chain(resolve(tls.client_cert), resolve(tls.client_key) if tls.client_key else None)
    return context


def make_session(
    options: ConnectionOptions, base_dir: Path | None = None, **headers: str
) -> aiohttp.ClientSession:
    """A client session for one target: timeouts, TLS, our User-Agent, the configured headers."""
    configured = options.headers if isinstance(options, HttpOptions) else {}
    refuse = aiohttp.TraceConfig()
    refuse.on_request_redirect.append(_refuse_redirect)
    return aiohttp.ClientSession(
        headers={"User-Agent": USER_AGENT, **configured, **headers},
        timeout=aiohttp.ClientTimeout(total=options.timeout),
        connector=aiohttp.TCPConnector(ssl=ssl_context(options.tls, base_dir), limit=16),
        trace_configs=[refuse],
    )


async def _refuse_redirect(
    session: aiohttp.ClientSession, context: object, params: aiohttp.TraceRequestRedirectParams
) -> None:
    """Called by aiohttp before it follows a redirect (a request sent without ``allow_redirects=False``)."""
    params.response.release()
    raise redirect_error(params.response.status, params.response.headers, str(params.url))


def redirect_error(
    status: int,
    headers: Mapping[str, str] | None,
    target: str,
    fix: str = "set the URL to the address that answers itself",
) -> ComponentConfigError:
    """The error for a 3xx answer: it names where it pointed; nothing is retried until the URL changes."""
    location = headers.get("Location") if headers is not None else None
    return ComponentConfigError(
        f"{target} answered HTTP {status}, a redirect to {location or 'nowhere (no Location header)'};"
        f" redirects are not followed (the credentials would go along): {fix}"
    )


def retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (it may be a number of seconds or an HTTP date); None when absent."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (now if now is not None else time.time()))


def status_error(
    status: int,
    message: str,
    headers: Mapping[str, str] | None,
    target: str,
    *,
    retry: bool | None = None,
    auth: bool = False,
) -> CeDaemonError:
    """The error for a non-2xx answer, by the classification in the module docstring.

    ``message`` says what was answered (the redirect error names ``target`` and where it pointed
    instead). The vendor's own verdict, when its error code gives one, overrides the status:
    ``retry=True`` retries (``Retry-After`` honoured), ``retry=False`` never does, ``None`` lets the
    status decide; ``auth=True`` is a refusal of the credentials whatever the status.
    """
    if 300 <= status < 400:
        return redirect_error(status, headers, target)
    if retry:
        return TransientError(message, retry_after=retry_after(headers))
    if auth or status in (401, 403):
        return AuthError(message)
    if retry is None and status in RETRYABLE:
        return TransientError(message, retry_after=retry_after(headers))
    return PermanentError(message)


async def raise_for_status(response: aiohttp.ClientResponse, target: str) -> None:
    """Map a non-2xx answer onto the error taxonomy (:func:`status_error`), with an excerpt of the body."""
    status = response.status
    if 200 <= status < 300:
        return
    body = "" if 300 <= status < 400 else await read_excerpt(response)
    message = f"{target} answered HTTP {status}" + (f": {body}" if body else "")
    raise status_error(status, message, response.headers, target)


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The first ``limit`` bytes of an answer's body (all of it when shorter); the rest is never read."""
    data = bytearray()
    while len(data) < limit:
        chunk = await response.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def read_body(response: aiohttp.ClientResponse, target: str, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """An answer's whole body, or a :class:`TransientError` when it is longer than ``limit`` bytes."""
    data = await read_at_most(response, limit + 1)
    if len(data) > limit:
        raise TransientError(f"{target} answered a body of more than {limit:,} bytes; it was not read")
    return data


async def read_excerpt(response: aiohttp.ClientResponse, limit: int = redact.REMOTE_LIMIT) -> str:
    """The start of an answer's body as text, for an error message: read a little past ``limit`` so that
    a secret the answer echoes across the cut is still recognised, then scrubbed and cut (:func:`excerpt`)."""
    return excerpt(await read_at_most(response, limit + _EXCERPT_MARGIN), limit)


def transport_error(exc: BaseException, target: str) -> TransientError:
    """A connection-level failure (refused, reset, timeout, TLS) as a transient error."""
    if isinstance(exc, TimeoutError):
        return TransientError(f"{target}: no answer in time")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TransientError(f"{target}: TLS certificate refused: {exc.certificate_error}")
    return TransientError(f"{target}: {type(exc).__name__}: {exc}")


def bearer(token: SecretStr) -> str:
    """An ``Authorization`` value for a bearer token."""
    return f"Bearer {token.get_secret_value()}"


def basic(username: str, password: SecretStr) -> str:
    """An ``Authorization`` value for HTTP basic authentication."""
    pair = f"{username}:{password.get_secret_value()}".encode()
    encoded = base64.b64encode(pair).decode("ascii")
    redact.register(encoded)  # what goes on the wire, and what an echoing proxy would quote back
    return "Basic " + encoded


ConnectionOptionsT_co = TypeVar(
    "ConnectionOptionsT_co", bound="ConnectionOptions", covariant=True, default="ConnectionOptions"
)
"""The options model of an :class:`HttpSink`: :class:`ConnectionOptions` or a model derived from it."""


class HttpSession:
    """One client session for a plugin's whole life (connection reuse), for a plugin of any kind.

    Put it first among the bases (``class AcmeSink(HttpSession, TicketSink[AcmeOptions])``).
    :meth:`session` gives the session, made on first use (``open`` makes it), and ``close`` closes it.
    The options must be :class:`ConnectionOptions`; a plugin whose requests all carry the same
    credentials overrides :meth:`new_session` to add them as headers.
    """

    context: PluginContext
    _session: aiohttp.ClientSession | None = None

    def new_session(self) -> aiohttp.ClientSession:
        """A new session from the options' timeout, TLS (and headers, for :class:`HttpOptions`)."""
        options: ConnectionOptions = getattr(self, "options")  # noqa: B009 - the plugin's, typed by it
        return make_session(options, self.context.base_dir)

    def session(self) -> aiohttp.ClientSession:
        """The plugin's session, made now if there is none yet."""
        if self._session is None:
            self._session = self.new_session()
        return self._session

    async def open(self) -> None:
        self.session()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class HttpSink(HttpSession, LogSink[ConnectionOptionsT_co]):
    """A log sink that talks HTTP through one client session for its whole life (:class:`HttpSession`)."""

    options: ConnectionOptionsT_co


async def prepare_body(body: bytes, content_type: str, *, compress: bool) -> tuple[bytes, dict[str, str]]:
    """The body to send and its headers: ``Content-Type``; gzip and ``Content-Encoding`` if ``compress``."""
    headers = {"Content-Type": content_type}
    if compress:
        headers["Content-Encoding"] = "gzip"
        body = await gzip_compress(body)
    return body, headers


async def gzip_compress(body: bytes, level: int = 6) -> bytes:
    """``body`` gzipped with ``mtime`` 0 (the same body gives the same bytes); large bodies off the loop."""
    if len(body) < _GZIP_IN_THREAD:
        return gzip.compress(body, level, mtime=0)
    return await asyncio.to_thread(gzip.compress, body, level, mtime=0)


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed as a JSON object: ``{}`` when empty or not an object, None when it is not JSON."""
    try:
        parsed = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else {}


def excerpt(body: bytes | str, limit: int = redact.REMOTE_LIMIT) -> str:
    """The start of an answer quoted in an error message (a proxy's page, say): one line, no secret.

    Scrubbed before it is cut, so that a cut never leaves the start of a secret the answer echoed.
    """
    raw = body[: limit + _EXCERPT_MARGIN]
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return redact.scrub(" ".join(text.split()), limit)


def json_error(body: bytes, key: str) -> tuple[str, str]:
    """``(error[key], error.message)`` of an error body ``{"error": {...}}`` (Azure's, Google's).

    ``("", an excerpt of the body)`` when it is not JSON; empty strings for what is missing.
    """
    parsed = json_object(body)
    if parsed is None:
        return "", excerpt(body)
    error = parsed.get("error")
    if not isinstance(error, dict):
        return "", ""
    return str(error.get(key) or ""), excerpt(str(error.get("message") or ""))


# -- requests under a size cap ---------------------------------------------------------------------


class RequestTooLargeError(Exception):
    """The target refused a request for its size (413, or its own words for it): send less at once.

    Raised by the ``send`` callback of :func:`send_halving`; the message is the target's answer.
    """


class ItemRefusedError(Exception):
    """The target took the items of a request before ``index``, refused that one for good, read no further.

    Raised by the ``post`` callback of :meth:`ResumableSender.send` (Splunk HEC's ``invalid-event-number``).
    """

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def split_by_size(sizes: Sequence[int], limit: int, *, overhead: int = 0, separator: int = 0) -> list[range]:
    """Consecutive ranges of item positions whose request body stays within ``limit`` bytes, in order.

    The body of a range is ``overhead + sum of its sizes + separator * (items - 1)`` bytes: for a
    JSON array, ``overhead=2`` (the brackets) and ``separator=1`` (the commas). An item too large
    to fit even alone gets a range of its own: the caller sends it anyway or refuses it.
    """
    if overhead + sum(sizes) + separator * (len(sizes) - 1) <= limit:
        return [range(len(sizes))] if sizes else []  # all in one (the usual case, without the loop)
    ranges: list[range] = []
    start, size = 0, overhead
    for position, item in enumerate(sizes):
        grown = size + item + (separator if position > start else 0)
        if position > start and grown > limit:
            ranges.append(range(start, position))
            start, grown = position, overhead + item
        size = grown
    if start < len(sizes):
        ranges.append(range(start, len(sizes)))
    return ranges


async def send_halving(
    parts: Iterable[range],
    send: Callable[[range], Awaitable[range | None]],
    *,
    on_split: Callable[[range], object] | None = None,
    concurrency: int = 1,
) -> list[tuple[int, str]]:
    """Send each range of positions with ``send``, in order; one refused as too large is halved.

    ``send`` raises :class:`RequestTooLargeError` when the target refuses a request for its size;
    both halves are then sent, the first one first (``on_split`` is told of each split, to log it).
    A single position still refused is given up: the result lists those as ``(position, the
    target's message)``. ``send`` may return the positions of the range still to send (a target
    that took the items before one it refused alone): they go next. Any other error from ``send``
    ends the delivery there.

    With ``concurrency`` above 1, up to that many ranges are under way at once (started in order, done
    in any order). After an error no range is started, the ones under way are waited for (each may
    have been delivered: ``send`` records what was), and the first error is raised.
    """
    halving = _Halving(parts, on_split)
    if concurrency <= 1:
        await halving.one_by_one(send)
    else:
        await halving.in_parallel(send, concurrency)
    return halving.refused


class _Halving:
    """The ranges still to send (:func:`send_halving`), and the positions given up."""

    def __init__(self, parts: Iterable[range], on_split: Callable[[range], object] | None) -> None:
        self.queue = deque(parts)
        self.refused: list[tuple[int, str]] = []
        self.on_split = on_split

    def settle(self, part: range, rest: range | None, too_large: RequestTooLargeError | None) -> None:
        """After ``part`` was sent: re-queue its rest, or its halves when it was too large, or give it up."""
        if too_large is None:
            if rest:
                self.queue.appendleft(rest)
            return
        if len(part) <= 1:
            self.refused.extend((position, str(too_large)) for position in part)
            return
        if self.on_split is not None:
            self.on_split(part)
        middle = len(part) // 2
        self.queue.extendleft([part[middle:], part[:middle]])

    async def one_by_one(self, send: Callable[[range], Awaitable[range | None]]) -> None:
        while self.queue:
            part = self.queue.popleft()
            try:
                rest = await send(part)
            except RequestTooLargeError as exc:
                self.settle(part, None, exc)
                continue
            self.settle(part, rest, None)

    async def in_parallel(self, send: Callable[[range], Awaitable[range | None]], concurrency: int) -> None:
        running: dict[asyncio.Task[range | None], range] = {}
        failure: BaseException | None = None
        try:
            while self.queue or running:
                while self.queue and failure is None and len(running) < concurrency:
                    part = self.queue.popleft()
                    running[asyncio.ensure_future(send(part))] = part
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                # The latest first: what each puts back at the front of the queue stays in order.
                for task in sorted(done, key=lambda task: running[task].start, reverse=True):
                    part = running.pop(task)
                    error = task.exception()
                    if error is None:
                        self.settle(part, task.result(), None)
                    elif isinstance(error, RequestTooLargeError):
                        self.settle(part, None, error)
                    elif failure is None:
                        failure = error
        finally:
            for task in running:  # only when this is cancelled: what is under way is then not waited for
                task.cancel()
        if failure is not None:
            raise failure


class ResumableSender:
    """Sends a batch in several requests to a target that has no idempotency key, never twice a part it took.

    The core retries a failed batch with the very same records: the positions the requests of a
    failed attempt delivered are remembered until the batch succeeds (or another batch comes), and
    the retry sends only the rest. Requests hold what fits in ``limit`` bytes, halved when the
    target says too large; a request refused for good rejects its own records only, one item
    refused alone (:class:`ItemRefusedError`) only itself.
    """

    def __init__(self) -> None:
        self._batch: tuple[int, str, str] | None = None
        self._delivered: set[int] = set()

    async def send(
        self,
        batch: Sequence[OutRecord],
        encode: Callable[[OutRecord], bytes] | None,
        post: Callable[[list[bytes]], Awaitable[None]],
        *,
        limit: int,
        overhead: int = 0,
        separator: int = 0,
        oversize: Callable[[int], str],
        on_split: Callable[[range], object] | None = None,
        concurrency: int = 1,
    ) -> SendResult:
        """Deliver ``batch``: each record ``encode``-d (``None``: its data as it is), the items of each
        request given to ``post``, up to ``concurrency`` requests at once (see :func:`send_halving`).

        ``post`` raises :class:`RequestTooLargeError` (the request is halved, ``on_split`` told),
        :class:`PermanentError` (its records are rejected with the message), :class:`ItemRefusedError`
        (the items before that one were delivered, it is rejected, the rest is posted again), or
        anything else (the batch fails; what was delivered is remembered). A body is ``overhead +
        items + separator between items`` bytes (see :func:`split_by_size`); an item too large for any
        request is rejected with ``oversize(size)``. If every record is refused by the target, the
        batch raises its :class:`PermanentError`.
        """
        if not batch:
            return SendResult()
        records = OutBatch.of(batch)
        key = (len(records), records.ids[0], records.ids[-1])
        if self._batch != key:
            self._batch, self._delivered = key, set()
        delivered = self._delivered
        items = records.data if encode is None else list(map(encode, records))
        rejected: list[tuple[int, str]] = []
        fitting: Sequence[int]
        if not delivered and overhead + max(map(len, items)) <= limit:
            fitting = range(len(items))  # the usual batch: nothing delivered yet, every record fits
        else:
            fitting = []
            for i, item in enumerate(items):
                if i in delivered:
                    continue
                if overhead + len(item) <= limit:
                    fitting.append(i)
                else:
                    rejected.append((i, oversize(len(item))))
        refusal: str | None = None

        async def post_part(part: range) -> range | None:
            nonlocal refusal
            positions = fitting[part.start : part.stop]
            if isinstance(positions, range):
                chunk = items[positions.start : positions.stop]
            else:
                chunk = [items[i] for i in positions]
            try:
                await post(chunk)
            except PermanentError as exc:
                refusal = str(exc)
                rejected.extend((i, refusal) for i in positions)
                return None
            except ItemRefusedError as exc:
                delivered.update(positions[: exc.index])
                rejected.append((positions[exc.index], exc.reason))
                return part[exc.index + 1 :]
            delivered.update(positions)
            return None

        sizes = [len(items[i]) for i in fitting] if isinstance(fitting, list) else list(map(len, items))
        parts = split_by_size(sizes, limit, overhead=overhead, separator=separator)
        refused = await send_halving(parts, post_part, on_split=on_split, concurrency=concurrency)
        rejected += [(fitting[p], reason) for p, reason in refused]
        self._batch = None
        if refusal is not None and not delivered and len(rejected) == len(records):
            raise PermanentError(refusal)
        return SendResult(rejected=sorted(rejected)) if rejected else SendResult()

    def forget(self) -> None:
        """Forget what the current batch delivered: its retry sends every record again.

        For a target whose 2xx is not yet a delivery (Splunk's indexer acknowledgement not confirmed).
        """
        self._batch, self._delivered = None, set()


# -- OAuth 2.0 bearer tokens -----------------------------------------------------------------------


class OAuth2Token(ABC):
    """An OAuth 2.0 access token from a token endpoint, cached until shortly before it expires.

    Subclasses give the grant's form fields (:meth:`grant`: client credentials, a signed JWT…).
    ``target`` names the token endpoint in error messages, ``principal`` who asks (never a secret).
    The token is renewed five minutes before ``expires_in`` runs out (half-way for short lifetimes);
    :meth:`post` sends a request with it and, if the API answers 401 (a token revoked or expired
    early), once more with a fresh one.
    """

    def __init__(self, url: str, *, target: str, principal: str) -> None:
        self.url = url
        self.target = target
        self.principal = principal
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    @abstractmethod
    def grant(self) -> Mapping[str, str]:
        """The form fields of the token request (called for each request: a JWT grant is dated)."""

    def invalidate(self) -> None:
        """Forget the cached token (the API refused it: fetch another before the next call)."""
        self._token = None

    async def get(self, session: aiohttp.ClientSession, *, fresh: bool = False) -> str:
        """A valid access token: the cached one, or a new one when none, expiring, or ``fresh``."""
        async with self._lock:
            if fresh or self._token is None or time.monotonic() >= self._renew_at:
                await self._fetch(session)
            assert self._token is not None
            return self._token

    @contextlib.asynccontextmanager
    async def post(
        self, session: aiohttp.ClientSession, url: str, *, data: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST with the token as ``Authorization: Bearer``; after a 401, once more with a fresh token."""
        for attempt in (1, 2):
            authorised = {**headers, "Authorization": f"Bearer {await self.get(session)}"}
            async with session.post(url, data=data, headers=authorised) as response:
                if response.status == 401 and attempt == 1:
                    self.invalidate()
                    continue
                yield response
                return

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        try:
            async with session.post(self.url, data=dict(self.grant())) as response:
                body = await read_at_most(response, ERROR_BODY_BYTES)
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, self.target) from exc
        answer = json_object(body) or {}
        # 201 Created: what CrowdStrike's token endpoint answers
        if status in (200, 201) and isinstance(answer.get("access_token"), str):
            try:
                lifetime = float(answer.get("expires_in", 3600))
            except (TypeError, ValueError):
                lifetime = 3600.0
            self._token = answer["access_token"]
            redact.register(self._token)
            self._renew_at = time.monotonic() + lifetime - min(_TOKEN_REFRESH_MARGIN, lifetime / 2)
            return
        # Only the first line of error_description: Entra's later lines carry trace ids, no reason.
        reason = excerpt(str(answer.get("error_description") or "").split("\n", 1)[0])
        message = f"{self.target} answered HTTP {status}"
        message += f" {answer['error']}" if answer.get("error") else ""
        message += f": {reason}" if reason else ""
        if status in RETRYABLE:
            raise TransientError(message, retry_after=retry_after(headers))
        raise AuthError(f"{message} ({self.principal})")
