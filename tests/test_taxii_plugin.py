"""The ``taxii`` threat source and destination against the real medallion TAXII 2.1 server, a TAXII 2.0
fake, and a hostile server; and the STIX patterns they write and read."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from ce_taxii import TaxiiSink, TaxiiSource
from ce_taxii.fake import PASSWORD, READ_ONLY, READ_WRITE, USERNAME, FakeTaxii20, Medallion
from ce_taxii.patterns import observables, pattern_for
from ce_taxii.sink import indicator_id
from ce_taxii.source import COMPOUND_TAG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ce_daemon.errors import AuthError, ComponentConfigError, TransientError
from ce_daemon.plugin import IocPage, PluginContext, Pull, Push, SharedIoc
from ce_daemon.testing.fakes.base import FakeHttpServer, json_response

TAG = "ce-daemon"
NOW = time.time()


# -- helpers ----------------------------------------------------------------------------------------


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ago(seconds: float) -> str:
    return stamp(datetime.now(UTC) - timedelta(seconds=seconds))


def indicator(pattern: str, **extra: Any) -> dict[str, Any]:
    """A STIX 2.1 indicator as another producer would publish it."""
    created = "2026-01-01T00:00:00.000Z"
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": created,
        "modified": created,
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": created,
        **extra,
    }


def url_indicator(i: int, **extra: Any) -> dict[str, Any]:
    return indicator(f"[url:value = 'http://bad.example.net/{i}']", **extra)


def ioc(ioc_type: str, value: str, **extra: Any) -> SharedIoc:
    fields: dict[str, Any] = {
        "type": ioc_type,
        "value": value,
        "severity": "high",
        "reputation": 8,
        "confidence": 80,
        "tags": ("phishing",),
        "comment": "seen in a campaign",
        "first_seen": NOW - 3600,
        "last_seen": NOW - 60,
        "sources": ("misp",),
    }
    fields.update(extra)
    return SharedIoc(**fields)


def make_source(tmp_path: Path, url: str, **options: Any) -> TaxiiSource:
    settings = {"url": url, "collection": READ_WRITE, "username": USERNAME, "password": PASSWORD, **options}
    return TaxiiSource(
        TaxiiSource.Options.model_validate(settings), PluginContext("taxii", tmp_path, tmp_path)
    )


def make_sink(tmp_path: Path, url: str, **options: Any) -> TaxiiSink:
    settings = {"url": url, "collection": READ_WRITE, "username": USERNAME, "password": PASSWORD, **options}
    return TaxiiSink(TaxiiSink.Options.model_validate(settings), PluginContext("taxii", tmp_path, tmp_path))


@contextlib.asynccontextmanager
async def opened(plugin: Any) -> AsyncIterator[Any]:
    await plugin.open()
    try:
        yield plugin
    finally:
        await plugin.close()


async def pull(
    source: TaxiiSource, checkpoint: str | None = None, exclude: Iterable[str] = (), now: float | None = None
) -> list[IocPage]:
    request = Pull(checkpoint=checkpoint, exclude_tags=frozenset(exclude), now=now or time.time())
    return [page async for page in source.pull(request)]


async def pull_until_error(source: TaxiiSource) -> tuple[list[IocPage], Exception | None]:
    """The pages a pull yielded before it raised, and what it raised."""
    got: list[IocPage] = []
    try:
        async for page in source.pull(Pull(None, frozenset(), time.time())):
            got.append(page)  # noqa: PERF401  (the pages before the error are the point)
    except Exception as exc:
        return got, exc
    return got, None


def values(pages: Iterable[IocPage]) -> list[str]:
    return [record.value for page in pages for record in page.records]


def push(add: Iterable[SharedIoc] = (), remove: Iterable[SharedIoc] = ()) -> Push:
    return Push(add=list(add), remove=list(remove), full=False, tag=TAG)


@pytest.fixture
def medallion(tmp_path: Path) -> Callable[..., contextlib.AbstractAsyncContextManager[Medallion]]:
    """A factory: ``async with medallion(seed=…, max_page_size=…) as server`` runs a fresh medallion."""

    def start(**options: Any) -> contextlib.AbstractAsyncContextManager[Medallion]:
        return Medallion(tmp_path, **options)

    return start


MedallionFactory = Callable[..., contextlib.AbstractAsyncContextManager[Medallion]]


# -- the source against medallion (TAXII 2.1) -------------------------------------------------------


async def test_pull_21_follows_next_across_pages(tmp_path: Path, medallion: MedallionFactory) -> None:
    """25 indicators among other objects, pages of 10: three pages through `next`, every indicator once."""
    seed = [(url_indicator(i), ago(3600 - i)) for i in range(25)]
    seed += [({**url_indicator(99), "type": "malware", "id": f"malware--{uuid.uuid4()}"}, ago(100))]
    async with medallion(seed={READ_WRITE: seed}, max_page_size=10) as server:
        async with opened(make_source(tmp_path, server.discovery_url, page_size=10)) as source:
            pages = await pull(source)
    assert sorted(values(pages)) == sorted(f"http://bad.example.net/{i}" for i in range(25))
    assert len(pages) == 3
    assert [p.checkpoint for p in pages][-1] == seed[24][1]
    assert any("next=" in line for line in server.output), "the later pages were asked by `next`"


async def test_pull_resumes_from_its_checkpoint(tmp_path: Path, medallion: MedallionFactory) -> None:
    """A pull from the last checkpoint (a restart) reads only what was added since."""
    seed = [(url_indicator(i), ago(600 - i)) for i in range(5)]
    async with medallion(seed={READ_WRITE: seed}) as server:
        async with opened(make_source(tmp_path, server.api_root_url)) as source:
            first = await pull(source)
            await server.post([url_indicator(i) for i in range(100, 103)])
        async with opened(make_source(tmp_path, server.api_root_url)) as restarted:
            second = await pull(restarted, checkpoint=first[-1].checkpoint)
            third = await pull(restarted, checkpoint=second[-1].checkpoint)
    assert len(values(first)) == 5
    assert sorted(values(second)) == [f"http://bad.example.net/{i}" for i in range(100, 103)]
    assert values(third) == []


async def test_a_pull_broken_after_a_page_skips_nothing_added_in_the_same_instant(
    tmp_path: Path, medallion: MedallionFactory
) -> None:
    """Four indicators added at one instant, pages of 2: resuming from page 1's checkpoint reads all four."""
    same = ago(300)
    seed = [(url_indicator(i), same) for i in range(4)]
    async with medallion(seed={READ_WRITE: seed}, max_page_size=2) as server:
        async with opened(make_source(tmp_path, server.api_root_url, page_size=2)) as source:
            request = Pull(checkpoint=None, exclude_tags=frozenset(), now=time.time())
            pages = source.pull(request)
            page = await anext(pages)
            await pages.aclose()  # the pull fails here: only page 1 and its checkpoint are stored
            resumed = await pull(source, checkpoint=page.checkpoint)
    assert len(page.records) == 2
    assert sorted(values(resumed)) == sorted(f"http://bad.example.net/{i}" for i in range(4))


