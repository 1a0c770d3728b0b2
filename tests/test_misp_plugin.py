"""The ``misp`` threat source and destination against the fake MISP on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from ce_misp import MispSink, MispSource
from ce_misp.fake import DEFAULT_KEY, FakeMisp
from ce_misp.mapping import SUPPORTED_TYPES, read_attribute
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.errors import AuthError, ComponentConfigError, TransientError
from ce_daemon.plugin import IocPage, IocRecord, PluginContext, Pull, Push, SharedIoc

NOW = 1_700_000_000
TAG = "netskope-ce"
INFO = "ce-daemon shared indicators"


@pytest.fixture
async def misp() -> AsyncIterator[FakeMisp]:
    fake = FakeMisp(clock=lambda: float(NOW))
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(cls: type[Any], misp: FakeMisp, tmp_path: Path, **options: Any) -> AsyncIterator[Any]:
    plugin = cls(
        cls.Options.model_validate({"url": misp.url, "key": DEFAULT_KEY, **options}),
        PluginContext(name="misp", base_dir=tmp_path, data_dir=tmp_path),
    )
    await plugin.open()
    try:
        yield plugin
    finally:
        await plugin.close()


async def pull(
    source: MispSource, checkpoint: str | None = None, exclude: Iterable[str] = (), now: int = NOW
) -> list[IocPage]:
    return [page async for page in source.pull(Pull(checkpoint, frozenset(exclude), float(now)))]


async def collect(pages: AsyncIterator[IocPage], into: list[IocPage]) -> None:
    """Keep each page as it comes (what was read before a failure stays in ``into``)."""
    async for page in pages:
        into.append(page)  # noqa: PERF401 -- one by one, so that what came before a failure stays


def values(pages: list[IocPage]) -> list[str]:
    return [record.value for page in pages for record in page.records]


def attribute(kind: str, value: str, ago: int, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "value": value, "timestamp": NOW - ago, **extra}


def ioc(kind: str, value: str, **extra: Any) -> SharedIoc:
    fields: dict[str, Any] = {
        "severity": "high",
        "reputation": 9,
        "confidence": 80,
        "tags": (),
        "comment": "",
        "first_seen": NOW - 600.0,
        "last_seen": NOW - 60.0,
        "sources": ("feed",),
    }
    return SharedIoc(type=kind, value=value, **(fields | extra))


def push(add: Iterable[SharedIoc] = (), remove: Iterable[SharedIoc] = (), *, full: bool = False) -> Push:
    return Push(add=list(add), remove=list(remove), full=full, tag=TAG)


# -- the source --------------------------------------------------------------------------------------


async def test_pull_reads_pages_in_timestamp_order_with_checkpoints(misp: FakeMisp, tmp_path: Path) -> None:
    """Pages of page_size in timestamp order; each page's checkpoint is the largest timestamp so far."""
    misp.add_event(
        "feed",
        [
            attribute("domain", "c.example", 100),
            attribute("domain", "a.example", 500),
            attribute("domain", "e.example", 10),
            attribute("domain", "b.example", 300),
            attribute("domain", "d.example", 50),
        ],
    )
    async with opened(MispSource, misp, tmp_path, page_size=2) as source:
        pages = await pull(source)
    assert [[r.value for r in page.records] for page in pages] == [
        ["a.example", "b.example"],
        ["c.example", "d.example"],
        ["e.example"],
    ]
    assert [page.checkpoint for page in pages] == [str(NOW - 300), str(NOW - 50), str(NOW - 10)]
    first = misp.searches[0]
    assert first["attribute_timestamp"] == [str(NOW - 7 * 86_400), str(NOW)]
    assert (first["returnFormat"], first["limit"], first["to_ids"], first["includeContext"]) == (
        "json",
        2,
        1,
        1,
    )
    assert [search["page"] for search in misp.searches] == [1, 2, 3]


async def test_pull_resumes_from_the_checkpoint_boundary_included(misp: FakeMisp, tmp_path: Path) -> None:
    """A checkpoint reads from that second on (inclusive); nothing before it comes again."""
    misp.add_event(
        "feed", [attribute("url", f"http://x.example/{n}", ago) for n, ago in enumerate((300, 200, 100))]
    )
    async with opened(MispSource, misp, tmp_path) as source:
        pages = await pull(source, checkpoint=str(NOW - 200))
    assert values(pages) == ["http://x.example/1", "http://x.example/2"]
    assert pages[-1].checkpoint == str(NOW - 100)


