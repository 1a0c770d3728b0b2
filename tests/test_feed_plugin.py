"""The ``feed`` threat source against a fake feed server on loopback; the ``edl`` sink over real sockets."""

from __future__ import annotations

import base64
import functools
import gzip
import os
import ssl
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pydantic
import pytest
from ce_feed import EdlSink, FeedSource
from ce_feed.fake import LAST_MODIFIED, FeedFakeServer
from ce_feed.parse import CsvLayout, FeedParser, LineSplitter
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from ce_daemon.errors import AuthError, ComponentConfigError, TransientError
from ce_daemon.plugin import IocPage, IocRecord, PluginContext, Pull, Push, SharedIoc
from ce_daemon.testing.sinks import closed_port
from ce_daemon.testing.tls import make_certificates

TOKEN = "feed-secret-token-0123"
FIRST = Pull(checkpoint=None, exclude_tags=frozenset({"ce-daemon"}), now=1_700_000_000.0)


def context(tmp_path: Path, name: str = "feed") -> PluginContext:
    return PluginContext(name=name, base_dir=tmp_path, data_dir=tmp_path / "data")


@asynccontextmanager
async def feed_source(tmp_path: Path, name: str = "feed", **options: Any) -> AsyncIterator[FeedSource]:
    source = FeedSource(FeedSource.Options.model_validate(options), context(tmp_path, name))
    try:
        await source.open()
        yield source
    finally:
        await source.close()


async def pull(source: FeedSource, request: Pull = FIRST) -> list[IocPage]:
    return [page async for page in source.pull(request)]


async def pull_until_error(source: FeedSource, request: Pull = FIRST) -> tuple[list[IocPage], Exception]:
    """The pages a failing pull yielded before it raised, and what it raised."""
    pages: list[IocPage] = []
    try:
        async for page in source.pull(request):
            pages.append(page)  # noqa: PERF401 - the pages before the failure are what is asserted
    except Exception as exc:
        return pages, exc
    raise AssertionError("the pull did not fail")


def values(pages: Sequence[IocPage]) -> list[str]:
    return [record.value for page in pages for record in page.records]


def refused(pages: Sequence[IocPage]) -> list[tuple[str, str]]:
    return [item for page in pages for item in page.refused]


def gzip_of(data: bytes, repeat: int = 1) -> bytes:
    """``data`` ``repeat`` times over, gzipped as a stream (a bomb without holding it inflated)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join([packer.compress(data) for _ in range(repeat)] + [packer.flush()])


@functools.cache
def BOMB() -> bytes:  # noqa: N802 - a constant, built once on first use
    """16 MiB of lines, gzipped."""
    return gzip_of(b"198.51.100.7\n" * 8192, repeat=160)


@pytest.fixture
async def server() -> AsyncIterator[FeedFakeServer]:
    fake = FeedFakeServer()
    async with fake:
        yield fake


TEXT_FEED = b"""\
# Example blocklist, updated hourly
; another comment style

198.51.100.7
evil.example.com  # seen in phishing
   https://bad.example.net/login?x=1\tcomment
d41d8cd98f00b204e9800998ecf8427e
"""


# -- the feed source: text and CSV ------------------------------------------------------------------


async def test_text_feed_takes_the_first_token_and_skips_comments(
    tmp_path: Path, server: FeedFakeServer
) -> None:
    """One value a line, its first token; `#`/`;` comments and blank lines skipped; tags on every record."""
    url = server.serve("/list.txt", TEXT_FEED)
    async with feed_source(tmp_path, url=url, tags=["blocklist", "blocklist"]) as source:
        assert source.full_list is True
        pages = await pull(source)
    assert values(pages) == [
        "198.51.100.7",
        "evil.example.com",
        "https://bad.example.net/login?x=1",
        "d41d8cd98f00b204e9800998ecf8427e",
    ]
    assert all(r.type is None and r.tags == ("blocklist",) for p in pages for r in p.records)
    assert refused(pages) == []
    assert pages[-1].checkpoint is not None and "etag" in orjson.loads(pages[-1].checkpoint)


async def test_ioc_type_forces_every_type_and_exclude_tags_skip(
    tmp_path: Path, server: FeedFakeServer
) -> None:
    """`ioc_type` sets each record's type; records carrying an excluded tag (our own pushes) are skipped."""
    url = server.serve("/h.txt", b"aa\nbb\n")
    async with feed_source(tmp_path, url=url, ioc_type="md5") as source:
        pages = await pull(source)
    assert [(r.value, r.type) for p in pages for r in p.records] == [("aa", "md5"), ("bb", "md5")]
    async with feed_source(tmp_path, url=url, tags=["ce-daemon"]) as source:
        skipped = await pull(source)
    assert values(skipped) == []


