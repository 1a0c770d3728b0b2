"""A hostile Netskope tenant: a proxy in front of the tenant simulator that misbehaves on cue.

The simulator stays the tenant (its cursors, its ``resend``, the pages it served are what a test
checks); :class:`HostileTenant` forwards each data-export request to it and then spoils the answer
as a test scripted for that stream (:meth:`HostileTenant.play`): it answers after the client gave
up, drops the connection before the status line, before the body or in its middle, dribbles the
body, answers a compression bomb, an oversized page, HTML with 200, absurd ``wait_time``\\ s, or a
redirect to another server (:class:`Decoy`, which records whether it was handed the token).
Every trick but the redirect is played *after* the simulator built the page, so its cursor has
moved: the page is lost unless the client asks ``resend``. :meth:`HostileTenant.inject` plants raw
JSON into one record of every page that carries it (a value the encoder refuses, a deep nest).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import aiohttp
import orjson
from aiohttp import web

from ce_daemon.simulator.tenant import TOKEN_HEADER
from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

TrickKind = Literal[
    "late",
    "drop_before_status",
    "drop_before_body",
    "drop_mid_body",
    "dribble",
    "bomb",
    "oversized",
    "html",
    "server_error",
    "redirect",
    "wait_time",
]
TRICKS: tuple[str, ...] = get_args(TrickKind)
StreamId = tuple[str, str]

_DRIBBLE_BYTES = 16  # per write of a dribbled body
_DRIBBLE_PAUSE = 0.05  # seconds between two writes: a 25 KB page takes a minute
_INJECTED = "\x00ce-daemon-injected:"  # a placeholder no record holds


@dataclass(frozen=True, slots=True)
class Trick:
    """One way of spoiling the next ``count`` answers of a stream.

    - ``late``: forward, then hold the answer until the client hangs up (it timed out).
    - ``drop_before_status`` / ``drop_before_body`` / ``drop_mid_body``: forward, then close the
      connection before the status line, after the headers, or half-way through the body.
    - ``dribble``: forward, then send the body a few bytes at a time, for far longer than a timeout.
    - ``bomb``: forward, then answer 200 with a gzip body that inflates to ``size`` bytes of a valid
      page (the page padded with blanks, which JSON allows).
    - ``oversized``: forward, then answer the page padded with blanks to at least ``size`` bytes.
    - ``html``: forward, then answer 200 with a ``text/html`` sign-in page.
    - ``server_error``: forward, then answer ``status`` (a gateway's 502/504 after the API did its work).
    - ``redirect``: do not forward; answer 302 to the same path on ``HostileTenant.redirect_to``.
    - ``wait_time``: forward, then answer the page with ``wait_time`` set to the raw JSON ``value``.
    """

    kind: TrickKind
    count: int = 1
    size: int = 0
    value: bytes = b"0"
    status: int = 504

    def __post_init__(self) -> None:
        if self.kind not in TRICKS:
            raise ValueError(f"unknown trick {self.kind!r}; expected one of {', '.join(TRICKS)}")
        if self.count < 1:
            raise ValueError("a trick is played at least once")


@dataclass(frozen=True, slots=True)
class Played:
    """One data-export request the proxy received: its stream, operation, and the trick played (if any)."""

    stream: StreamId
    operation: str
    trick: str | None
    status: int  # what the simulator answered (0 when not forwarded)


class HostileTenant:
    """A proxy to ``upstream`` (a running simulator) that plays the scripted tricks per stream."""

    def __init__(self, upstream: str, *, redirect_to: str = "http://127.0.0.1:9") -> None:
        self.upstream = upstream.rstrip("/")
        self.redirect_to = redirect_to.rstrip("/")
        self.played: list[Played] = []
        self._tricks: dict[StreamId, deque[list[Any]]] = {}
        self._injections: dict[str, list[tuple[str, bytes]]] = {}
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1") -> str:
        """Listen on a free port of ``host``; the base URL."""
        app = web.Application()
        app.router.add_get("/api/v2/events/dataexport/{kind}/{subtype}", self._dataexport)
        # Cancelled handlers: a held (`late`) or dribbled answer ends when the client hangs up.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self.url = f"http://{host}:{runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        """Stop listening; held answers end first."""
        self._stopping.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> HostileTenant:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- scripting ---------------------------------------------------------------------------

    def play(self, kind: str, subtype: str, trick: Trick) -> None:
        """Spoil the next ``trick.count`` answers to ``kind/subtype`` (after the tricks already queued)."""
        if trick.kind == "bomb":
            _opening_and_blanks(trick.size)  # built now, so that answering it takes no time
        self._tricks.setdefault((kind, subtype), deque()).append([trick, trick.count])

    def behave(self) -> None:
        """Drop every trick still queued: from now on the tenant answers as the simulator does."""
        self._tricks.clear()

    def inject(self, record_id: str, field: str, raw_json: bytes) -> None:
        """Set ``field`` of record ``record_id`` to ``raw_json`` (JSON text) in every page that carries it."""
        self._injections.setdefault(record_id, []).append((field, raw_json))

    def pending(self) -> int:
        """Answers still to be spoiled, over every stream."""
        return sum(left for queue in self._tricks.values() for _, left in queue)

    def tricked(self, kind: str, subtype: str, trick: str | None = None) -> list[Played]:
        """The requests to ``kind/subtype`` that had a trick played (``trick`` only, when given)."""
        return [
            p
            for p in self.played
            if p.stream == (kind, subtype) and p.trick is not None and trick in (None, p.trick)
        ]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Return once ``predicate()`` holds; it is checked after every request the proxy received."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    def _take(self, stream: StreamId) -> Trick | None:
        queue = self._tricks.get(stream)
        if not queue:
            return None
        entry = queue[0]
        entry[1] -= 1
        if entry[1] == 0:
            queue.popleft()
        trick: Trick = entry[0]
        return trick

    # -- the data-export endpoint --------------------------------------------------------------

    async def _dataexport(self, request: web.Request) -> web.StreamResponse:
        stream = (request.match_info["kind"], request.match_info["subtype"])
        trick = self._take(stream)
        operation = request.query.get("operation", "")
        if trick is not None and trick.kind == "redirect":
            await self._note(Played(stream, operation, trick.kind, 0))
            return web.Response(status=302, headers={"Location": self.redirect_to + request.path_qs})
        status, headers, body = await self._forward(request)
        await self._note(Played(stream, operation, trick.kind if trick else None, status))
        if status == 200:
            body = self._planted(body)
        if trick is None or status != 200:
            return _answer(request, status, headers, body)
        return await self._spoil(request, trick, headers, body)

    async def _forward(self, request: web.Request) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        headers = {"Accept-Encoding": "identity"}
        if TOKEN_HEADER in request.headers:
            headers[TOKEN_HEADER] = request.headers[TOKEN_HEADER]
        async with self._session.get(self.upstream + request.path_qs, headers=headers) as answer:
            body = await answer.read()
            kept = {
                name: value
                for name, value in answer.headers.items()
                if name.lower().startswith("ratelimit-") or name.lower() in ("retry-after", "content-type")
            }
            return answer.status, kept, body

    def _planted(self, body: bytes) -> bytes:
        """``body`` with the injected fields planted in the records that carry them."""
        if not self._injections:
            return body
        page = orjson.loads(body)
        raw: dict[str, bytes] = {}
        for record in page.get("result", []):
            for field, value in self._injections.get(str(record.get("_id")), []):
                key = f"{_INJECTED}{len(raw)}"
                record[field] = key
                raw[key] = value
        text = orjson.dumps(page)
        for key, value in raw.items():
            text = text.replace(orjson.dumps(key), value)
        return text

    async def _spoil(
        self, request: web.Request, trick: Trick, headers: dict[str, str], body: bytes
    ) -> web.StreamResponse:
        kind = trick.kind
        if kind == "late":
            await self._stopping.wait()  # cancelled first, when the client hangs up
            return _answer(request, 200, headers, body)
        if kind in ("html", "server_error"):
            status = 200 if kind == "html" else trick.status
            page = f"<!DOCTYPE html><html><body><h1>{status}: sign in</h1></body></html>".encode()
            return web.Response(
                status=status, body=page, headers=_without_type(headers), content_type="text/html"
            )
        if kind in ("wait_time", "oversized"):
            spoilt = _with_wait_time(body, trick.value) if kind == "wait_time" else _padded(body, trick.size)
            return _answer(request, 200, headers, spoilt)
        if kind == "bomb":
            bomb = await asyncio.to_thread(gzip_bomb, body, trick.size)
            return web.Response(
                status=200,
                body=bomb,
                headers={**_without_type(headers), "Content-Encoding": "gzip"},
                content_type="application/json",
            )
        return await self._broken(request, kind, headers, body)

    async def _broken(
        self, request: web.Request, kind: str, headers: dict[str, str], body: bytes
    ) -> web.StreamResponse:
        """A 200 whose connection ends early (``drop_*``) or whose body crawls (``dribble``)."""
        transport = request.transport
        if kind == "drop_before_status":
            if transport is not None:
                transport.close()
            return web.Response(status=200)  # never written: the connection is gone
        response = web.StreamResponse(status=200, headers=_without_type(headers))
        response.content_type = "application/json"
        response.content_length = len(body)
        await response.prepare(request)
        if kind == "dribble":
            for start in range(0, len(body), _DRIBBLE_BYTES):
                await response.write(body[start : start + _DRIBBLE_BYTES])
                await asyncio.sleep(_DRIBBLE_PAUSE)  # the point of the trick, not a synchronisation
            return response
        if kind == "drop_mid_body":
            await response.write(body[: len(body) // 2])
        if transport is not None:
            transport.close()
        return response

    async def _note(self, played: Played) -> None:
        self.played.append(played)
        async with self._changed:
            self._changed.notify_all()


class Decoy(FakeHttpServer):
    """Another host, the target of the proxy's redirects: records what it received, answers an empty page."""

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.get("/{path:.*}", self._any)]

    async def _any(self, request: web.Request) -> web.Response:
        await self.record(request, b"", 200)
        return json_response({"ok": 1, "result": [], "wait_time": 0, "timestamp_hwm": int(time.time())})