async def test_first_poll_reaches_back_initial_lookback_and_empty_keeps_checkpoint(
    misp: FakeMisp, tmp_path: Path
) -> None:
    """The first poll starts initial_lookback ago; a poll finding nothing keeps the checkpoint as it was."""
    misp.add_event("feed", [attribute("domain", "old.example", 7200), attribute("domain", "new.example", 60)])
    async with opened(MispSource, misp, tmp_path, initial_lookback="1h") as source:
        assert values(await pull(source)) == ["new.example"]
        pages = await pull(source, checkpoint=str(NOW + 10), now=NOW + 20)
    assert [(list(page.records), page.checkpoint) for page in pages] == [([], None)]


async def test_attributes_map_to_indicators(misp: FakeMisp, tmp_path: Path) -> None:
    """Types, composite values' parts, IPv4/IPv6, severity, attribute and event tags, comment and seen."""
    misp.add_event(
        "apt",
        [
            attribute("ip-src|port", "2001:DB8::1|443", 90, comment="c2", Tag=[{"name": "tlp:amber"}]),
            attribute("ip-dst", "192.0.2.7", 80),
            attribute("filename|sha256", "evil.exe|" + "ab" * 32, 70),
            attribute("link", "https://report.example/apt", 60),
            attribute("hostname|port", "c2.example|8443", 50),
            attribute("md5", "d" * 32, 40, last_seen="2023-11-14T22:00:00.000000+00:00"),
        ],
        tags=["apt:x"],
        threat_level_id="1",
    )
    async with opened(MispSource, misp, tmp_path) as source:
        (page,) = await pull(source)
    assert [(r.type, r.value) for r in page.records] == [
        ("ipv6", "2001:db8::1"),
        ("ipv4", "192.0.2.7"),
        ("sha256", "ab" * 32),
        ("url", "https://report.example/apt"),
        ("hostname", "c2.example"),
        ("md5", "d" * 32),
    ]
    first = page.records[0]
    assert (first.severity, first.tags, first.comment, first.seen) == (
        "high",
        ("tlp:amber", "apt:x"),
        "c2",
        NOW - 90,
    )
    assert page.records[-1].seen == NOW - 800  # its last_seen, 22:00:00 where NOW is 22:13:20
    assert page.refused == []


async def test_tag_filters_and_our_own_tag_are_sent_to_misp(misp: FakeMisp, tmp_path: Path) -> None:
    """tags include, exclude_tags and Pull.exclude_tags go to MISP as ``tags`` with ``!`` for exclusion."""
    misp.add_event("white", [attribute("domain", "w.example", 10)], tags=["tlp:white"])
    misp.add_event(
        "red", [attribute("domain", "r.example", 10, Tag=[{"name": "tlp:red"}])], tags=["tlp:white"]
    )
    misp.add_event("ours", [attribute("domain", "o.example", 10)], tags=["tlp:white", TAG])
    misp.add_event("other", [attribute("domain", "x.example", 10)])
    async with opened(MispSource, misp, tmp_path, tags=["tlp:white"], exclude_tags=["tlp:red"]) as source:
        pages = await pull(source, exclude=[TAG])
    assert values(pages) == ["w.example"]
    assert misp.searches[0]["tags"] == ["tlp:white", f"!{TAG}", "!tlp:red"]


class TagBlindMisp(FakeMisp):
    """A MISP that ignores the ``tags`` filter (a tag unknown to it, an older version)."""

    def _matches(self, attribute: Any, filters: dict[str, Any]) -> bool:
        return super()._matches(attribute, {k: v for k, v in filters.items() if k != "tags"})


async def test_excluded_tags_are_also_skipped_here(tmp_path: Path) -> None:
    """An attribute whose event or itself carries an excluded tag is skipped even if MISP returns it."""
    fake = TagBlindMisp(clock=lambda: float(NOW))
    async with fake:
        fake.add_event("ours", [attribute("domain", "ours.example", 30)], tags=[TAG])
        fake.add_event("mixed", [attribute("domain", "mine.example", 20, Tag=[{"name": TAG}])])
        fake.add_event("feed", [attribute("domain", "feed.example", 10)])
        async with opened(MispSource, fake, tmp_path) as source:
            pages = await pull(source, exclude=[TAG])
    assert values(pages) == ["feed.example"]
    assert pages[-1].checkpoint == str(NOW - 10) and pages[-1].refused == []


