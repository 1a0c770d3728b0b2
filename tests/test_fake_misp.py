"""The fake MISP: restSearch filters and paging, events and attributes pushed, sightings, auth, faults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from ce_misp.fake import AUTH_FAILED, DEFAULT_KEY, FakeMisp

NOW = 1_700_000_000
HEADERS = {"Authorization": DEFAULT_KEY, "Accept": "application/json", "Content-Type": "application/json"}


@pytest.fixture
async def misp() -> AsyncIterator[FakeMisp]:
    fake = FakeMisp(clock=lambda: float(NOW))
    async with fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def post(
    session: aiohttp.ClientSession,
    misp: FakeMisp,
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with session.post(
        f"{misp.url}{path}", data=orjson.dumps(body), headers=headers or HEADERS
    ) as response:
        return response.status, orjson.loads(await response.read()), response.headers


def seed(misp: FakeMisp) -> None:
    """Two events: feed IOCs at three times, and one IOC ce-daemon pushed (tagged netskope-ce)."""
    misp.add_event(
        "feed",
        [
            {"type": "md5", "value": "a" * 32, "timestamp": NOW - 300, "Tag": [{"name": "tlp:white"}]},
            {"type": "url", "value": "http://evil.example/x", "timestamp": NOW - 200, "to_ids": False},
            {
                "type": "domain",
                "value": "evil.example",
                "timestamp": NOW - 100,
                "Tag": [{"name": "tlp:amber"}],
            },
        ],
        date="2023-11-10",
    )
    misp.add_event(
        "ce-daemon push", [{"type": "url", "value": "http://pushed.example/"}], tags=["netskope-ce"]
    )


def values(answer: dict[str, Any]) -> list[str]:
    return [attribute["value"] for attribute in answer["response"]["Attribute"]]


async def test_rest_search_filters_by_type_and_timestamp(
    session: aiohttp.ClientSession, misp: FakeMisp
) -> None:
    """``type`` and ``timestamp`` (a bound, a relative duration or a [from, to] pair) narrow the search."""
    seed(misp)
    _, answer, _ = await post(
        session, misp, "/attributes/restSearch", {"returnFormat": "json", "type": "url"}
    )
    assert values(answer) == ["http://evil.example/x", "http://pushed.example/"]
    _, answer, _ = await post(session, misp, "/attributes/restSearch", {"timestamp": NOW - 200})
    assert values(answer) == ["http://evil.example/x", "evil.example", "http://pushed.example/"]
    _, answer, _ = await post(
        session, misp, "/attributes/restSearch", {"attribute_timestamp": [NOW - 300, NOW - 200]}
    )
    assert values(answer) == ["a" * 32, "http://evil.example/x"]
    _, answer, _ = await post(
        session, misp, "/attributes/restSearch", {"timestamp": "150s", "type": ["domain"]}
    )
    assert values(answer) == ["evil.example"]


async def test_rest_search_answers_in_misp_shape(session: aiohttp.ClientSession, misp: FakeMisp) -> None:
    """Attributes carry string ids and timestamp, to_ids, tags and their event; X-Result-Count is set."""
    seed(misp)
    status, answer, headers = await post(session, misp, "/attributes/restSearch", {"type": "md5"})
    assert status == 200 and headers["X-Result-Count"] == "1"
    (attribute,) = answer["response"]["Attribute"]
    assert attribute["timestamp"] == str(NOW - 300) and attribute["event_id"] == "1"
    assert attribute["to_ids"] is True and attribute["category"] == "Payload delivery"
    assert attribute["Tag"] == [{"name": "tlp:white"}]
    assert attribute["Event"]["info"] == "feed"


async def test_rest_search_tags_include_and_exclude(session: aiohttp.ClientSession, misp: FakeMisp) -> None:
    """``tags`` includes any plain tag and excludes every ``!tag``, on attribute and event tags."""
    seed(misp)
    _, answer, _ = await post(session, misp, "/attributes/restSearch", {"tags": ["!netskope-ce"]})
    assert "http://pushed.example/" not in values(answer) and len(values(answer)) == 3
    _, answer, _ = await post(session, misp, "/attributes/restSearch", {"tags": ["tlp:white", "tlp:amber"]})
    assert values(answer) == ["a" * 32, "evil.example"]
    _, answer, _ = await post(session, misp, "/attributes/restSearch", {"tags": ["tlp:amber", "!tlp:amber"]})
    assert values(answer) == []


async def test_rest_search_to_ids_and_event_dates(session: aiohttp.ClientSession, misp: FakeMisp) -> None:
    """``to_ids`` and ``from``/``to`` (event dates) filter as MISP does."""
    seed(misp)
    _, answer, _ = await post(session, misp, "/attributes/restSearch", {"to_ids": 0})
    assert values(answer) == ["http://evil.example/x"]
    _, answer, _ = await post(
        session, misp, "/attributes/restSearch", {"from": "2023-11-10", "to": "2023-11-10"}
    )
    assert values(answer) == ["a" * 32, "http://evil.example/x", "evil.example"]


async def test_rest_search_pages(session: aiohttp.ClientSession, misp: FakeMisp) -> None:
    """``page`` (from 1) and ``limit`` walk the matches; a short page is the last one."""
    misp.add_event("many", [{"type": "domain", "value": f"d{n}.example"} for n in range(5)])
    pages = []
    for page in (1, 2, 3):
        _, answer, _ = await post(session, misp, "/attributes/restSearch", {"page": page, "limit": 2})
        pages.append(values(answer))
    assert pages == [["d0.example", "d1.example"], ["d2.example", "d3.example"], ["d4.example"]]
    status, answer, _ = await post(session, misp, "/attributes/restSearch", {"page": 0, "limit": 2})
    assert status == 400 and "page" in answer["message"]
    assert len(misp.searches) == 4


async def test_push_an_event_then_attributes(session: aiohttp.ClientSession, misp: FakeMisp) -> None:
    """``events/add`` creates an event, ``attributes/add`` appends to it, ``events/view`` shows it all."""
    event = {
        "Event": {
            "info": "ce-daemon",
            "Attribute": [
                {"type": "sha256", "value": "b" * 64, "to_ids": True, "Tag": [{"name": "netskope-ce"}]}
            ],
            "Tag": [{"name": "netskope-ce"}],
        }
    }
    status, answer, _ = await post(session, misp, "/events/add", event)
    assert status == 200
    event_id = answer["Event"]["id"]
    assert answer["Event"]["Attribute"][0]["timestamp"] == str(NOW)
    batch = [{"type": "url", "value": "http://x.example/"}, {"type": "ip-dst", "value": "192.0.2.7"}]
    status, answer, _ = await post(session, misp, f"/attributes/add/{event_id}", batch)
    assert status == 200 and [item["value"] for item in answer["Attribute"]] == [
        "http://x.example/",
        "192.0.2.7",
    ]
    status, answer, _ = await post(
        session, misp, f"/attributes/add/{event_id}", {"type": "md5", "value": "c" * 32}
    )
    assert status == 200 and answer["Attribute"]["category"] == "Payload delivery"
    async with session.get(f"{misp.url}/events/view/{event_id}", headers=HEADERS) as response:
        view = orjson.loads(await response.read())
    assert [a["value"] for a in view["Event"]["Attribute"]] == [
        "b" * 64,
        "http://x.example/",
        "192.0.2.7",
        "c" * 32,
    ]
    assert view["Event"]["Tag"] == [{"name": "netskope-ce"}]
    assert misp.values(int(event_id)) == ["b" * 64, "http://x.example/", "192.0.2.7", "c" * 32]


async def test_a_batch_saves_each_attribute_on_its_own(
    session: aiohttp.ClientSession, misp: FakeMisp
) -> None:
    """As MISP: the good attributes of a list are saved, the refused ones listed by position."""
    event = misp.add_event("e", [{"type": "domain", "value": "dup.example"}])
    batch = [
        {"type": "domain", "value": "dup.example"},
        {"type": "domain", "value": "new.example"},
        {"type": "nonsense", "value": "v"},
    ]
    status, answer, _ = await post(session, misp, f"/attributes/add/{event.id}", batch)
    assert status == 200 and answer["Attribute"]["value"] == "new.example"
    assert sorted(answer["errors"]) == ["attribute_0", "attribute_2"]
    status, answer, _ = await post(session, misp, f"/attributes/add/{event.id}", batch[:1] + batch[2:])
    assert (
        status == 403
        and answer["saved"] is False
        and sorted(answer["errors"]) == ["attribute_0", "attribute_1"]
    )
    assert misp.values() == ["dup.example", "new.example"]


async def test_events_index_finds_events_by_info_and_tags(
    session: aiohttp.ClientSession, misp: FakeMisp
) -> None:
    """``eventinfo`` is a case-insensitive substring (``|``, ``!``); ``tags`` match event tags."""
    misp.add_event("CE-daemon shared", tags=["netskope-ce"])
    misp.add_event("ce-daemon shared (old)")
    misp.add_event("feed")
    _, answer, _ = await post(session, misp, "/events/index", {"eventinfo": "ce-daemon shared"})
    assert [event["info"] for event in answer] == ["CE-daemon shared", "ce-daemon shared (old)"]
    _, answer, _ = await post(
        session, misp, "/events/index", {"eventinfo": "ce-daemon", "tags": ["netskope-ce"]}
    )
    assert [event["id"] for event in answer] == ["1"]
    assert answer[0]["EventTag"][0]["Tag"]["name"] == "netskope-ce" and answer[0]["threat_level_id"] == "4"
    _, answer, _ = await post(session, misp, "/events/index", {"eventinfo": "feed|!old"})
    assert [event["info"] for event in answer] == ["feed"]


async def test_soft_delete_and_search_of_deleted(session: aiohttp.ClientSession, misp: FakeMisp) -> None:
    """``attributes/delete`` soft-deletes (404 the second time); restSearch shows them only when asked."""
    seed(misp)
    status, answer, _ = await post(session, misp, "/attributes/delete/3", {})
    assert status == 200 and answer == {"message": "Attribute deleted."}
    status, answer, _ = await post(session, misp, "/attributes/delete/3", {})
    assert status == 404 and answer["message"] == "Invalid attribute"
    async with session.delete(f"{misp.url}/attributes/delete/99", headers=HEADERS) as response:
        assert response.status == 404
    _, answer, _ = await post(session, misp, "/attributes/restSearch", {"type": "domain"})
    assert values(answer) == []
    _, answer, _ = await post(session, misp, "/attributes/restSearch", {"type": "domain", "deleted": 1})
    assert values(answer) == ["evil.example"]
    _, answer, _ = await post(session, misp, "/attributes/restSearch", {"deleted": [0, 1], "eventid": 1})
    assert len(values(answer)) == 3
    async with session.get(f"{misp.url}/events/view/1", headers=HEADERS) as response:
        view = orjson.loads(await response.read())
    assert "evil.example" not in [a["value"] for a in view["Event"]["Attribute"]]


async def test_rest_search_order_and_context(session: aiohttp.ClientSession, misp: FakeMisp) -> None:
    """``order`` sorts as MISP's findOrder; ``includeContext`` adds the event's metadata and tags."""
    misp.add_event(
        "ctx",
        [
            {"type": "domain", "value": "late.example", "timestamp": NOW},
            {"type": "domain", "value": "early.example", "timestamp": NOW - 10},
        ],
        tags=["apt"],
        threat_level_id="2",
    )
    body = {"order": "Attribute.timestamp asc, id desc", "includeContext": 1, "includeEventTags": 1}
    _, answer, _ = await post(session, misp, "/attributes/restSearch", body)
    assert values(answer) == ["early.example", "late.example"]
    first = answer["response"]["Attribute"][0]
    assert first["Event"]["threat_level_id"] == "2" and first["Event"]["Tag"] == [{"name": "apt"}]
    assert first["Tag"] == [{"name": "apt", "inherited": 1}]
    _, answer, _ = await post(session, misp, "/attributes/restSearch", {"order": "nonsense asc"})
    assert answer["message"].startswith("Invalid order")


async def test_drop_after_apply_takes_effect_then_hangs_up(
    session: aiohttp.ClientSession, misp: FakeMisp
) -> None:
    """``drop_after_apply``: the request takes effect, its connection closes without an answer."""
    misp.drop_after_apply(1, after=1)
    async with session.get(f"{misp.url}/servers/getVersion", headers=HEADERS) as response:
        assert (await response.json())["version"]
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, misp, "/events/add", {"Event": {"info": "lost answer"}})
    assert [event.info for event in misp.events.values()] == ["lost answer"]


async def test_duplicate_and_bad_attributes_are_refused(
    session: aiohttp.ClientSession, misp: FakeMisp
) -> None:
    """The same type and value twice in one event, an unknown type or an unknown event: MISP's refusals."""
    event = misp.add_event("e", [{"type": "domain", "value": "dup.example"}])
    status, answer, _ = await post(
        session, misp, f"/attributes/add/{event.id}", {"type": "domain", "value": "dup.example"}
    )
    assert status == 403 and answer["saved"] is False
    assert answer["errors"]["value"] == ["A similar attribute already exists for this event."]
    status, answer, _ = await post(
        session, misp, f"/attributes/add/{event.id}", {"type": "nonsense", "value": "v"}
    )
    assert status == 403 and "type" in answer["errors"]
    status, answer, _ = await post(
        session, misp, "/attributes/add/99", {"type": "domain", "value": "x.example"}
    )
    assert status == 404 and answer["message"] == "Invalid event"
    assert misp.values() == ["dup.example"]