CSV_FEED = b"""\
# exported 2026-12-01
id,indicator,kind,labels
1,198.51.100.7,ip-dst,"botnet,c2"
2,evil.example.com,domain,phishing|kit
3,http://x.example/a,URL,
4,,url,
5,abc,weird-type,
6
7,2001:db8::1,,
"""


async def test_csv_columns_by_name_with_type_and_tags(tmp_path: Path, server: FeedFakeServer) -> None:
    """CSV by header names: the value, its type (aliases mapped, blank: guessed), tags; bad rows refused."""
    url = server.serve("/f.csv", CSV_FEED)
    async with feed_source(
        tmp_path,
        url=url,
        format="csv",
        column="indicator",
        type_column="kind",
        tags_column="labels",
        tags=["x"],
    ) as source:
        pages = await pull(source)
    records = [(r.value, r.type, r.tags) for p in pages for r in p.records]
    assert records == [
        ("198.51.100.7", None, ("x", "botnet", "c2")),
        ("evil.example.com", "domain", ("x", "phishing", "kit")),
        ("http://x.example/a", "url", ("x",)),
        ("2001:db8::1", None, ("x",)),
    ]
    assert refused(pages) == [
        ("line 6", "the value column is empty"),
        ("line 7", "unknown indicator type 'weird-type'"),
        ("line 8", "no column 'indicator' (the row has 1)"),
    ]


async def test_csv_columns_by_index_without_header(tmp_path: Path, server: FeedFakeServer) -> None:
    """`header: false` and 0-based indexes, another delimiter: every row is data."""
    url = server.serve("/f.csv", b"198.51.100.7;ipv4;a\nevil.example.com;hostname;b\n")
    async with feed_source(
        tmp_path, url=url, format="csv", column=0, type_column=1, tags_column=2, delimiter=";", header=False
    ) as source:
        pages = await pull(source)
    assert [(r.value, r.type, r.tags) for p in pages for r in p.records] == [
        ("198.51.100.7", "ipv4", ("a",)),
        ("evil.example.com", "hostname", ("b",)),
    ]


async def test_csv_header_without_the_column_is_a_config_error(
    tmp_path: Path, server: FeedFakeServer
) -> None:
    """A header lacking the configured column stops the pull with a message naming what it has."""
    url = server.serve("/f.csv", b"a,b\n1,2\n")
    async with feed_source(tmp_path, url=url, format="csv", column="indicator") as source:
        _, error = await pull_until_error(source)
    assert isinstance(error, ComponentConfigError)
    assert "'indicator'" in str(error) and "'a'" in str(error)


@pytest.mark.parametrize(
    "options",
    [
        {"url": "http://x/", "path": "f.txt"},
        {},
        {"url": "http://x/", "format": "csv"},
        {"url": "http://x/", "column": 1},
        {"url": "http://x/", "format": "csv", "column": "name", "header": False},
        {"path": "f.txt", "auth": {"type": "bearer", "token": TOKEN}},
        {"url": "ftp://x/"},
        {"url": "http://x/", "type": "url"},
    ],
)
def test_inconsistent_options_are_refused(options: dict[str, Any]) -> None:
    """One of url/path; CSV needs a column, names a header; auth only for a URL; `type` names the plugin."""
    with pytest.raises(pydantic.ValidationError):
        FeedSource.Options.model_validate(options)