async def test_to_ids_only_and_types(misp: FakeMisp, tmp_path: Path) -> None:
    """By default only to_ids attributes; to_ids_only false takes all; types narrows the search."""
    misp.add_event(
        "feed",
        [
            attribute("domain", "ids.example", 20),
            attribute("url", "http://no-ids.example/", 10, to_ids=False),
        ],
    )
    async with opened(MispSource, misp, tmp_path) as source:
        assert values(await pull(source)) == ["ids.example"]
    async with opened(MispSource, misp, tmp_path, to_ids_only=False) as source:
        assert values(await pull(source)) == ["ids.example", "http://no-ids.example/"]
    async with opened(MispSource, misp, tmp_path, to_ids_only=False, types=["url"]) as source:
        assert values(await pull(source)) == ["http://no-ids.example/"]
    with pytest.raises(pydantic.ValidationError, match="give no indicator"):
        MispSource.Options.model_validate({"url": misp.url, "key": "k", "types": ["email-src"]})


async def test_unsupported_and_unreadable_attributes_are_refused_and_counted(
    misp: FakeMisp, tmp_path: Path
) -> None:
    """Other types, bad IPs and composites without ``|`` are refused with a reason; the rest is read."""
    misp.add_event(
        "mixed",
        [
            attribute("comment", "just words", 50),
            attribute("ip-dst", "10.0.0.0/8", 40),
            attribute("filename|md5", "nohash", 30),
            attribute("domain", "good.example", 20),
        ],
    )
    async with opened(MispSource, misp, tmp_path) as source:
        (page,) = await pull(source)
    assert values([page]) == ["good.example"]
    assert [(what, reason.split(":")[0]) for what, reason in page.refused] == [
        ("comment just words", "unsupported MISP type 'comment'"),
        ("ip-dst 10.0.0.0/8", "not an IP address"),
        ("filename|md5 nohash", "a filename|md5 value is two parts separated by |"),
    ]
    assert page.checkpoint == str(NOW - 20)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (
            b"<html><body>502 Bad Gateway from the proxy</body></html>",
            "not JSON: <html><body>502 Bad Gateway",
        ),
        (orjson.dumps({"response": {"Attribute": "nope"}}), 'no {"response": {"Attribute": [...]}}'),
        (orjson.dumps([1, 2]), 'no {"response"'),
    ],
)
async def test_garbage_answers_are_transient_and_quoted(
    misp: FakeMisp, tmp_path: Path, body: bytes, said: str
) -> None:
    """A body that is not JSON, or not of MISP's shape, fails the poll as transient, quoting its start."""
    misp.fail_next(1, 200, body=body)
    async with opened(MispSource, misp, tmp_path) as source:
        with pytest.raises(TransientError, match="restSearch") as caught:
            await pull(source)
    assert said in str(caught.value)


async def test_a_page_larger_than_asked_is_refused(misp: FakeMisp, tmp_path: Path) -> None:
    """A peer that answers more attributes than the page's limit fails the poll (unbounded otherwise)."""
    many = [{"type": "domain", "value": f"d{n}.example", "timestamp": str(NOW)} for n in range(3)]
    misp.fail_next(1, 200, body=orjson.dumps({"response": {"Attribute": many}}))
    async with opened(MispSource, misp, tmp_path, page_size=2) as source:
        with pytest.raises(TransientError, match="3 attributes for a page of 2"):
            await pull(source)


async def test_oversize_answer_is_not_read(misp: FakeMisp, tmp_path: Path) -> None:
    """An answer larger than max_body fails the poll as transient without being read whole."""
    misp.add_event("big", [attribute("url", f"http://big.example/{'x' * 200}/{n}", 10) for n in range(20)])
    async with opened(MispSource, misp, tmp_path, max_body="2KiB") as source:
        with pytest.raises(TransientError, match="more than 2,048 bytes"):
            await pull(source)


async def test_429_5xx_and_refused_key(misp: FakeMisp, tmp_path: Path) -> None:
    """429 carries Retry-After, a 503 is transient, a refused key is an AuthError; health says so too."""
    misp.add_event("feed", [attribute("domain", "a.example", 10)])
    async with opened(MispSource, misp, tmp_path) as source:
        assert (await source.health()).ok
        misp.fail_next(1, 429, retry_after=7)
        with pytest.raises(TransientError) as caught:
            await pull(source)
        assert caught.value.retry_after == 7.0
        misp.fail_next(1, 503)
        with pytest.raises(TransientError, match="HTTP 503"):
            await pull(source)
        misp.refuse_credentials()
        with pytest.raises(AuthError, match="Authentication failed"):
            await pull(source)
        health = await source.health()
    assert not health.ok and "403" in health.detail


