"""The machinery every fake vendor server shares: lifecycle, TLS, scripting, recording and waiting.

Every fake listens on loopback (port 0 by default), optionally over TLS, records what it received,
and can be scripted: the next N data requests fail with a given status (and ``Retry-After``),
perhaps once M more have passed, or are held until the test releases them (a slow peer).
``async with fake as url:`` starts it and gives its base URL; tests wait on what it received with
:meth:`FakeHttpServer.wait_until`, never with sleeps.

A fake decides where in its handlers the script applies (:meth:`FakeHttpServer.scripted`): before
authentication for the generic ones, after it for those whose vendor only answers an
authenticated caller with a service error.

What every fake can also be told, the same way (what the contract kit, :mod:`ce_daemon.testing.contract`,
drives): refuse records for good (:attr:`FakeHttpServer.refuse_when`, for fakes whose vendor refuses
records for their content), refuse the credentials it issued (:meth:`FakeHttpServer.refuse_credentials`),
and go down and come back on the same port (:meth:`FakeHttpServer.stop`, :meth:`FakeHttpServer.start_again`).
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
from aiohttp import web

_NO_LIMIT = 1 << 34
"""aiohttp's own request cap (``client_max_size``) is lifted: each fake enforces its vendor's cap."""


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as a fake saw it: ``body`` as its handler read it, ``wire_bytes`` what was sent.

    ``body`` is decoded (gunzipped) unless the fake reads the bytes on the wire itself
    (:attr:`FakeHttpServer.auto_decompress` off).
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    wire_bytes: int
    body: bytes
    status: int


@dataclass(frozen=True, slots=True)
class ScriptedFailure:
    """One scripted failure: the status, the vendor's error ``code`` and ``message``, or a whole ``body``."""

    status: int
    code: str | None = None
    message: str = "scripted failure"
    body: bytes | None = None
    retry_after: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The headers the failure carries (``Retry-After`` when scripted)."""
        return {"Retry-After": self.retry_after} if self.retry_after is not None else {}


class VendorError(Exception):
    """An error answer, raised inside a fake's handler; the fake renders it in its vendor's format.

    ``code`` is the vendor's error code (Azure's ``code``, S3's ``<Code>``), ``headers`` go with the
    answer, ``details`` are the vendor's extra fields (S3's ``<BucketName>``…).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "",
        headers: Mapping[str, str] | None = None,
        **details: str,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})
        self.details = details


class FakeHttpServer:
    """Base of the fake vendor servers: lifecycle, TLS, scripting, recording and waiting."""

    auto_decompress: ClassVar[bool] = True
    """False for a fake that reads the bytes on the wire (a cap that holds before inflating, a signature)."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.requests: list[ReceivedRequest] = []
        self._url: str | None = None
        self._script: deque[ScriptedFailure | None] = deque()  # None: let that one through
        self._holds = 0
        self._held = 0
        self._released = asyncio.Event()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.refuse_when: Callable[[Any], bool] | None = None
        """Records it returns True for are refused for good, the vendor's way (see :meth:`refuses`)."""

    # -- lifecycle ---------------------------------------------------------------------------

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        """The vendor's endpoints (subclasses)."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """The base URL (``http(s)://127.0.0.1:PORT``) once started."""
        if self._url is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: any free port) and return the base URL."""
        app = web.Application(client_max_size=_NO_LIMIT)
        app.add_routes(list(self.routes()))
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            auto_decompress=self.auto_decompress,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0][1]
        scheme = "https" if self.ssl_context is not None else "http"
        self._url = f"{scheme}://{host}:{bound}"
        return self._url

    async def stop(self) -> None:
        """Stop listening; held requests are released first so that nothing hangs."""
        self._released.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def start_again(self) -> str:
        """Listen again where the previous start did, after :meth:`stop` (a target back from an outage)."""
        address = urlsplit(self.url)
        assert address.hostname is not None and address.port is not None
        return await self.start(address.hostname, address.port)

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- scripting ---------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int = 503,
        *,
        code: str | None = None,
        message: str = "scripted failure",
        retry_after: float | str | None = None,
        body: bytes | None = None,
        after: int = 0,
    ) -> None:
        """Answer the next ``count`` data requests with ``status``, once ``after`` more passed normally.

        The answer is the vendor's error (with ``code`` and ``message``) or exactly ``body``;
        ``retry_after`` (seconds, or an HTTP date) goes in ``Retry-After``.
        """
        value = None if retry_after is None else str(retry_after)
        self._script.extend([None] * after)
        self._script.extend(ScriptedFailure(status, code, message, body, value) for _ in range(count))

    def hold_next(self, count: int = 1) -> None:
        """Hold the next ``count`` data requests until :meth:`release_held` (a peer that answers slowly)."""
        self._holds += count
        if self._released.is_set():
            self._released = asyncio.Event()

    def release_held(self) -> None:
        """Let every held request go on to its normal answer."""
        self._released.set()

    @property
    def held(self) -> int:
        """How many requests are being held right now."""
        return self._held

    async def scripted(self) -> ScriptedFailure | None:
        """Apply the script to one data request: hold it if asked; its failure (None: answer normally)."""
        if self._holds:
            self._holds -= 1
            self._held += 1
            await self.changed()
            try:
                await self._released.wait()
            finally:
                self._held -= 1
        return self._script.popleft() if self._script else None

    def refuses(self, record: Any) -> bool:
        """Whether :attr:`refuse_when` refuses ``record`` (the vendor's unit: an HEC envelope, a row…)."""
        return self.refuse_when is not None and self.refuse_when(record)

    def refuse_credentials(self) -> None:
        """From now on refuse the credentials clients were given (a revoked token, a rotated key)."""
        raise NotImplementedError(f"{type(self).__name__} checks no credentials")

    def error_body(self, status: int) -> bytes:
        """The vendor's error body for a scripted failure (subclasses give their own shape)."""
        return orjson.dumps({"error": HTTPStatus(status).phrase})

    async def intercept(self, request: web.Request) -> web.Response | None:
        """Apply the script to ``request``: the scripted answer (recorded), or None to answer normally."""
        failure = await self.scripted()
        if failure is None:
            return None
        body = failure.body if failure.body is not None else self.error_body(failure.status)
        response = web.Response(
            status=failure.status, body=body, headers=failure.headers, content_type="application/json"
        )
        await self.record(request, b"", response.status)
        return response

    # -- recording and waiting ---------------------------------------------------------------

    async def record(self, request: web.Request, body: bytes, status: int) -> None:
        """Remember ``request`` (with the ``body`` its handler read) and wake up waiters."""
        self.requests.append(
            ReceivedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                wire_bytes=request.content_length or 0,
                body=body,
                status=status,
            )
        )
        await self.changed()

    async def changed(self) -> None:
        """Wake up :meth:`wait_until` callers (after anything a test may wait for)."""
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds; it is checked each time the fake received something."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer serialised with orjson."""
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def inflate(request: web.Request, wire: bytes) -> tuple[bytes, bool]:
    """The body of ``request`` read off the wire, gunzipped when ``Content-Encoding`` says gzip.

    Returns ``(body, was gzip)``; raises ValueError when a gzip body is not valid gzip.
    """
    if request.headers.get("Content-Encoding", "").lower() != "gzip":
        return wire, False
    try:
        return gzip.decompress(wire), True
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(str(exc)) from exc