async def test_first_pull_reads_back_initial_lookback_only(
    tmp_path: Path, medallion: MedallionFactory
) -> None:
    """An indicator added two days ago is read with a 7 d look-back, not with a 1 d one."""
    seed = [(url_indicator(1), ago(2 * 86_400)), (url_indicator(2), ago(60))]
    async with medallion(seed={READ_WRITE: seed}) as server:
        async with opened(make_source(tmp_path, server.discovery_url)) as week:
            assert sorted(values(await pull(week))) == [
                "http://bad.example.net/1",
                "http://bad.example.net/2",
            ]
        async with opened(make_source(tmp_path, server.discovery_url, initial_lookback="1d")) as day:
            assert values(await pull(day)) == ["http://bad.example.net/2"]


async def test_patterns_labels_and_confidence_become_records(
    tmp_path: Path, medallion: MedallionFactory
) -> None:
    """OR: a record each; AND: tagged compound; labels, confidence; revoked, expired, others skipped."""
    sha256 = "a" * 64
    objects = [
        indicator(
            f"[file:hashes.'SHA-256' = '{sha256}' OR file:hashes.MD5 = '{'b' * 32}']",
            labels=["malware"],
            indicator_types=["malicious-activity"],
            confidence=90,
        ),
        indicator("[domain-name:value = 'c2.example.org'] AND [ipv4-addr:value = '203.0.113.9']"),
        indicator("[ipv6-addr:value = '2001:db8::7'] OR [file:hashes.SHA1 = '" + "c" * 40 + "']"),
        indicator("[url:value = 'http://revoked.example/']", revoked=True),
        indicator("[url:value = 'http://expired.example/']", valid_until="2026-01-02T00:00:00Z"),
        indicator("[url:value = 'http://ours.example/']", labels=[TAG]),
        indicator("[url:value LIKE 'http://%']"),
        indicator("[url:value = 'http://broken.example/'"),
        indicator("title: x", pattern_type="sigma"),
        {**indicator("[url:value = 'http://x/']"), "type": "malware", "id": f"malware--{uuid.uuid4()}"},
    ]
    seed = [(item, ago(100 - i)) for i, item in enumerate(objects)]
    async with medallion(seed={READ_ONLY: seed}) as server:
        async with opened(make_source(tmp_path, server.discovery_url, collection="read-only")) as source:
            pages = await pull(source, exclude=[TAG])
    records = {r.value: r for page in pages for r in page.records}
    assert sorted(records) == sorted(
        [sha256, "b" * 32, "c2.example.org", "203.0.113.9", "2001:db8::7", "c" * 40]
    )
    assert (records[sha256].type, records["b" * 32].type, records["c" * 40].type) == ("sha256", "md5", "sha1")
    assert records[sha256].tags == ("malware", "malicious-activity")
    assert (records[sha256].confidence, records[sha256].reputation) == (90, 9)
    assert COMPOUND_TAG in records["c2.example.org"].tags and COMPOUND_TAG in records["203.0.113.9"].tags
    assert COMPOUND_TAG not in records["2001:db8::7"].tags
    assert (records["c2.example.org"].type, records["2001:db8::7"].type) == ("domain", "ipv6")
    refused = dict(r for page in pages for r in page.refused)
    assert set(refused) == {objects[6]["id"], objects[7]["id"], objects[8]["id"]}
    assert refused[objects[6]["id"]] == "pattern names no url, domain, IP address or file hash by `=`"
    assert refused[objects[7]["id"]].startswith("pattern does not parse")
    assert refused[objects[8]["id"]] == "pattern_type 'sigma' is not a STIX pattern"