async def test_a_peer_that_does_not_answer_in_time_fails_the_poll(misp: FakeMisp, tmp_path: Path) -> None:
    """A request held past ``timeout`` fails the poll as transient ("no answer in time")."""
    misp.hold_next(1)
    try:
        async with opened(MispSource, misp, tmp_path, timeout=0.2) as source:
            with pytest.raises(TransientError, match="no answer in time"):
                await pull(source)
    finally:
        misp.release_held()


async def test_failure_mid_poll_keeps_pages_read_and_resumes(misp: FakeMisp, tmp_path: Path) -> None:
    """A page failing after others keeps their checkpoint; resuming from it reads the rest."""
    misp.add_event("feed", [attribute("domain", f"d{n}.example", 100 - n) for n in range(5)])
    pages: list[IocPage] = []
    misp.fail_next(1, 502, after=1)
    async with opened(MispSource, misp, tmp_path, page_size=2) as source:
        with pytest.raises(TransientError):
            await collect(source.pull(Pull(None, frozenset(), float(NOW))), pages)
        assert values(pages) == ["d0.example", "d1.example"]
        rest = await pull(source, checkpoint=pages[-1].checkpoint)
    assert values(rest) == ["d1.example", "d2.example", "d3.example", "d4.example"]


@given(
    kind=st.one_of(
        st.sampled_from(sorted(SUPPORTED_TYPES | {"comment", "email-src", "yara"})), st.text(max_size=20)
    ),
    value=st.text(max_size=80),
    timestamp=st.one_of(st.integers(), st.text(max_size=12), st.none(), st.floats()),
    last_seen=st.one_of(st.none(), st.text(max_size=30), st.integers()),
    threat=st.one_of(st.none(), st.text(max_size=3), st.integers()),
)
def test_any_attribute_is_a_record_or_refused_never_raises(
    kind: str, value: str, timestamp: Any, last_seen: Any, threat: Any
) -> None:
    """Reading an attribute never raises: exactly one of a record (of a known type) or a refusal."""
    item = {
        "type": kind,
        "value": value,
        "timestamp": timestamp,
        "last_seen": last_seen,
        "Event": {"threat_level_id": threat, "Tag": [{"name": "t"}, "junk"]},
        "Tag": "junk",
    }
    reading = read_attribute(item, frozenset())
    assert (reading.record is None) != (reading.refused is None)
    if reading.record is not None:
        assert isinstance(reading.record, IocRecord)
        assert reading.record.type in {"url", "domain", "hostname", "ipv4", "ipv6", "md5", "sha1", "sha256"}
        assert reading.record.value and reading.timestamp is not None


# -- the destination ---------------------------------------------------------------------------------


def our_event(misp: FakeMisp) -> int:
    (event,) = [e for e in misp.events.values() if e.info == INFO]
    return event.id


async def test_push_creates_one_tagged_event_and_adds_attributes(misp: FakeMisp, tmp_path: Path) -> None:
    """The event is made once (info, push tag); attributes are to_ids, tagged, typed back for MISP."""
    adds = [ioc("url", "http://bad.example/x"), ioc("ipv6", "2001:db8::2"), ioc("sha1", "f" * 40)]
    async with opened(MispSink, misp, tmp_path) as sink:
        assert sink.types == {"url", "domain", "hostname", "ipv4", "ipv6", "md5", "sha1", "sha256"}
        assert (await sink.push(push(adds))).rejected == []
        assert (await sink.push(push([ioc("domain", "bad.example")]))).rejected == []
    event_id = our_event(misp)
    assert misp.events[event_id].tags == [TAG]
    held = [misp.attributes[i] for i in misp.events[event_id].attribute_ids]
    assert [(a.type, a.value, a.to_ids, a.tags) for a in held] == [
        ("url", "http://bad.example/x", True, [TAG]),
        ("ip-dst", "2001:db8::2", True, [TAG]),
        ("sha1", "f" * 40, True, [TAG]),
        ("domain", "bad.example", True, [TAG]),
    ]
    assert held[0].last_seen == "2023-11-14T22:12:20+00:00"
    assert [r.path for r in misp.requests].count("/events/add") == 1