async def test_sightings(session: aiohttp.ClientSession, misp: FakeMisp) -> None:
    """``sightings/add`` records a sighting per matching attribute; none matching: 200, saved false."""
    seed(misp)
    body = {"values": ["evil.example"], "type": "1", "source": "ce-daemon", "timestamp": NOW}
    status, answer, _ = await post(session, misp, "/sightings/add", body)
    assert status == 200 and answer["saved"] is True
    assert misp.sightings == [
        {
            "id": "1",
            "attribute_id": "3",
            "event_id": "1",
            "value": "evil.example",
            "type": "1",
            "source": "ce-daemon",
            "date_sighting": str(NOW),
        }
    ]
    status, answer, _ = await post(session, misp, "/sightings/add", {"value": "unknown.example"})
    assert status == 200 and answer["saved"] is False and answer["errors"]


async def test_wrong_key_is_refused_with_misp_error(session: aiohttp.ClientSession, misp: FakeMisp) -> None:
    """A missing or wrong ``Authorization`` key is a 403 with MISP's body; nothing is stored."""
    for headers in ({"Accept": "application/json"}, {"Authorization": "wrong"}):
        status, answer, _ = await post(
            session, misp, "/events/add", {"Event": {"info": "x"}}, headers=headers
        )
        assert status == 403
        assert answer == {"name": AUTH_FAILED, "message": AUTH_FAILED, "url": "/events/add"}
    misp.refuse_credentials()
    status, _, _ = await post(session, misp, "/attributes/restSearch", {})
    assert status == 403
    assert misp.events == {}
    assert [request.status for request in misp.requests] == [403, 403, 403]


async def test_scripted_429_and_outage(session: aiohttp.ClientSession, misp: FakeMisp) -> None:
    """``fail_next`` answers a 429 with Retry-After; after ``stop`` and ``start_again`` it serves again."""
    seed(misp)
    misp.fail_next(1, 429, retry_after=7)
    status, answer, headers = await post(session, misp, "/attributes/restSearch", {})
    assert status == 429 and headers["Retry-After"] == "7" and answer["message"] == "Too Many Requests"
    await misp.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, misp, "/attributes/restSearch", {})
    await misp.start_again()
    status, answer, _ = await post(session, misp, "/attributes/restSearch", {"type": "md5"})
    assert status == 200 and values(answer) == ["a" * 32]