# -- TAXII 2.0 ----------------------------------------------------------------------------------------


def indicator_20(i: int) -> dict[str, Any]:
    return {
        "type": "indicator",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "labels": ["malicious-activity"],
        "pattern": f"[domain-name:value = 'bad{i}.example.com']",
        "valid_from": "2026-01-01T00:00:00Z",
    }


async def test_pull_20_pages_by_range_until_content_range_ends(tmp_path: Path) -> None:
    """TAXII 2.0: `Range: items N-M` pages, the server sending fewer than asked; stops at the end."""
    seed = [(indicator_20(i), ago(500 - i)) for i in range(7)]
    fake = FakeTaxii20(seed, max_range=2)
    async with fake as url:
        source = make_source(
            tmp_path, f"{url}/taxii/", version="2.0", collection="indicators 2.0", page_size=3
        )
        async with opened(source):
            pages = await pull(source)
    assert values(pages) == [f"bad{i}.example.com" for i in range(7)]
    ranges = [r.headers["Range"] for r in fake.requests]
    assert ranges == ["items 0-2", "items 2-4", "items 4-6", "items 6-8"]
    assert all(r.headers["Accept"].startswith("application/vnd.oasis.stix+json") for r in fake.requests)
    assert pages[-1].checkpoint == seed[-1][1]
    assert all(r.tags == ("malicious-activity",) for page in pages for r in page.records)


async def test_pull_20_with_nothing_new_ends_at_the_first_answer(tmp_path: Path) -> None:
    """A 416 (nothing in range) ends the pull without pages and without error."""
    fake = FakeTaxii20([(indicator_20(1), ago(10 * 86_400))])
    async with fake as url:
        source = make_source(tmp_path, f"{url}/taxii/", version="2.0", collection=FakeTaxii20.collection_id)
        async with opened(source):
            assert await pull(source) == []
    assert [r.status for r in fake.requests] == [416]


# -- the sink against medallion ------------------------------------------------------------------------

EVERY_TYPE = [
    ioc("url", "http://evil.example.com/a'b\\c?d=1"),
    ioc("domain", "evil.example.com"),
    ioc("hostname", "www.evil.example.org"),
    ioc("ipv4", "198.51.100.23"),
    ioc("ipv6", "2001:db8::23"),
    ioc("md5", "d" * 32),
    ioc("sha1", "e" * 40),
    ioc("sha256", "f" * 64),
]