# -- the feed source: hostile bodies -----------------------------------------------------------------


async def test_gzip_content_encoding_is_inflated(tmp_path: Path, server: FeedFakeServer) -> None:
    """`Content-Encoding: gzip` bodies are read inflated."""
    url = server.serve("/list.txt", gzip.compress(TEXT_FEED), content_encoding="gzip")
    async with feed_source(tmp_path, url=url) as source:
        pages = await pull(source)
    assert len(values(pages)) == 4


async def test_gz_file_is_inflated_without_content_encoding(tmp_path: Path, server: FeedFakeServer) -> None:
    """A `.gz` file (application/gzip, several members) is recognised by its magic bytes and inflated."""
    body = gzip.compress(b"a.example\nb.example\n") + gzip.compress(b"c.example\n")
    url = server.serve("/list.txt.gz", body, content_type="application/gzip")
    async with feed_source(tmp_path, url=url) as source:
        pages = await pull(source)
    assert values(pages) == ["a.example", "b.example", "c.example"]


async def test_truncated_gz_file_fails_the_pull(tmp_path: Path, server: FeedFakeServer) -> None:
    """A gzip body cut short is not a whole list: the pull fails (nothing is deactivated)."""
    body = gzip.compress(b"a.example\n" * 1000)
    url = server.serve("/list.txt.gz", body[: len(body) // 2], content_type="application/gzip")
    async with feed_source(tmp_path, url=url) as source:
        _, error = await pull_until_error(source)
    assert isinstance(error, TransientError) and "ended before its end" in str(error)


@pytest.mark.parametrize("encoding", ["gzip", None], ids=["content-encoding", "gz-file"])
async def test_decompression_bomb_is_stopped_by_max_bytes(
    tmp_path: Path, server: FeedFakeServer, encoding: str | None
) -> None:
    """16 MiB inflating from ~50 KB: max_bytes counts inflated bytes, the pull fails early, pages out stay."""
    bomb = BOMB()
    assert len(bomb) < 1024**2 // 4
    url = server.serve("/bomb.txt.gz", bomb, content_encoding=encoding)
    async with feed_source(tmp_path, url=url, max_bytes="1MiB") as source:
        pages, error = await pull_until_error(source)
    assert isinstance(error, TransientError) and "max_bytes" in str(error)
    assert 0 < len(values(pages)) <= 1024**2 // 13


async def test_overlong_line_is_refused_and_the_rest_read(tmp_path: Path, server: FeedFakeServer) -> None:
    """A line over max_line is refused by its number; the lines after it are read."""
    body = b"a.example\n" + b"x" * 300_000 + b" tail\nb.example\r\n" + b"y" * 2000
    url = server.serve("/list.txt", body)
    async with feed_source(tmp_path, url=url, max_line="1KiB") as source:
        pages = await pull(source)
    assert values(pages) == ["a.example", "b.example"]
    assert refused(pages) == [
        ("line 2", "longer than 1,024 bytes; skipped"),
        ("line 4", "longer than 1,024 bytes; skipped"),
    ]


async def test_bad_utf8_line_is_refused_with_its_number(tmp_path: Path, server: FeedFakeServer) -> None:
    """A line that is not UTF-8 is refused by number, never aborting the pull."""
    url = server.serve("/list.txt", b"\xef\xbb\xbfa.example\nb\xff\xfe.example\nnul\x00\nc.example\n")
    async with feed_source(tmp_path, url=url) as source:
        pages = await pull(source)
    assert values(pages) == ["a.example", "c.example"]
    assert [what for what, _ in refused(pages)] == ["line 2", "line 3"]
    assert "not UTF-8" in refused(pages)[0][1]


async def test_pages_hold_at_most_10000_items_and_the_last_carries_the_checkpoint(
    tmp_path: Path, server: FeedFakeServer
) -> None:
    """25,000 values: pages of 10,000, 10,000 and 5,000; only the last page carries the checkpoint."""
    url = server.serve("/list.txt", b"".join(b"h%d.example\n" % i for i in range(25_000)))
    async with feed_source(tmp_path, url=url) as source:
        pages = await pull(source)
    assert [len(page.records) for page in pages] == [10_000, 10_000, 5_000]
    assert [page.checkpoint is not None for page in pages] == [False, False, True]


async def test_an_empty_feed_fails_unless_allowed(tmp_path: Path, server: FeedFakeServer) -> None:
    """A feed with no value would empty the list: it fails the pull, unless `allow_empty`."""
    url = server.serve("/list.txt", b"# nothing today\n")
    async with feed_source(tmp_path, url=url) as source:
        pages, error = await pull_until_error(source)
    assert isinstance(error, TransientError) and "allow_empty" in str(error)
    async with feed_source(tmp_path, url=url, allow_empty=True) as source:
        pages = await pull(source)
    assert values(pages) == [] and pages[-1].checkpoint is not None


# -- the feed source: conditional GET ----------------------------------------------------------------


async def test_304_replays_the_cached_list(tmp_path: Path, server: FeedFakeServer) -> None:
    """The second pull asks with If-None-Match; the 304 is answered with the last list, not an empty one."""
    url = server.serve("/list.txt", b"".join(b"h%d.example\n" % i for i in range(12_000)))
    async with feed_source(tmp_path, url=url, tags=["t"]) as source:
        first = await pull(source)
        request = Pull(checkpoint=first[-1].checkpoint, exclude_tags=frozenset(), now=1.0)
        second = await pull(source, request)
    assert [r.status for r in server.requests] == [200, 304]
    assert "If-None-Match" not in server.requests[0].headers
    assert server.requests[1].headers["If-None-Match"] == server.files["/list.txt"].etag
    assert server.requests[1].headers["If-Modified-Since"] == LAST_MODIFIED
    assert values(second) == values(first) and len(values(second)) == 12_000
    assert all(r.tags == ("t",) for p in second for r in p.records)
    assert second[-1].checkpoint == first[-1].checkpoint
    assert max(len(p.records) for p in second) <= 10_000


async def test_a_checkpoint_other_than_the_cache_asks_for_the_whole_feed(
    tmp_path: Path, server: FeedFakeServer
) -> None:
    """When the core's checkpoint is not the cache's (its store is older), the GET is not conditional."""
    url = server.serve("/list.txt", b"a.example\n")
    async with feed_source(tmp_path, url=url) as source:
        await pull(source)
        await pull(source, Pull(checkpoint='{"etag": "\\"old\\""}', exclude_tags=frozenset(), now=1.0))
    assert [r.status for r in server.requests] == [200, 200]


async def test_changed_options_do_not_replay_an_old_cache(tmp_path: Path, server: FeedFakeServer) -> None:
    """A cache made with other tags or columns is not used: the GET is not conditional."""
    url = server.serve("/list.txt", b"a.example\n")
    async with feed_source(tmp_path, url=url) as source:
        await pull(source)
    async with feed_source(tmp_path, url=url, tags=["new"]) as source:
        pages = await pull(source)
    assert [r.status for r in server.requests] == [200, 200]
    assert pages[-1].records[0].tags == ("new",)


async def test_an_answer_without_validators_drops_the_cache(tmp_path: Path, server: FeedFakeServer) -> None:
    """A feed that stops sending ETag/Last-Modified: its cache is removed, the next GET is not conditional."""
    url = server.serve("/list.txt", b"a.example\n")
    async with feed_source(tmp_path, url=url) as source:
        first = await pull(source)
        assert (tmp_path / "data" / "feed.feed-cache").exists()
        server.conditional = False
        again = Pull(checkpoint=first[-1].checkpoint, exclude_tags=frozenset(), now=1.0)
        second = await pull(source, again)
        third = await pull(source, again)
    assert values(second) == values(third) == ["a.example"]
    assert second[-1].checkpoint is None
    assert not (tmp_path / "data" / "feed.feed-cache").exists()
    assert ["If-None-Match" in r.headers for r in server.requests] == [False, True, False]


async def test_a_failed_pull_keeps_the_previous_cache(tmp_path: Path, server: FeedFakeServer) -> None:
    """A pull that fails mid-body leaves the last whole list as the cache (no half list is replayed)."""
    url = server.serve("/list.txt", b"a.example\nb.example\n")
    async with feed_source(tmp_path, url=url, max_bytes=100) as source:
        first = await pull(source)
        server.serve("/list.txt", b"c.example\n" * 50)
        _, error = await pull_until_error(source)
        assert isinstance(error, TransientError)
        server.serve("/list.txt", b"a.example\nb.example\n")  # the old ETag: 304
        again = await pull(source, Pull(checkpoint=first[-1].checkpoint, exclude_tags=frozenset(), now=1.0))
    assert server.requests[-1].status == 304
    assert values(again) == ["a.example", "b.example"]
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.endswith(".tmp")]


# -- the feed source: failures ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503, 500])
async def test_rate_limits_and_server_errors_are_transient(
    tmp_path: Path, server: FeedFakeServer, status: int
) -> None:
    """429 and 5xx raise TransientError carrying Retry-After; the next pull reads the feed."""
    url = server.serve("/list.txt", b"a.example\n")
    server.fail_next(status=status, retry_after=7)
    async with feed_source(tmp_path, url=url) as source:
        pages, error = await pull_until_error(source)
        assert pages == []
        assert isinstance(error, TransientError) and error.retry_after == 7
        assert values(await pull(source)) == ["a.example"]


async def test_refused_credentials_raise_auth_error(tmp_path: Path) -> None:
    """A 401 raises AuthError from pull and makes health not ok; the right token reads the feed."""
    fake = FeedFakeServer(authorization=f"Bearer {TOKEN}")
    async with fake:
        url = fake.serve("/list.txt", b"a.example\n")
        auth = {"type": "bearer", "token": TOKEN}
        async with feed_source(tmp_path, url=url, auth=auth, headers={"X-Team": "soc"}) as source:
            assert (await source.health()).ok
            assert values(await pull(source)) == ["a.example"]
        assert fake.requests[-1].headers["X-Team"] == "soc"
        fake.refuse_credentials()
        async with feed_source(tmp_path, url=url, auth=auth) as source:
            health = await source.health()
            _, error = await pull_until_error(source)
    assert not health.ok and "credentials" in health.detail
    assert isinstance(error, AuthError)
    assert TOKEN not in str(error)


async def test_basic_auth_is_sent(tmp_path: Path) -> None:
    """Basic credentials go as `Authorization: Basic …`."""
    expected = "Basic " + base64.b64encode(b"reader:pw-0123").decode()
    fake = FeedFakeServer(authorization=expected)
    async with fake:
        url = fake.serve("/list.txt", b"a.example\n")
        auth = {"type": "basic", "username": "reader", "password": "pw-0123"}
        async with feed_source(tmp_path, url=url, auth=auth) as source:
            assert values(await pull(source)) == ["a.example"]


async def test_redirect_is_not_followed(tmp_path: Path, server: FeedFakeServer) -> None:
    """A 3xx is a configuration error naming where it pointed (credentials never cross origins)."""
    server.fail_next(status=302, body=b"")
    async with feed_source(tmp_path, url=server.url + "/list.txt") as source:
        _, error = await pull_until_error(source)
    assert isinstance(error, ComponentConfigError) and "redirect" in str(error)


async def test_timeout_mid_body_raises_and_pages_already_yielded_stay(
    tmp_path: Path, server: FeedFakeServer
) -> None:
    """The server stops sending after 15,000 lines: the first page is out, then the pull raises."""
    body = b"".join(b"h%05d.example\n" % i for i in range(25_000))
    url = server.serve("/list.txt", body, stall_after=15 * 15_000)
    async with feed_source(tmp_path, url=url, timeout=0.3) as source:
        pages, error = await pull_until_error(source)
    assert isinstance(error, TransientError) and "in time" in str(error)
    assert [len(p.records) for p in pages] == [10_000]
    assert all(p.checkpoint is None for p in pages)


async def test_unreachable_feed_is_transient(tmp_path: Path) -> None:
    """Nothing listening: health not ok, pull raises TransientError."""
    async with feed_source(tmp_path, url=f"http://127.0.0.1:{closed_port()}/list.txt") as source:
        health = await source.health()
        _, error = await pull_until_error(source)
    assert not health.ok
    assert isinstance(error, TransientError)


# -- the feed source: a local file -------------------------------------------------------------------


async def test_path_reads_a_local_file_plain_or_gz(tmp_path: Path) -> None:
    """`path` (relative to the pipeline's folder) reads the file; a .gz one is inflated."""
    (tmp_path / "list.txt").write_bytes(TEXT_FEED)
    (tmp_path / "list.txt.gz").write_bytes(gzip.compress(TEXT_FEED))
    for name in ("list.txt", "list.txt.gz"):
        async with feed_source(tmp_path, path=name) as source:
            assert (await source.health()).ok
            pages = await pull(source)
        assert len(values(pages)) == 4
        assert pages[-1].checkpoint is None


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
async def test_path_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    """A directory, FIFO or device is refused at open (and at pull) with a ComponentConfigError naming it."""
    target = tmp_path / "list.txt"
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target = Path("/dev/zero")
    source = FeedSource(FeedSource.Options.model_validate({"path": str(target)}), context(tmp_path))
    with pytest.raises(ComponentConfigError, match=str(target)):
        await source.open()
    await source.close()
    async with feed_source(tmp_path, path="later.txt") as source:  # a missing file: not ok yet, opens
        assert not (await source.health()).ok
        _, error = await pull_until_error(source)
        assert isinstance(error, TransientError)
        if kind == "directory":
            (tmp_path / "later.txt").mkdir()
        else:
            os.mkfifo(tmp_path / "later.txt")  # never waited on: opened without blocking
        _, error = await pull_until_error(source)
    assert isinstance(error, ComponentConfigError) and "later.txt" in str(error)


# -- the parser: properties --------------------------------------------------------------------------


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(body)) for cut in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=600),
        st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.lists(st.sampled_from(["#c", ";c", "", " ", "a b", "x" * 40, "\r", "\xff", "é"]), max_size=30).map(
            lambda ls: "\n".join(ls).encode("utf-8", "surrogateescape")
        ),
    ),
    cuts=st.lists(st.integers(0, 600), max_size=8),
    csv_rows=st.booleans(),
)
def test_any_body_gives_a_record_refusal_or_skip_for_every_line(
    body: bytes, cuts: list[int], csv_rows: bool
) -> None:
    """Any body, cut anywhere into chunks: the parser never raises, and every line is accounted for."""
    layout = CsvLayout(column=1, type_column=2, tags_column=3, header=False) if csv_rows else None
    parser = FeedParser(max_line=32, csv_layout=layout)
    splitter = LineSplitter(32)
    outcomes: list[object] = []
    for chunk in _split(body, cuts):
        outcomes.extend(parser.parse(line) for line in splitter.feed(chunk))
    outcomes.extend(parser.parse(line) for line in splitter.end())
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") or not body else 1)
    assert splitter.number == len(outcomes) == lines
    assert sum(o is None for o in outcomes) == parser.skipped
    for outcome in outcomes:
        assert (
            outcome is None
            or isinstance(outcome, IocRecord)
            or (isinstance(outcome, tuple) and len(outcome) == 2)
        )
        if isinstance(outcome, IocRecord):
            assert outcome.value and len(outcome.value.encode()) <= 32


