"""The ``edl`` threat sink: the shared list served as a plain-text External Dynamic List.

Firewalls (PAN-OS EDLs, FortiGate threat feeds, Check Point's) poll a URL for a text list, one entry
a line. This sink serves it itself: ``open`` starts a small web server (aiohttp) on ``listen:port``
that answers ``GET <path>`` with the list of the last push, with ``ETag`` and ``Last-Modified``
and "304 Not Modified" to a conditional GET, optionally over TLS (1.2 or later) and behind basic
or bearer authentication (compared in constant time).

Every push is the whole list (``incremental = False``). It is written to
``<data_dir>/<name>.txt`` atomically (a temporary file, synced, renamed over the old one) before
it is served, and on ``open`` that file is served until the first push: a restart never serves an
empty list. Before any list exists the server answers 503, which a firewall takes as "keep what
you have". The socket is bound with ``SO_REUSEPORT``, so that a reload can start the new sink on
the same port while the old one still serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import email.utils
import hashlib
import hmac
import io
import os
import re
import ssl
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field

from ce_daemon.plugin import (
    ComponentConfigError,
    Health,
    PluginContext,
    PluginOptions,
    Push,
    PushResult,
    SharedIoc,
    Size,
    ThreatSink,
    TransientError,
)
from ce_feed.auth import Auth, BasicAuth, authorization
from ce_feed.parse import IOC_TYPES, IocType

_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")
"""What no EDL entry may hold: a line break would make two entries, a space a comment."""


class EdlTls(PluginOptions):
    """The server's certificate chain and key (PEM files); TLS 1.2 or later."""

    certificate: Path
    key: Path
    min_version: Literal["1.2", "1.3"] = "1.2"


class EdlOptions(PluginOptions):
    """Options of the ``edl`` sink."""

    listen: str = "127.0.0.1"
    """The address to listen on (``0.0.0.0`` for every IPv4 interface)."""
    port: Annotated[int, Field(ge=0, le=65535)]
    """The port (0: any free port, for tests)."""
    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")] = "/edl.txt"
    format: Literal["plain", "csv"] = "plain"
    """``plain``: one value a line; ``csv``: ``value,type`` a line."""
    types: Annotated[list[IocType], Field(min_length=1)] = list(IOC_TYPES)
    """The indicator types listed (one list per type is what most firewalls want)."""
    tls: EdlTls | None = None
    auth: Auth | None = None
    """What a client must send: basic credentials or a bearer token."""
    max_entries: Annotated[int, Field(gt=0)] | None = None
    max_bytes: Size | None = None


@dataclass(frozen=True, slots=True)
class Served:
    """The list being served: its bytes, their entity tag, when they changed, how many entries."""

    body: bytes
    etag: str
    modified: float
    entries: int

    @classmethod
    def of(cls, body: bytes, modified: float) -> Served:
        """``body`` served as changed at ``modified`` (epoch seconds)."""
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        return cls(body, etag, float(int(modified)), body.count(b"\n"))