async def test_push_then_pull_gives_back_what_was_pushed(tmp_path: Path, medallion: MedallionFactory) -> None:
    """Every type pushed comes back by pull with its value (quotes, backslashes), tags and confidence."""
    async with medallion() as server:
        async with opened(make_sink(tmp_path, server.discovery_url)) as sink:
            assert (await sink.health()).ok
            result = await sink.push(push(add=EVERY_TYPE))
        async with opened(make_source(tmp_path, server.discovery_url)) as source:
            pages = await pull(source)
            ours = await pull(source, exclude=[TAG])
    assert list(result.rejected) == []
    back = {(r.type, r.value): r for page in pages for r in page.records}
    expected = {("domain" if i.type == "hostname" else i.type, i.value) for i in EVERY_TYPE}
    assert set(back) == expected
    assert all(TAG in r.tags and "phishing" in r.tags and r.confidence == 80 for r in back.values())
    assert values(ours) == [], "what the daemon pushed is skipped by a source excluding its tag"


async def test_replayed_push_posts_nothing_twice(tmp_path: Path, medallion: MedallionFactory) -> None:
    """The same push again (its answer lost), also from a restarted sink: no second version of anything."""
    async with medallion() as server:
        async with opened(make_sink(tmp_path, server.discovery_url)) as sink:
            await sink.push(push(add=EVERY_TYPE))
            stored = await server.versions()
            again = await sink.push(push(add=EVERY_TYPE))
        async with opened(make_sink(tmp_path, server.discovery_url)) as restarted:
            await restarted.push(push(add=EVERY_TYPE))
        after = await server.versions()
    assert list(again.rejected) == []
    assert len(stored) == len(EVERY_TYPE) and after == stored
    assert {o["id"] for o in stored} == {indicator_id(i.type, i.value) for i in EVERY_TYPE}


async def test_changed_tags_post_a_new_version(tmp_path: Path, medallion: MedallionFactory) -> None:
    """An indicator whose tags changed gets a new version (same id and created, later modified)."""
    first = ioc("domain", "changing.example.com")
    async with medallion() as server:
        async with opened(make_sink(tmp_path, server.discovery_url)) as sink:
            await sink.push(push(add=[first]))
            await sink.push(push(add=[ioc("domain", "changing.example.com", tags=("phishing", "c2"))]))
        versions = await server.versions()
    assert len(versions) == 2
    old, new = sorted(versions, key=lambda o: o["modified"])
    assert old["id"] == new["id"] and old["created"] == new["created"] and new["modified"] > old["modified"]
    assert new["labels"] == ["c2", TAG, "phishing"]


async def test_removal_revokes_once_and_a_source_skips_it(
    tmp_path: Path, medallion: MedallionFactory
) -> None:
    """Remove: a later version with revoked: true; removed again: nothing; the source no longer reads it."""
    gone, kept = ioc("url", "http://gone.example/"), ioc("url", "http://kept.example/")
    async with medallion() as server:
        async with opened(make_sink(tmp_path, server.discovery_url)) as sink:
            await sink.push(push(add=[gone, kept]))
            await sink.push(push(remove=[gone]))
            await sink.push(push(remove=[gone, ioc("url", "http://never.example/")]))
        versions = [v for v in await server.versions() if v["id"] == indicator_id("url", gone.value)]
        async with opened(make_source(tmp_path, server.discovery_url)) as source:
            read = values(await pull(source))
    assert len(versions) == 2
    latest = max(versions, key=lambda o: o["modified"])
    assert latest["revoked"] is True and latest["modified"] > min(v["modified"] for v in versions)
    assert read == ["http://kept.example/"]


async def test_a_value_shared_again_after_its_removal_is_current_again(
    tmp_path: Path, medallion: MedallionFactory
) -> None:
    """Add, remove, add: the third version is not revoked, and a source reads the value again."""
    value = ioc("ipv4", "192.0.2.77")
    async with medallion() as server:
        async with opened(make_sink(tmp_path, server.discovery_url)) as sink:
            await sink.push(push(add=[value]))
            await sink.push(push(remove=[value]))
            await sink.push(push(add=[value]))
        versions = await server.versions()
        async with opened(make_source(tmp_path, server.discovery_url)) as source:
            read = values(await pull(source))
    assert len(versions) == 3
    assert "revoked" not in max(versions, key=lambda o: o["modified"])
    assert read == ["192.0.2.77"]