def test_an_endless_line_is_never_held_whole() -> None:
    """A line of 64 MiB fed in chunks keeps at most max_line bytes buffered, and is refused once it ends."""
    splitter = LineSplitter(1024)
    for _ in range(1024):
        assert list(splitter.feed(b"z" * 65536)) == []
        assert len(splitter._tail) <= 1025
    assert [(line.number, line.data) for line in splitter.feed(b"\nok\n")] == [(1, None), (2, b"ok")]


# -- the EDL sink ------------------------------------------------------------------------------------


def ioc(value: str, kind: str = "ipv4") -> SharedIoc:
    return SharedIoc(
        type=kind, value=value, severity="high", reputation=9, confidence=80, tags=(), comment="",
        first_seen=1.0, last_seen=2.0, sources=("feed",),
    )  # fmt: skip


def full(*iocs: SharedIoc) -> Push:
    return Push(add=list(iocs), remove=[], full=True, tag="ce-daemon")


LIST = (ioc("198.51.100.7"), ioc("evil.example.com", "domain"), ioc("http://x.example/a,b", "url"))


@asynccontextmanager
async def edl_sink(tmp_path: Path, name: str = "edl", **options: Any) -> AsyncIterator[EdlSink]:
    sink = EdlSink(EdlSink.Options.model_validate({"port": 0, **options}), context(tmp_path, name))
    try:
        await sink.open()
        yield sink
    finally:
        await sink.close()