class EdlSink(ThreatSink[EdlOptions]):
    """The ``edl`` threat sink: serves the shared list as a plain-text External Dynamic List."""

    api_version = 1
    incremental = False

    def __init__(self, options: EdlOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        self.types = frozenset(options.types)
        self.max_entries = options.max_entries
        self.max_bytes = options.max_bytes
        self.file = context.data_dir / f"{context.name}.txt"
        self.url: str | None = None
        """Where the list is served (once open)."""
        self._served: Served | None = None
        self._runner: web.AppRunner | None = None
        self._expected: bytes | None = None
        self._challenge = "Basic"
        if options.auth is not None:
            self._expected = authorization(options.auth).encode()
            self._challenge = "Basic" if isinstance(options.auth, BasicAuth) else "Bearer"

    def entry_size(self, ioc: SharedIoc) -> int:
        if self.options.format == "csv":
            return len(_csv_line(ioc).encode())
        return len(ioc.value.encode()) + 1

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        context = await asyncio.to_thread(self._ssl_context) if self.options.tls is not None else None
        self._served = await asyncio.to_thread(self._load)
        app = web.Application()
        app.router.add_get(self.options.path, self._serve)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(
            runner, self.options.listen, self.options.port, ssl_context=context, reuse_port=True
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ComponentConfigError(
                f"cannot listen on {self.options.listen}:{self.options.port}: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        host, port = runner.addresses[0][:2]
        scheme = "https" if context is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{port}{self.options.path}"
        self.log.info("edl.listening", url=self.url, entries=self._served.entries if self._served else None)

    async def health(self) -> Health:
        """Whether it listens, and what it serves."""
        if self._runner is None:
            return Health(ok=False, detail="not listening")
        served = self._served
        what = f"{served.entries:,} entries" if served is not None else "no list yet (answering 503)"
        return Health(ok=True, detail=f"serving {self.url}: {what}")

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _ssl_context(self) -> ssl.SSLContext:
        tls = self.options.tls
        assert tls is not None
        certificate, key = self.context.resolve(tls.certificate), self.context.resolve(tls.key)
        for option, path in (("tls.certificate", certificate), ("tls.key", key)):
            try:
                mode = path.stat().st_mode
            except OSError as exc:
                raise ComponentConfigError(f"{option}: {path}: {exc.strerror or exc}") from exc
            if not stat.S_ISREG(mode):
                raise ComponentConfigError(f"{option}: {path} is not a regular file")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = (
            ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        )
        try:
            context.load_cert_chain(certificate, key)
        except (OSError, ssl.SSLError) as exc:
            raise ComponentConfigError(f"tls: cannot load {certificate} with {key}: {exc}") from exc
        return context

    def _load(self) -> Served | None:
        """The list the last run wrote (None when there is none yet)."""
        try:
            with self.file.open("rb") as file:
                if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                    raise ComponentConfigError(f"{self.file} is not a regular file")
                body = file.read()
                modified = os.fstat(file.fileno()).st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ComponentConfigError(f"cannot read the list of the last run, {self.file}: {exc}") from exc
        return Served.of(body, modified)

    # -- serving -----------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.Response(
                status=401,
                text="authentication required\n",
                headers={"WWW-Authenticate": f'{self._challenge} realm="edl"'},
            )
        served = self._served
        if served is None:
            return web.Response(status=503, text="no list yet\n", headers={"Retry-After": "60"})
        headers = {
            "ETag": served.etag,
            "Last-Modified": email.utils.formatdate(served.modified, usegmt=True),
            "Cache-Control": "no-cache",
        }
        if _not_modified(request, served):
            return web.Response(status=304, headers=headers)
        return web.Response(body=served.body, content_type="text/plain", charset="utf-8", headers=headers)

    def _authorised(self, request: web.Request) -> bool:
        if self._expected is None:
            return True
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        return hmac.compare_digest(given, self._expected)

    # -- pushing -----------------------------------------------------------------------------

    async def push(self, push: Push) -> PushResult:
        """Serve ``push.add`` as the whole list, once it is on disk."""
        body, rejected = self._render(push.add)
        current = self._served
        if current is None or current.body != body:
            try:
                await asyncio.to_thread(_write_atomically, self.file, body)
            except OSError as exc:
                raise TransientError(f"cannot write the list to {self.file}: {exc}") from exc
            self._served = Served.of(body, time.time())
            self.log.info("edl.updated", entries=self._served.entries, bytes=len(body))
        return PushResult(rejected=rejected)

    def _render(self, iocs: Sequence[SharedIoc]) -> tuple[bytes, list[tuple[str, str]]]:
        lines: dict[str, None] = {}
        rejected: list[tuple[str, str]] = []
        size = 0
        for ioc in iocs:
            if ioc.type not in self.types:
                rejected.append((ioc.value, f"type {ioc.type} is not in this list's `types`"))
                continue
            if _UNSAFE.search(ioc.value):
                rejected.append((ioc.value, "holds whitespace or a control character: not one EDL entry"))
                continue
            line = _csv_line(ioc) if self.options.format == "csv" else ioc.value + "\n"
            if line in lines:
                continue
            if self.max_entries is not None and len(lines) >= self.max_entries:
                rejected.append((ioc.value, f"over max_entries ({self.max_entries:,})"))
                continue
            if self.max_bytes is not None and size + len(line.encode()) > self.max_bytes:
                rejected.append((ioc.value, f"over max_bytes ({self.max_bytes:,})"))
                continue
            lines[line] = None
            size += len(line.encode())
        return "".join(lines).encode(), rejected


def _csv_line(ioc: SharedIoc) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([ioc.value, ioc.type])
    return out.getvalue()


def _not_modified(request: web.Request, served: Served) -> bool:
    """Whether a conditional GET has ``served`` (``If-None-Match`` wins over ``If-Modified-Since``)."""
    match = request.headers.get("If-None-Match")
    if match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in match.split(",")}
        return "*" in tags or served.etag in tags
    since = request.headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        moment = email.utils.parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False
    return moment.tzinfo is not None and served.modified <= moment.timestamp()


def _write_atomically(path: Path, body: bytes) -> None:
    """``body`` as ``path``: written beside it, synced, renamed over it, the folder synced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
