"""The ``feed`` threat source: a plain-text or CSV list of indicators, over HTTP(S) or from a local file.

Every pull reads the whole list (``full_list``): what the feed no longer lists is deactivated by
the core, but only after a pull that read the body to its end. The body is read as a stream,
inflated in bounded steps when it is gzip (``Content-Encoding`` or a ``.gz`` file), and cut into
lines of at most ``max_line`` bytes; more than ``max_bytes`` once inflated fails the pull. A line
that is too long, not UTF-8, or a CSV row without its value is refused by its number; the rest of
the feed is read on. Pages hold at most 10,000 records and refusals.

Conditional GET: each answer's ``ETag`` and ``Last-Modified`` are kept, and the next pull asks
with ``If-None-Match`` / ``If-Modified-Since``. A "304 Not Modified" must not look like an empty
list (that would deactivate everything), and the contract has no "unchanged" answer, so the source
keeps the values of the last complete answer in ``data_dir`` (:mod:`ce_feed.cache`) and gives them
again on a 304. The validators also travel as the pull's ``checkpoint``: when the core hands back a
checkpoint other than the cache's (its store is older than the cache), the feed is fetched whole.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import IO, Annotated, Literal, Self

import aiohttp
from pydantic import Field, model_validator

from ce_daemon.http import ConnectionOptions, make_session, raise_for_status, transport_error
from ce_daemon.plugin import (
    ComponentConfigError,
    Health,
    IocPage,
    IocRecord,
    PluginContext,
    Pull,
    SecretOrText,
    Size,
    ThreatSource,
    TransientError,
)
from ce_feed.auth import Auth, authorization
from ce_feed.cache import CacheWriter, ReplayCache, Validators, fingerprint
from ce_feed.parse import CsvLayout, FeedParser, IocType, Line, LineSplitter
from ce_feed.stream import bounded

PAGE_ITEMS = 10_000
"""The most records and refusals one page holds."""
CHUNK = 256 * 1024
"""The most bytes read from the body at once."""

Column = Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1)]


class FeedOptions(ConnectionOptions):
    """Options of the ``feed`` source (``timeout``: the longest wait for the connection or the next bytes)."""

    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    path: Path | None = None
    """A local file instead of ``url`` (relative to the pipeline file's folder); a regular file only."""
    format: Literal["text", "csv"] = "text"
    column: Column | None = None
    """CSV: the value's column, by header name or 0-based index (required for ``format: csv``)."""
    type_column: Column | None = None
    """CSV: a column naming each value's type (``url``, ``ip-dst``, ``sha256``…); empty cells are guessed."""
    tags_column: Column | None = None
    """CSV: a column of tags (separated by ``,`` ``;`` or ``|``)."""
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    header: bool = True
    """CSV: the first row (after comments) names the columns. A header written as a comment
    (``# id,url,…``, as abuse.ch writes it) is skipped as one: give indexes and ``header: false``."""
    ioc_type: IocType | None = None
    """Every value's type (``type:`` names the plugin); unset: the type column's, else guessed."""
    tags: list[Annotated[str, Field(min_length=1)]] = []
    """Tags added to every record."""
    headers: dict[str, SecretOrText] = {}
    auth: Auth | None = None
    max_bytes: Size = 256 * 1024**2
    """The most bytes the body may hold once inflated: past it the pull fails."""
    max_line: Annotated[Size, Field(le=1024**2)] = 8 * 1024
    """The longest line read; a longer one is refused (never held whole) and the rest read on."""
    allow_empty: bool = False
    """Take an answer with no value at all as an empty list (else it fails the pull: the list stays)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of `url` and `path`")
        if self.path is not None and (self.auth is not None or self.headers):
            raise ValueError("`auth` and `headers` are for a `url`, not a `path`")
        columns = {"column": self.column, "type_column": self.type_column, "tags_column": self.tags_column}
        if self.format == "text":
            given = [name for name, value in columns.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only for `format: csv`")
        elif self.column is None:
            raise ValueError("`format: csv` needs `column` (the value's column: a header name or an index)")
        named = [name for name, value in columns.items() if isinstance(value, str)]
        if named and not self.header:
            raise ValueError(f"{', '.join(named)} name a column but `header` is false: give 0-based indexes")
        return self


class FeedSource(ThreatSource[FeedOptions]):
    """The ``feed`` threat source: a text or CSV list of indicators, pulled whole each time."""

    api_version = 1
    full_list = True

    def __init__(self, options: FeedOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.log = context.log
        self.file = context.resolve(options.path) if options.path is not None else None
        self.target = options.url or str(self.file)
        self._session: aiohttp.ClientSession | None = None
        shape = options.model_dump(
            mode="json",
            include={"url", "format", "column", "type_column", "tags_column", "delimiter", "header"}
            | {"ioc_type", "tags", "max_line"},
        )
        self.cache = ReplayCache(context.data_dir / f"{context.name}.feed-cache", fingerprint(shape))

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self.file is not None:
            await asyncio.to_thread(_check_regular, self.file, missing_ok=True)
            return
        headers = dict(self.options.headers)
        if self.options.auth is not None:
            headers["Authorization"] = authorization(self.options.auth)
        self._session = make_session(self.options, self.context.base_dir, **headers)

    async def health(self) -> Health:
        """The file is a readable regular file; the URL answers a HEAD without refusing our credentials."""
        if self.file is not None:
            try:
                await asyncio.to_thread(_check_regular, self.file, missing_ok=False)
            except (ComponentConfigError, TransientError) as exc:
                return Health(ok=False, detail=str(exc))
            return Health(ok=True, detail=f"{self.file} is readable")
        assert self.options.url is not None
        try:
            async with self._http().head(self.options.url, allow_redirects=False) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Health(ok=False, detail=str(transport_error(exc, self.target)))
        if status in (401, 403):
            return Health(
                ok=False, detail=f"{self.target} refused our credentials (HTTP {status}): check `auth`"
            )
        if status >= 400 and status != 405:  # a server may answer only GET
            return Health(ok=False, detail=f"{self.target} answered HTTP {status}")
        return Health(ok=True, detail=f"{self.target} answered HTTP {status}")

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise TransientError(f"{self.target}: the source is not open")
        return self._session

    # -- pulling -----------------------------------------------------------------------------

    async def pull(self, request: Pull) -> AsyncIterator[IocPage]:
        if self.file is not None:
            async for page in self._pages(_file_chunks(self.file), request, None):
                yield page
            return
        async for page in self._pull_url(request):
            yield page

    async def _pull_url(self, request: Pull) -> AsyncIterator[IocPage]:
        assert self.options.url is not None
        cached = await self.cache.validators()
        if cached is not None and request.checkpoint not in (None, cached.checkpoint()):
            cached = None  # the core's store is not from the cached answer: read the feed whole
        timeout = self.options.timeout
        wait = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=timeout)
        headers = cached.request_headers() if cached is not None else {}
        try:
            response = await self._http().get(
                self.options.url, headers=headers, allow_redirects=False, timeout=wait
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(exc, self.target) from exc
        async with response:
            if response.status != 304:
                await raise_for_status(response, self.target)
                fresh = Validators(response.headers.get("ETag"), response.headers.get("Last-Modified"))
                writer = self.cache.writer(fresh) if fresh else None
                if writer is None:
                    await self.cache.forget()
                async for page in self._pages(_http_chunks(response, self.target), request, writer):
                    yield page
                return
        if cached is None:
            raise TransientError(
                f"{self.target} answered 304 Not Modified to a request that was not conditional"
            )
        self.log.info("feed.not_modified", feed=self.target)
        async for records in self.cache.replay(self.target):
            yield IocPage(records=_unexcluded(records, request.exclude_tags))
        yield IocPage(records=(), checkpoint=cached.checkpoint())

    async def _pages(
        self, chunks: AsyncIterator[bytes], request: Pull, writer: CacheWriter | None
    ) -> AsyncIterator[IocPage]:
        """The pages of a body; the last one carries the checkpoint, once the body was read whole."""
        splitter = LineSplitter(self.options.max_line)
        parser = self._parser()
        records: list[IocRecord] = []
        refused: list[tuple[str, str]] = []
        values = 0

        def collect(lines: Iterable[Line]) -> None:
            for line in lines:
                item = parser.parse(line)
                if isinstance(item, IocRecord):
                    records.append(item)
                elif item is not None:
                    refused.append(item)

        async def page() -> IocPage:
            """The next page: up to PAGE_ITEMS records, then refusals to fill it."""
            nonlocal values
            batch = records[:PAGE_ITEMS]
            del records[:PAGE_ITEMS]
            bad = refused[: PAGE_ITEMS - len(batch)]
            del refused[: len(bad)]
            values += len(batch)
            if writer is not None:
                await writer.add(batch)
            return IocPage(records=_unexcluded(batch, request.exclude_tags), refused=bad)

        try:
            async for chunk in bounded(chunks, self.options.max_bytes, self.target):
                collect(splitter.feed(chunk))
                while len(records) + len(refused) >= PAGE_ITEMS:
                    yield await page()
            collect(splitter.end())
            while len(records) + len(refused) > PAGE_ITEMS:
                yield await page()
            last = await page()
            if values == 0 and not self.options.allow_empty:
                raise TransientError(
                    f"{self.target}: the feed holds no value ({splitter.number:,} lines read); the list is"
                    " kept as it was (set `allow_empty: true` if an empty feed is legitimate)"
                )
            if writer is not None:
                await writer.commit()
        finally:
            if writer is not None:
                writer.discard()
        checkpoint = writer.validators.checkpoint() if writer is not None else None
        self.log.info("feed.read", feed=self.target, lines=splitter.number, values=values)
        yield IocPage(records=last.records, refused=last.refused, checkpoint=checkpoint)

    def _parser(self) -> FeedParser:
        layout = None
        if self.options.format == "csv":
            assert self.options.column is not None
            layout = CsvLayout(
                self.options.column,
                self.options.type_column,
                self.options.tags_column,
                self.options.delimiter,
                self.options.header,
            )
        return FeedParser(
            max_line=self.options.max_line,
            csv_layout=layout,
            ioc_type=self.options.ioc_type,
            tags=self.options.tags,
        )


def _unexcluded(records: Iterable[IocRecord], exclude: frozenset[str]) -> list[IocRecord]:
    """``records`` without those carrying an excluded tag (what this daemon pushed itself)."""
    if not exclude:
        return list(records)
    return [record for record in records if exclude.isdisjoint(record.tags)]


async def _http_chunks(response: aiohttp.ClientResponse, target: str) -> AsyncIterator[bytes]:
    """The body (inflated by aiohttp when ``Content-Encoding`` says so), transport failures transient."""
    try:
        async for chunk in response.content.iter_chunked(CHUNK):
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_error(exc, target) from exc


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(_open_regular, path)
    try:
        while chunk := await asyncio.to_thread(file.read, CHUNK):
            yield chunk
    except OSError as exc:
        raise TransientError(f"{path}: {exc.strerror or exc}") from exc
    finally:
        file.close()


def _open_regular(path: Path) -> IO[bytes]:
    """``path`` opened for reading, refused unless a regular file (a FIFO is never waited on)."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise TransientError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ComponentConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        _refuse_irregular(path, os.fstat(handle).st_mode)
    except BaseException:
        os.close(handle)
        raise
    return os.fdopen(handle, "rb")


def _check_regular(path: Path, *, missing_ok: bool) -> None:
    """Refuse ``path`` unless a regular file we may read (a missing one only when ``missing_ok``)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        if missing_ok:
            return
        raise TransientError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ComponentConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    _refuse_irregular(path, mode)
    if not os.access(path, os.R_OK):
        raise ComponentConfigError(f"{path}: cannot be read (permission denied)")


def _refuse_irregular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    raise ComponentConfigError(f"path {path} is {kind}: a feed must be a regular file")