async def test_a_new_sink_finds_the_existing_event(misp: FakeMisp, tmp_path: Path) -> None:
    """A restarted destination finds its event by exact info and tag, not one with a similar info."""
    misp.add_event(f"{INFO} (old)", tags=[TAG])
    misp.add_event(INFO)  # not tagged: someone else's
    mine = misp.add_event(INFO, tags=[TAG])
    async with opened(MispSink, misp, tmp_path) as sink:
        await sink.push(push([ioc("domain", "x.example")]))
    assert misp.values(mine.id) == ["x.example"]
    assert len(misp.events) == 3


async def test_replayed_push_after_a_lost_answer_doubles_nothing(misp: FakeMisp, tmp_path: Path) -> None:
    """The add applied but its answer was lost: the push fails, its replay adds nothing twice."""
    adds = [ioc("domain", f"d{n}.example") for n in range(4)]
    async with opened(MispSink, misp, tmp_path, batch_size=2) as sink:
        await sink.push(push(adds[:1]))
        misp.drop_after_apply(1, after=2)  # the two look-ups pass, the first add batch is lost
        with pytest.raises(TransientError):
            await sink.push(push(adds))
        assert (await sink.push(push(adds))).rejected == []
    assert misp.values() == ["d0.example", "d1.example", "d2.example", "d3.example"]


async def test_lost_answer_to_event_creation_does_not_make_a_second_event(
    misp: FakeMisp, tmp_path: Path
) -> None:
    """events/add applied but unanswered: the destination looks again and uses that event."""
    misp.drop_after_apply(1, after=1)  # the index passes, events/add is lost
    async with opened(MispSink, misp, tmp_path) as sink:
        await sink.push(push([ioc("domain", "x.example")]))
    assert [e.info for e in misp.events.values()] == [INFO]
    assert [r.path for r in misp.requests][:3] == ["/events/index", "/events/add", "/events/index"]
    assert misp.values() == ["x.example"]


async def test_removals_soft_delete_and_gone_ones_are_fine(misp: FakeMisp, tmp_path: Path) -> None:
    """Removed values are soft-deleted; removing again, or what was never there, is no error."""
    a, b, c = ioc("domain", "a.example"), ioc("ipv4", "192.0.2.1"), ioc("md5", "e" * 32)
    async with opened(MispSink, misp, tmp_path) as sink:
        await sink.push(push([a, b]))
        await sink.push(push(remove=[a, c]))
        (deleted,) = [x for x in misp.attributes.values() if x.value == "a.example"]
        assert deleted.deleted and deleted.timestamp == NOW
        assert (await sink.push(push(remove=[a]))).rejected == []
        await sink.push(push([a], remove=[b]))
    assert misp.values() == ["a.example"]
    assert [r.path for r in misp.requests if "/delete/" in r.path] == [
        "/attributes/delete/1",
        "/attributes/delete/2",
    ]


class LaggingMisp(FakeMisp):
    """A MISP whose search still lists soft-deleted attributes (an index that lags behind)."""

    def _rest_search(self, request: Any, payload: Any) -> Any:
        return super()._rest_search(request, {**payload, "deleted": [0, 1]})


async def test_deleting_an_attribute_already_gone_is_no_error(tmp_path: Path) -> None:
    """MISP's 404 "Invalid attribute" for an attribute deleted meanwhile counts as removed."""
    fake = LaggingMisp(clock=lambda: float(NOW))
    async with fake, opened(MispSink, fake, tmp_path) as sink:
        await sink.push(push([ioc("domain", "a.example")]))
        await sink.push(push(remove=[ioc("domain", "a.example")]))
        assert (await sink.push(push(remove=[ioc("domain", "a.example")]))).rejected == []
        statuses = [r.status for r in fake.requests if "/delete/" in r.path]
    assert statuses == [200, 404]


async def test_an_event_deleted_in_misp_is_made_again(misp: FakeMisp, tmp_path: Path) -> None:
    """Someone deleted the destination's event: the next push makes a new one and adds there."""
    async with opened(MispSink, misp, tmp_path) as sink:
        await sink.push(push([ioc("domain", "a.example")]))
        first = misp.events.pop(our_event(misp))
        for attribute_id in first.attribute_ids:
            misp.attributes[attribute_id].deleted = True
        await sink.push(push([ioc("domain", "b.example")]))
    assert misp.values(our_event(misp)) == ["b.example"]
    assert our_event(misp) != first.id


class UntaggingMisp(FakeMisp):
    """A MISP that creates events without the tags asked for (a user who may not tag)."""

    def _add_event(self, request: Any, payload: Any) -> dict[str, Any]:
        return super()._add_event(request, {"Event": {**payload["Event"], "Tag": []}})