def _answer(request: web.Request, status: int, headers: dict[str, str], body: bytes) -> web.Response:
    """The answer as the simulator gives it: gzip when the client accepts it."""
    extra = _without_type(headers)
    if status == 200 and "gzip" in request.headers.get("Accept-Encoding", ""):
        body = gzip.compress(body, compresslevel=1, mtime=0)
        extra["Content-Encoding"] = "gzip"
    content_type = headers.get("Content-Type", "application/json").split(";")[0]
    return web.Response(status=status, body=body, headers=extra, content_type=content_type)


def _without_type(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower() != "content-type"}


def _with_wait_time(body: bytes, raw: bytes) -> bytes:
    page = orjson.loads(body)
    page["wait_time"] = _INJECTED
    return orjson.dumps(page).replace(orjson.dumps(_INJECTED), raw)


def _padded(body: bytes, size: int) -> bytes:
    """``body`` (a JSON object) grown to at least ``size`` bytes with blanks before its closing brace."""
    return body[:-1] + b" " * max(0, size - len(body)) + b"}"


def gzip_bomb(page: bytes, size: int) -> bytes:
    """A gzip body inflating to a valid JSON ``page`` (an object) padded with ``size`` blanks (~1,000:1).

    Two gzip members, which a reader joins (RFC 1952): ``{`` and the blanks, built once per size, then
    the rest of the page.
    """
    return _opening_and_blanks(size) + gzip.compress(page[1:], compresslevel=1, mtime=0)


@functools.lru_cache(maxsize=4)
def _opening_and_blanks(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: gzip's header and trailer
    block = b" " * (1 << 20)
    parts = [compressor.compress(b"{")]
    parts += [compressor.compress(block[: min(len(block), size - at)]) for at in range(0, size, len(block))]
    return b"".join([*parts, compressor.flush()])