async def fetch(
    url: str, headers: dict[str, str] | None = None, ssl_context: ssl.SSLContext | None = None
) -> tuple[int, bytes, CIMultiDict[str]]:
    """GET ``url`` over a real socket: status, body, headers."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, ssl=ssl_context or True) as r,
    ):
        return r.status, await r.read(), r.headers.copy()


async def test_edl_serves_the_pushed_list(tmp_path: Path) -> None:
    """Before any push: 503; after one: one value a line, text/plain, with an ETag and Last-Modified."""
    async with edl_sink(tmp_path) as sink:
        assert sink.incremental is False and len(sink.types) == 8
        assert sink.url is not None and sink.url.endswith("/edl.txt")
        status, _, _ = await fetch(sink.url)
        assert status == 503
        result = await sink.push(full(*LIST, LIST[0]))
        status, body, headers = await fetch(sink.url)
        health = await sink.health()
    assert list(result.rejected) == []
    assert status == 200
    assert body == b"198.51.100.7\nevil.example.com\nhttp://x.example/a,b\n"
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["ETag"] and headers["Last-Modified"]
    assert health.ok and "3 entries" in health.detail
    assert not (await sink.health()).ok  # closed


async def test_edl_csv_format_types_and_caps(tmp_path: Path) -> None:
    """`format: csv` writes value,type (quoted as needed); other types and entries past the cap: rejected."""
    async with edl_sink(tmp_path, format="csv", types=["ipv4", "url"], max_entries=1) as sink:
        assert sink.types == frozenset({"ipv4", "url"}) and sink.max_entries == 1
        assert sink.entry_size(LIST[2]) == len('"http://x.example/a,b",url\n')
        result = await sink.push(full(*LIST, ioc("bad value")))
        assert sink.url is not None
        _, body, _ = await fetch(sink.url)
    assert body == b"198.51.100.7,ipv4\n"
    assert [value for value, _ in result.rejected] == [
        "evil.example.com",
        "http://x.example/a,b",
        "bad value",
    ]


async def test_edl_conditional_get_answers_304(tmp_path: Path) -> None:
    """If-None-Match with the ETag, or If-Modified-Since its Last-Modified: 304; a new list is a 200."""
    async with edl_sink(tmp_path) as sink:
        assert sink.url is not None
        await sink.push(full(*LIST))
        _, _, headers = await fetch(sink.url)
        assert (await fetch(sink.url, {"If-None-Match": headers["ETag"]}))[0] == 304
        assert (await fetch(sink.url, {"If-Modified-Since": headers["Last-Modified"]}))[0] == 304
        await sink.push(full(*LIST))  # the same list again: same ETag
        assert (await fetch(sink.url, {"If-None-Match": headers["ETag"]}))[0] == 304
        await sink.push(full(LIST[0]))
        status, body, _ = await fetch(sink.url, {"If-None-Match": headers["ETag"]})
    assert (status, body) == (200, b"198.51.100.7\n")


async def test_edl_requires_the_configured_credentials(tmp_path: Path) -> None:
    """With auth configured, a client without (or with wrong) credentials gets 401 and no list."""
    auth = {"type": "basic", "username": "fw", "password": "pw-edl-0123"}
    good = "Basic " + base64.b64encode(b"fw:pw-edl-0123").decode()
    async with edl_sink(tmp_path, auth=auth) as sink:
        assert sink.url is not None
        await sink.push(full(*LIST))
        status, body, headers = await fetch(sink.url)
        assert (status, headers["WWW-Authenticate"]) == (401, 'Basic realm="edl"')
        assert b"198.51.100.7" not in body
        assert (await fetch(sink.url, {"Authorization": good + "x"}))[0] == 401
        assert (await fetch(sink.url, {"Authorization": good}))[0] == 200
    async with edl_sink(tmp_path, name="bearer", auth={"type": "bearer", "token": TOKEN}) as sink:
        assert sink.url is not None
        await sink.push(full(*LIST))
        assert (await fetch(sink.url, {"Authorization": "Bearer nope"}))[0] == 401
        assert (await fetch(sink.url, {"Authorization": f"Bearer {TOKEN}"}))[0] == 200


async def test_edl_over_tls(tmp_path: Path) -> None:
    """With a certificate and key, the list is served over TLS (a client trusting the CA reads it)."""
    files = make_certificates(tmp_path / "tls")
    tls = {"certificate": str(files.cert_file), "key": str(files.key_file)}
    async with edl_sink(tmp_path, tls=tls) as sink:
        assert sink.url is not None and sink.url.startswith("https://")
        await sink.push(full(*LIST))
        client = ssl.create_default_context(cafile=str(files.ca_file))
        status, body, _ = await fetch(sink.url, ssl_context=client)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await fetch(sink.url)
    assert status == 200 and body.startswith(b"198.51.100.7\n")


async def test_edl_tls_files_must_be_regular_files(tmp_path: Path) -> None:
    """A certificate path that is a directory is refused at open, naming it."""
    files = make_certificates(tmp_path / "tls")
    (tmp_path / "certdir").mkdir()
    sink = EdlSink(
        EdlSink.Options.model_validate(
            {"port": 0, "tls": {"certificate": "certdir", "key": str(files.key_file)}}
        ),
        context(tmp_path),
    )
    with pytest.raises(ComponentConfigError, match="certdir"):
        await sink.open()
    await sink.close()
    await sink.close()


async def test_edl_restart_serves_the_persisted_list(tmp_path: Path) -> None:
    """A new sink (restart, reload) serves the last run's list from data_dir until its first push."""
    async with edl_sink(tmp_path) as sink:
        await sink.push(full(*LIST))
        assert sink.url is not None
        _, before, first = await fetch(sink.url)
    assert (tmp_path / "data" / "edl.txt").read_bytes() == before
    async with edl_sink(tmp_path) as sink:
        assert sink.url is not None
        status, after, again = await fetch(sink.url)
        assert "3 entries" in (await sink.health()).detail
    assert (status, after, again["ETag"]) == (200, before, first["ETag"])


async def test_edl_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A push whose rename fails raises TransientError; the old file and the served list are untouched."""
    async with edl_sink(tmp_path) as sink:
        assert sink.url is not None
        await sink.push(full(*LIST))
        written = (tmp_path / "data" / "edl.txt").read_bytes()

        def broken(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", broken)
        with pytest.raises(TransientError, match="No space left"):
            await sink.push(full(LIST[0]))
        monkeypatch.undo()
        _, body, _ = await fetch(sink.url)
    assert body == written == (tmp_path / "data" / "edl.txt").read_bytes()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["edl.txt"]


async def test_edl_reload_binds_the_same_port_while_the_old_sink_serves(tmp_path: Path) -> None:
    """A reload opens the new sink before the old one closes: both can listen on the port at once."""
    async with edl_sink(tmp_path) as old:
        await old.push(full(*LIST))
        assert old.url is not None
        port = int(old.url.rsplit(":", 1)[1].split("/")[0])
        async with edl_sink(tmp_path, port=port) as new:
            assert new.url == old.url
        assert (await fetch(old.url))[0] == 200