async def test_envelopes_stay_within_max_content_length(tmp_path: Path, medallion: MedallionFactory) -> None:
    """An API root taking 3,000-byte envelopes: 30 indicators go in several POSTs, all stored."""
    many = [ioc("domain", f"host{i}.evil.example.com") for i in range(30)]
    async with medallion(max_content_length=3000) as server:
        async with opened(make_sink(tmp_path, server.discovery_url, max_request_bytes=1_000_000)) as sink:
            result = await sink.push(push(add=many))
        stored = await server.versions()
    posts = [line for line in server.output if "POST /api1/collections/" in line]
    assert list(result.rejected) == []
    assert len(stored) == 30 and len(posts) >= 4
    assert all(" 202 " in line for line in posts)


async def test_sink_health_refuses_a_read_only_collection(
    tmp_path: Path, medallion: MedallionFactory
) -> None:
    """A collection with can_write false: health says so, and a push fails without posting."""
    async with medallion() as server:
        async with opened(make_sink(tmp_path, server.discovery_url, collection=READ_ONLY)) as sink:
            health = await sink.health()
            with pytest.raises(ComponentConfigError, match="not writable"):
                await sink.push(push(add=EVERY_TYPE[:1]))
    assert not health.ok and "not writable" in health.detail


async def test_wrong_password_is_an_auth_error(tmp_path: Path, medallion: MedallionFactory) -> None:
    """medallion's 401: health not ok, a pull raises AuthError."""
    async with medallion() as server:
        async with opened(make_source(tmp_path, server.discovery_url, password="wrong")) as source:
            health = await source.health()
            with pytest.raises(AuthError):
                await pull(source)
    assert not health.ok and "401" in health.detail


async def test_an_unknown_collection_is_named_with_what_exists(
    tmp_path: Path, medallion: MedallionFactory
) -> None:
    """A collection title that is not there: a config error listing the collections' titles."""
    async with medallion() as server:
        async with opened(make_source(tmp_path, server.discovery_url, collection="nope")) as source:
            with pytest.raises(ComponentConfigError, match="indicators, read-only"):
                await pull(source)


# -- a hostile server -----------------------------------------------------------------------------------


