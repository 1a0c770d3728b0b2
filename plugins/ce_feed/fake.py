"""A fake feed server: files served by GET (and HEAD), as a web server or a CDN serves a list.

Each file is given as the bytes to send (:meth:`FakeFeed.serve`), optionally with a
``Content-Encoding`` (the bytes are then already encoded: a test builds a gzip bomb as it likes).
Answers carry an ``ETag`` (a digest of the bytes) and a fixed ``Last-Modified``, and a conditional
GET that matches is answered "304 Not Modified", as nginx does (``conditional=False``: neither).
A client may be asked for an ``Authorization`` value. A file may stall after some bytes until the
server stops (a peer that stops sending mid-body). Scripted failures
(:meth:`FakeHttpServer.fail_next`) apply before auth.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from ce_daemon.testing.fakes.base import FakeHttpServer

LAST_MODIFIED = email.utils.formatdate(1_700_000_000, usegmt=True)
_PIECE = 64 * 1024


@dataclass(frozen=True, slots=True)
class FeedFile:
    """One served file: the bytes on the wire, their encoding, where to stall (None: never)."""

    body: bytes
    content_encoding: str | None = None
    content_type: str = "text/plain"
    stall_after: int | None = None

    @property
    def etag(self) -> str:
        """The entity tag of these bytes."""
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


class FeedFakeServer(FakeHttpServer):
    """Feeds by path; conditional GET; optional credentials; stalls and scripted failures."""

    def __init__(
        self,
        *,
        authorization: str | None = None,
        conditional: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.files: dict[str, FeedFile] = {}
        self.authorization = authorization
        self.conditional = conditional
        self._stopping = asyncio.Event()

    def serve(
        self,
        path: str,
        body: bytes,
        *,
        content_encoding: str | None = None,
        content_type: str = "text/plain",
        stall_after: int | None = None,
    ) -> str:
        """Serve ``body`` at ``path`` from now on; its URL."""
        self.files[path] = FeedFile(body, content_encoding, content_type, stall_after)
        return self.url + path

    def refuse_credentials(self) -> None:
        self.authorization = "a credential nobody has"

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.get("/{path:.*}", self._get)]  # HEAD too

    async def stop(self) -> None:
        self._stopping.set()
        await super().stop()

    async def _refusal(self, request: web.Request) -> web.Response | None:
        """A scripted failure, a 401 for the wrong credentials, a 404 for an unknown path (None: serve it)."""
        scripted = await self.intercept(request)
        if scripted is not None:
            return scripted
        if self.authorization is not None and request.headers.get("Authorization") != self.authorization:
            await self.record(request, b"", 401)
            return web.Response(status=401, text="401 Authorization Required\n")
        if request.path not in self.files:
            await self.record(request, b"", 404)
            return web.Response(status=404, text="404 Not Found\n")
        return None

    async def _get(self, request: web.Request) -> web.StreamResponse:
        refusal = await self._refusal(request)
        if refusal is not None:
            return refusal
        feed = self.files[request.path]
        headers = {"ETag": feed.etag, "Last-Modified": LAST_MODIFIED} if self.conditional else {}
        match, since = request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since")
        if self.conditional and (match == feed.etag if match is not None else since == LAST_MODIFIED):
            await self.record(request, b"", 304)
            return web.Response(status=304, headers=headers)
        if feed.content_encoding is not None:
            headers["Content-Encoding"] = feed.content_encoding
        response = web.StreamResponse(headers={**headers, "Content-Type": feed.content_type})
        response.content_length = len(feed.body)
        await self.record(request, b"", 200)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        end = len(feed.body) if feed.stall_after is None else feed.stall_after
        for start in range(0, end, _PIECE):
            await response.write(feed.body[start : min(start + _PIECE, end)])
        if feed.stall_after is not None:
            await self._stopping.wait()
            return response
        await response.write_eof()
        return response