async def test_an_event_made_without_our_tag_stops_the_destination(tmp_path: Path) -> None:
    """MISP dropped the event's tag: a config error, not one more untagged event per push."""
    fake = UntaggingMisp(clock=lambda: float(NOW))
    async with fake, opened(MispSink, fake, tmp_path) as sink:
        with pytest.raises(ComponentConfigError, match="without the tag 'netskope-ce'"):
            await sink.push(push([ioc("domain", "a.example")]))
    assert fake.values() == []


async def test_a_full_push_replaces_what_the_event_holds(misp: FakeMisp, tmp_path: Path) -> None:
    """With full, what the event holds beyond the push's list is soft-deleted."""
    async with opened(MispSink, misp, tmp_path) as sink:
        await sink.push(push([ioc("domain", "a.example"), ioc("domain", "b.example")]))
        await sink.push(push([ioc("domain", "b.example"), ioc("domain", "c.example")], full=True))
    assert misp.values() == ["b.example", "c.example"]


async def test_values_misp_refuses_are_rejected_alone(misp: FakeMisp, tmp_path: Path) -> None:
    """MISP's per-attribute refusals (403 saved false, or errors beside saved ones) reject only those."""
    async with opened(MispSink, misp, tmp_path) as sink:
        result = await sink.push(push([ioc("domain", "ok.example"), ioc("domain", " ")]))
        assert [value for value, _ in result.rejected] == [" "]
        assert "Please fill in this field" in result.rejected[0][1]
        alone = await sink.push(push([ioc("domain", "  ")]))
    assert [value for value, _ in alone.rejected] == ["  "]
    assert misp.values() == ["ok.example"]


async def test_sightings_for_added_values(misp: FakeMisp, tmp_path: Path) -> None:
    """With sightings on, each value added gets one sighting from ce-daemon; values already held none."""
    async with opened(MispSink, misp, tmp_path, sightings=True) as sink:
        await sink.push(push([ioc("domain", "s.example")]))
        await sink.push(push([ioc("domain", "s.example"), ioc("url", "http://s.example/")]))
    assert [(s["value"], s["type"], s["source"]) for s in misp.sightings] == [
        ("s.example", "0", "ce-daemon"),
        ("http://s.example/", "0", "ce-daemon"),
    ]


async def test_push_errors_refused_key_429_and_garbage(misp: FakeMisp, tmp_path: Path) -> None:
    """A refused key is an AuthError, 429 transient with Retry-After, a garbage answer transient."""
    async with opened(MispSink, misp, tmp_path) as sink:
        misp.fail_next(1, 429, retry_after=30)
        with pytest.raises(TransientError) as caught:
            await sink.push(push([ioc("domain", "x.example")]))
        assert caught.value.retry_after == 30.0
        misp.fail_next(1, 200, body=b"Maintenance")
        with pytest.raises(TransientError, match="not JSON: Maintenance"):
            await sink.push(push([ioc("domain", "x.example")]))
        misp.refuse_credentials()
        with pytest.raises(AuthError):
            await sink.push(push([ioc("domain", "x.example")]))
    assert misp.values() == []


async def test_odd_entries_in_the_event_index_are_passed_over(misp: FakeMisp, tmp_path: Path) -> None:
    """Index entries that are not events, or have no usable id or tags, never count as ours."""
    odd = [
        {"id": "\u00b2", "info": INFO, "EventTag": [{"Tag": {"name": TAG}}]},
        "x",
        {"id": "7", "info": INFO, "EventTag": 5},
    ]
    misp.fail_next(1, 200, body=orjson.dumps(odd))
    async with opened(MispSink, misp, tmp_path) as sink:
        await sink.push(push([ioc("domain", "a.example")]))
    assert misp.values(our_event(misp)) == ["a.example"]


async def test_round_trip_our_pushes_are_not_pulled_back(misp: FakeMisp, tmp_path: Path) -> None:
    """Pushed to MISP, then pulled with exclude_tags={tag}: none of the pushed values come back."""
    misp.add_event("feed", [attribute("domain", "feed.example", 30)])
    pushed = [ioc("domain", "shared.example"), ioc("url", "http://shared.example/"), ioc("sha256", "c" * 64)]
    async with opened(MispSink, misp, tmp_path) as sink:
        await sink.push(push(pushed))
    async with opened(MispSource, misp, tmp_path) as source:
        pages = await pull(source, exclude=[TAG])
        assert values(pages) == ["feed.example"]
        assert set(values(await pull(source))) == {"feed.example", *(i.value for i in pushed)}