class HostileTaxii(FakeHttpServer):
    """A TAXII 2.1 API root whose objects endpoint answers what a test scripts in ``answers``."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[Callable[[], web.Response]] = []
        self.discovery_roots: list[str] | None = None
        self.posted: list[dict[str, Any]] = []
        self.status_polls = 0

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.get("/taxii2/", self.discovery),
            web.get("/api1/", self.root),
            web.get("/api1/collections/", self.collections),
            web.route("*", "/api1/collections/c1/objects/", self.objects),
            web.get("/api1/status/{id}/", self.status),
        ]

    async def discovery(self, request: web.Request) -> web.Response:
        return json_response({"title": "t", "api_roots": self.discovery_roots or [f"{self.url}/api1/"]})

    async def root(self, request: web.Request) -> web.Response:
        return json_response({"title": "hostile", "versions": ["application/taxii+json;version=2.1"]})

    async def collections(self, request: web.Request) -> web.Response:
        entry = {"id": "c1", "title": "c1", "can_read": True, "can_write": True}
        return json_response({"collections": [entry]})

    async def objects(self, request: web.Request) -> web.Response:
        scripted = await self.intercept(request)  # fail_next and hold_next apply here
        if scripted is not None:
            return scripted
        body = await request.read()
        if request.method == "POST":
            self.posted.append(orjson.loads(body))
        response = self.answers.pop(0)() if self.answers else json_response({})
        await self.record(request, body, response.status)
        return response

    async def status(self, request: web.Request) -> web.Response:
        self.status_polls += 1
        sent = self.posted[-1]["objects"]
        if self.status_polls < 2:
            return json_response({"id": "s1", "status": "pending", "pending_count": len(sent)})
        failures = [{"id": sent[0]["id"], "version": sent[0]["modified"], "message": "pattern too broad"}]
        return json_response({"id": "s1", "status": "complete", "failures": failures})


@pytest.fixture
async def hostile() -> AsyncIterator[HostileTaxii]:
    server = HostileTaxii()
    async with server:
        yield server


def envelope(*items: dict[str, Any], more: bool = False, next_token: str | None = None) -> web.Response:
    body: dict[str, Any] = {"objects": list(items), "more": more}
    if next_token:
        body["next"] = next_token
    return json_response(body, headers={"X-TAXII-Date-Added-Last": ago(10)})


async def test_garbage_json_fails_the_pull_after_the_pages_already_read(
    tmp_path: Path, hostile: HostileTaxii
) -> None:
    """Page 1 fine, page 2 not JSON: page 1 was yielded, then TransientError quoting the garbage."""
    hostile.answers = [
        lambda: envelope(url_indicator(1), more=True, next_token="n1"),
        lambda: web.Response(body=b"<html>oops</html>", content_type="application/taxii+json"),
    ]
    async with opened(make_source(tmp_path, f"{hostile.url}/taxii2/", collection="c1")) as source:
        got, error = await pull_until_error(source)
    assert isinstance(error, TransientError) and "not JSON: <html>oops" in str(error)
    assert values(got) == ["http://bad.example.net/1"]
    assert (
        hostile.requests[1].query["next"] == "n1" and hostile.requests[1].query["match[type]"] == "indicator"
    )


async def test_more_without_next_goes_on_from_date_added_last(tmp_path: Path, hostile: HostileTaxii) -> None:
    """`more` with no `next` (TAXII 2.1 §3.4): the next request asks added_after = X-TAXII-Date-Added-Last."""
    hostile.answers = [lambda: envelope(url_indicator(1), more=True), lambda: envelope(url_indicator(2))]
    async with opened(make_source(tmp_path, f"{hostile.url}/api1/", collection="c1")) as source:
        pages = await pull(source)
    assert values(pages) == ["http://bad.example.net/1", "http://bad.example.net/2"]
    first, second = (r.query for r in hostile.requests)
    assert "next" not in second and second["added_after"] > first["added_after"]


async def test_a_server_that_never_ends_is_read_max_pages_per_poll(
    tmp_path: Path, hostile: HostileTaxii
) -> None:
    """`more` forever: the poll stops after max_pages pages, its checkpoint where the last page ended."""
    hostile.answers = [lambda: envelope(url_indicator(1), more=True, next_token="again")] * 9
    async with opened(make_source(tmp_path, f"{hostile.url}/api1/", collection="c1", max_pages=3)) as source:
        pages = await pull(source)
    assert len(pages) == 3 and len(hostile.requests) == 3
    assert all(page.checkpoint for page in pages)


async def test_an_oversize_body_is_not_read(tmp_path: Path, hostile: HostileTaxii) -> None:
    """A body over max_body fails the pull with TransientError before any of it is parsed."""
    hostile.answers = [lambda: envelope(*[url_indicator(i) for i in range(200)])]
    async with opened(
        make_source(tmp_path, f"{hostile.url}/api1/", collection="c1", max_body=4096)
    ) as source:
        with pytest.raises(TransientError, match="more than 4,096 bytes"):
            await pull(source)


async def test_a_short_retry_after_is_waited_out_a_long_one_is_handed_to_the_core(
    tmp_path: Path, hostile: HostileTaxii
) -> None:
    """429 with Retry-After 0: asked again inside the pull; with Retry-After 3600: TransientError(3600)."""
    hostile.answers = [lambda: envelope(url_indicator(5))]
    hostile.fail_next(status=429, retry_after=0)
    async with opened(make_source(tmp_path, f"{hostile.url}/api1/", collection="c1")) as source:
        assert values(await pull(source)) == ["http://bad.example.net/5"]
        hostile.fail_next(status=429, retry_after=3600)
        with pytest.raises(TransientError) as caught:
            await pull(source)
    assert caught.value.retry_after == 3600
    assert [r.status for r in hostile.requests] == [429, 200, 429]


async def test_401_is_an_auth_error(tmp_path: Path, hostile: HostileTaxii) -> None:
    """401 on the objects endpoint: AuthError, not retried."""
    hostile.answers = [lambda: web.Response(status=401, text="bad token Bearer s3cr3t-token-value")]
    settings = {"username": None, "password": None, "token": "s3cr3t-token-value"}
    source = make_source(tmp_path, f"{hostile.url}/api1/", collection="c1", **settings)
    async with opened(source):
        with pytest.raises(AuthError) as caught:
            await pull(source)
    assert "s3cr3t-token-value" not in str(caught.value)
    assert hostile.requests[0].headers["Authorization"] == "Bearer s3cr3t-token-value"
    assert len(hostile.requests) == 1


async def test_a_discovery_pointing_elsewhere_is_refused(tmp_path: Path, hostile: HostileTaxii) -> None:
    """An API root on another origin is not followed: the credentials would go along."""
    hostile.discovery_roots = ["https://elsewhere.example/api1/"]
    async with opened(make_source(tmp_path, f"{hostile.url}/taxii2/", collection="c1")) as source:
        with pytest.raises(ComponentConfigError, match="another origin"):
            await pull(source)
        assert not (await source.health()).ok


async def test_a_peer_that_stops_answering_mid_pull_times_out(tmp_path: Path, hostile: HostileTaxii) -> None:
    """Page 2 never comes: TransientError 'no answer in time' after page 1 was yielded."""
    hostile.answers = [lambda: envelope(url_indicator(1), more=True, next_token="n1")]
    async with opened(make_source(tmp_path, f"{hostile.url}/api1/", collection="c1", timeout=0.3)) as source:
        pages = source.pull(Pull(None, frozenset(), time.time()))
        first = await anext(pages)
        hostile.hold_next()
        with pytest.raises(TransientError, match="no answer in time"):
            await anext(pages)
        await pages.aclose()
    assert values([first]) == ["http://bad.example.net/1"]


async def test_a_pending_status_is_polled_and_its_failures_rejected(
    tmp_path: Path, hostile: HostileTaxii
) -> None:
    """POST answered `pending`: the status is polled until complete; its failed object is rejected."""
    hostile.answers = [
        lambda: json_response({}),  # the look-up: nothing there yet
        lambda: json_response({"id": "s1", "status": "pending", "pending_count": 2}, 202),
    ]
    two = [ioc("domain", "a.example.com"), ioc("domain", "b.example.com")]
    sink = make_sink(tmp_path, f"{hostile.url}/api1/", collection="c1", status_interval=0.01)
    async with opened(sink):
        result = await sink.push(push(add=two))
    assert hostile.status_polls == 2
    assert list(result.rejected) == [(hostile.posted[0]["objects"][0]["name"], "pattern too broad")]


# -- patterns: what the sink writes, the source reads back ------------------------------------------------

TEXT = st.text(min_size=1, max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["url", "domain", "hostname"]), value=TEXT)
def test_written_patterns_parse_and_read_back_exactly(tmp_path: Path, kind: str, value: str) -> None:
    """Any URL or domain string: the sink's pattern parses with stix2-patterns; the source reads it back."""
    pattern = pattern_for(kind, value)
    found = observables(pattern, "2.1")
    assert found.values == (("url" if kind == "url" else "domain", value),)
    assert not found.compound
    assert observables(pattern, "2.0").values == found.values
    source = make_source(tmp_path, "http://127.0.0.1:9/taxii2/")
    item = indicator(pattern, labels=["x"])
    records, refused = source.read_objects([item], Pull(None, frozenset(), time.time()))
    assert refused == [] and [(r.type, r.value) for r in records] == [found.values[0]]


def test_hash_names_are_read_quoted_or_not_in_any_case() -> None:
    """file:hashes.MD5, 'MD5', 'SHA-1', SHA1, 'SHA-256', sha256: each read as its type."""
    pattern = (
        "[file:hashes.MD5 = '1' OR file:hashes.'SHA-1' = '2' OR file:hashes.SHA1 = '3'"
        " OR file:hashes.'SHA-256' = '4' OR file:hashes.sha256 = '5' OR file:hashes.'SHA-512' = '6']"
    )
    found = observables(pattern)
    assert found.values == (("md5", "1"), ("sha1", "2"), ("sha1", "3"), ("sha256", "4"), ("sha256", "5"))
    assert found.passed_over == 1


def test_push_options_refuse_two_kinds_of_credentials() -> None:
    """username/password and token together, or a username without password: refused by the options."""
    with pytest.raises(ValueError, match="not both"):
        TaxiiSink.Options.model_validate(
            {"url": "https://x/", "collection": "c", "username": "u", "password": "p", "token": "t"}
        )
    with pytest.raises(ValueError, match="both `username` and `password`"):
        TaxiiSource.Options.model_validate({"url": "https://x/", "collection": "c", "username": "u"})
