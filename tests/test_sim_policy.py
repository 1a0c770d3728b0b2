"""The tenant simulator's policy lists: URL lists (create, append, replace, deploy, caps) and file hashes."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from ce_daemon.simulator.faults import Fault
from ce_daemon.simulator.policy_lists import URL_LIST_MAX_BYTES, URL_LIST_MAX_ENTRIES
from ce_daemon.simulator.process import simulator_process
from ce_daemon.simulator.tenant import DEFAULT_TOKEN, TOKEN_HEADER, TenantSimulator, running_simulator

AUTH = {TOKEN_HEADER: DEFAULT_TOKEN}
URLLIST = "/api/v2/policy/urllist"


class FrozenClock:
    """A monotonic clock that never moves: a rate window fills and stays full."""

    def __call__(self) -> float:
        return 100.0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def sim() -> AsyncIterator[TenantSimulator]:
    async with running_simulator(backlog=0, rate_limit=10_000) as simulator:
        yield simulator


async def call(
    session: aiohttp.ClientSession,
    simulator: TenantSimulator,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    """One request; the status, the answer (decoded when JSON, else text) and the headers."""
    data = None if body is None else io.BytesIO(orjson.dumps(body))  # large bodies: not raw bytes
    async with session.request(
        method, f"{simulator.url}{path}", data=data, headers=AUTH if headers is None else headers
    ) as response:
        raw = await response.read()
        answer = orjson.loads(raw) if response.content_type == "application/json" else raw.decode()
        return response.status, answer, response.headers


async def create(session: aiohttp.ClientSession, sim: TenantSimulator, name: str, urls: list[str]) -> int:
    status, answer, _ = await call(
        session, sim, "POST", URLLIST, {"name": name, "data": {"urls": urls, "type": "exact"}}
    )
    assert status == 200, answer
    return int(answer[0]["id"])


async def test_created_list_is_pending_until_deploy(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """A created list answers as the OAS says, holds its URLs as pending, and deploy applies them."""
    status, answer, _ = await call(
        session,
        sim,
        "POST",
        URLLIST,
        {"name": "ce-iocs", "data": {"urls": ["cedefaultpush.io"], "type": "exact"}},
    )
    assert status == 200
    assert answer[0]["name"] == "ce-iocs" and answer[0]["pending"] == 1
    assert answer[0]["data"] == {"type": "exact", "urls": ["cedefaultpush.io"]}
    assert answer[0]["modify_type"] == "Created"
    report = sim.policy.report()
    assert report["deploys"] == 0
    assert report["url_lists"][0]["pending_urls"] == ["cedefaultpush.io"]
    assert report["url_lists"][0]["deployed_urls"] == []
    status, applied, _ = await call(session, sim, "POST", f"{URLLIST}/deploy")
    assert status == 200
    assert applied[0]["pending"] == 0 and applied[0]["data"]["urls"] == ["cedefaultpush.io"]
    report = sim.policy.report()
    assert report["deploys"] == 1
    assert report["url_lists"][0]["deployed_urls"] == ["cedefaultpush.io"]


async def test_append_in_batches_then_one_deploy(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """Batches appended with PATCH …/append pile up as pending; the deployed content moves only at deploy."""
    list_id = await create(session, sim, "ce-iocs", ["cedefaultpush.io"])
    await call(session, sim, "POST", f"{URLLIST}/deploy")
    for batch in (["a.example.net", "b.example.net"], ["c.example.net/path"]):
        status, answer, _ = await call(
            session, sim, "PATCH", f"{URLLIST}/{list_id}/append", {"data": {"urls": batch, "type": "exact"}}
        )
        assert status == 200 and answer["modify_type"] == "Edited" and answer["pending"] == 1
    status, one, _ = await call(session, sim, "GET", f"{URLLIST}/{list_id}")
    assert status == 200
    assert one["data"]["urls"] == ["cedefaultpush.io", "a.example.net", "b.example.net", "c.example.net/path"]
    status, applied, _ = await call(session, sim, "GET", f"{URLLIST}?pending=0")
    assert applied[0]["data"]["urls"] == ["cedefaultpush.io"]
    status, pending, _ = await call(session, sim, "GET", f"{URLLIST}?pending=1&field=id&field=pending")
    assert pending == [{"id": list_id, "pending": 1}]
    await call(session, sim, "POST", f"{URLLIST}/deploy")
    report = sim.policy.report()
    assert report["deploys"] == 2
    assert report["url_lists"][0]["deployed_urls"] == one["data"]["urls"]
    assert report["url_lists"][0]["pending"] is False


async def test_replace_puts_new_urls_in_place(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """PATCH …/replace and PUT both replace the content (a retraction); PUT may rename the list."""
    list_id = await create(session, sim, "ce-iocs", ["a.example.net", "b.example.net"])
    status, answer, _ = await call(
        session,
        sim,
        "PATCH",
        f"{URLLIST}/{list_id}/replace",
        {"data": {"urls": ["b.example.net"], "type": "exact"}},
    )
    assert status == 200 and answer["data"]["urls"] == ["b.example.net"]
    status, answer, _ = await call(
        session,
        sim,
        "PUT",
        f"{URLLIST}/{list_id}",
        {"name": "renamed", "data": {"urls": [".*evil.*"], "type": "regex"}},
    )
    assert status == 200
    assert answer["name"] == "renamed" and answer["data"] == {"type": "regex", "urls": [".*evil.*"]}
    status, answer, _ = await call(
        session, sim, "PATCH", f"{URLLIST}/{list_id}/remove", {"data": {"urls": []}}
    )
    assert status == 400 and answer["status"] == "error"


async def test_duplicate_name_and_unknown_list_are_refused(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """A second list with the same name is a 400; an unknown id is a 404, in the API's error shape."""
    await create(session, sim, "ce-iocs", ["a.example.net"])
    status, answer, _ = await call(session, sim, "POST", URLLIST, {"name": "ce-iocs", "data": {"urls": []}})
    assert status == 400 and answer["errorCode"] == "Bad Request"
    status, answer, _ = await call(session, sim, "GET", f"{URLLIST}/999")
    assert status == 404
    assert answer == {
        "status": "error",
        "errorCode": "Not Found",
        "errors": ["URL list with id 999 not found"],
    }


async def test_deleted_list_goes_at_deploy(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """DELETE marks a list for deletion; the next deploy removes it."""
    list_id = await create(session, sim, "ce-iocs", ["a.example.net"])
    status, answer, _ = await call(session, sim, "DELETE", f"{URLLIST}/{list_id}")
    assert status == 200 and answer["modify_type"] == "Deleted"
    await call(session, sim, "POST", f"{URLLIST}/deploy")
    assert sim.policy.report()["url_lists"] == []


async def test_invalid_entries_are_reported_and_nothing_applied(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """An append with invalid URLs is refused whole, naming them, so the client can drop them and retry."""
    list_id = await create(session, sim, "ce-iocs", ["a.example.net"])
    batch = ["b.example.net", "has space.example", "", "c.example.net"]
    status, answer, _ = await call(
        session, sim, "PATCH", f"{URLLIST}/{list_id}/append", {"data": {"urls": batch, "type": "exact"}}
    )
    assert status == 400
    assert answer["invalid_urls"] == ["has space.example", ""]
    assert sim.policy.report()["url_lists"][0]["pending_urls"] == ["a.example.net"]
    valid = [url for url in batch if url not in answer["invalid_urls"]]
    status, _, _ = await call(
        session, sim, "PATCH", f"{URLLIST}/{list_id}/append", {"data": {"urls": valid, "type": "exact"}}
    )
    assert status == 200
    assert sim.policy.report()["url_lists"][0]["pending_urls"] == [
        "a.example.net",
        "b.example.net",
        "c.example.net",
    ]


async def test_bad_regex_is_an_invalid_entry(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """In a regex list, an entry that does not compile is invalid."""
    status, answer, _ = await call(
        session,
        sim,
        "POST",
        URLLIST,
        {"name": "rx", "data": {"urls": ["ok.*", "(unclosed"], "type": "regex"}},
    )
    assert status == 400 and answer["invalid_urls"] == ["(unclosed"]


async def test_append_over_the_entry_cap_is_refused(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """A list holds 300,000 entries: the append that would pass it is refused and the list is unchanged."""
    list_id = await create(
        session, sim, "ce-iocs", [f"h{n}.example" for n in range(URL_LIST_MAX_ENTRIES - 1)]
    )
    status, answer, _ = await call(
        session, sim, "PATCH", f"{URLLIST}/{list_id}/append", {"data": {"urls": ["x.example", "y.example"]}}
    )
    assert status == 400
    assert "300000" in answer["errors"][0]
    assert len(sim.policy.get(list_id).urls) == URL_LIST_MAX_ENTRIES - 1
    status, _, _ = await call(
        session, sim, "PATCH", f"{URLLIST}/{list_id}/append", {"data": {"urls": ["x.example"]}}
    )
    assert status == 200
    assert len(sim.policy.get(list_id).urls) == URL_LIST_MAX_ENTRIES


async def test_append_over_the_size_cap_is_refused(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """A list holds 7 MB of JSON-encoded URLs: the append that would pass it is refused."""
    long_urls = [
        f"{n:06d}.example/" + "p" * 1000 for n in range(URL_LIST_MAX_BYTES // 1018 - 1)
    ]  # 1,018 bytes each
    list_id = await create(session, sim, "ce-iocs", long_urls)
    status, answer, _ = await call(
        session,
        sim,
        "PATCH",
        f"{URLLIST}/{list_id}/append",
        {"data": {"urls": ["z.example/" + "p" * 1000] * 10}},
    )
    assert status == 400
    assert "7 MB" in answer["errors"][0]
    assert sim.policy.get(list_id).urls == long_urls


async def test_bad_token_is_refused(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """Without the right Netskope-Api-Token header every policy endpoint answers 401 and changes nothing."""
    for headers in ({}, {TOKEN_HEADER: "wrong"}):
        status, answer, _ = await call(
            session, sim, "POST", URLLIST, {"name": "x", "data": {"urls": ["a.example"]}}, headers=headers
        )
        assert status == 401 and answer["errorCode"] == "Unauthorized"
    status, _, _ = await call(session, sim, "POST", f"{URLLIST}/deploy", headers={TOKEN_HEADER: "wrong"})
    assert status == 401
    assert sim.policy.report() == {"deploys": 0, "url_lists": [], "file_hash_lists": {}}


async def test_stream_scoped_token_may_not_change_lists(session: aiohttp.ClientSession) -> None:
    """A token limited to some data-export streams is refused (403) on the policy endpoints."""
    async with running_simulator(backlog=0, tokens={"scoped": [("alerts", "dlp")]}) as simulator:
        status, answer, _ = await call(session, simulator, "GET", URLLIST, headers={TOKEN_HEADER: "scoped"})
    assert status == 403 and answer["errorCode"] == "Forbidden"


async def test_rate_limit_is_shared_with_dataexport(session: aiohttp.ClientSession) -> None:
    """The token's one rate window covers data export and policy calls: over it, a 429 with Retry-After."""
    async with running_simulator(backlog=0, rate_limit=2, monotonic=FrozenClock()) as simulator:
        async with session.get(
            f"{simulator.url}/api/v2/events/dataexport/alerts/malware?index=i&operation=head", headers=AUTH
        ) as response:
            assert response.status == 200
        status, _, _ = await call(session, simulator, "GET", URLLIST)
        assert status == 200
        status, answer, headers = await call(session, simulator, "POST", f"{URLLIST}/deploy")
        assert status == 429
        assert answer["errorCode"] == "Too Many Requests"
        assert int(headers["Retry-After"]) >= 1
        assert simulator.policy.deploys == 0
        stats = simulator.stats()
    assert stats.rate_limited == 1
    assert stats.responses == {200: 2, 429: 1}


async def test_file_hash_list_update(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """v1 updateFileHashList replaces the list; bad hashes, a repeat, a bad token: v1 errors (HTTP 200)."""
    md5, sha256 = "d" * 32, "E" * 64
    body = {"name": "ce-hashes", "list": f"{md5},{sha256}", "token": DEFAULT_TOKEN}
    status, answer, _ = await call(session, sim, "POST", "/api/v1/updateFileHashList", body, headers={})
    assert status == 200 and answer["status"] == "success"
    assert sim.policy.report()["file_hash_lists"] == {"ce-hashes": [md5, sha256]}
    status, answer, _ = await call(session, sim, "POST", "/api/v1/updateFileHashList", body, headers={})
    assert answer["status"] == "error" and answer["errors"] == ["Duplicate request, no change in file hashes"]
    bad = body | {"list": f"{md5},not-a-hash"}
    status, answer, _ = await call(session, sim, "POST", "/api/v1/updateFileHashList", bad, headers={})
    assert status == 200 and answer["status"] == "error" and answer["invalid_hashes"] == ["not-a-hash"]
    wrong = body | {"token": "wrong", "list": md5}
    status, answer, _ = await call(session, sim, "POST", "/api/v1/updateFileHashList", wrong, headers={})
    assert status == 200 and answer["status"] == "error" and "Invalid token" in answer["errors"][0]
    assert sim.policy.report()["file_hash_lists"] == {"ce-hashes": [md5, sha256]}


async def test_file_hash_list_size_cap(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """A file-hash list is at most 8 MB: a longer one is refused and the old list stays."""
    hashes = ",".join(f"{n:064x}" for n in range(8 * 1024 * 1024 // 65 + 1))
    body = {"name": "ce-hashes", "list": hashes, "token": DEFAULT_TOKEN}
    status, answer, _ = await call(session, sim, "POST", "/api/v1/updateFileHashList", body, headers={})
    assert status == 200 and answer["status"] == "error" and "8 MB" in answer["errors"][0]
    assert sim.policy.report()["file_hash_lists"] == {}


async def test_control_endpoint_and_process_show_the_lists() -> None:
    """``GET /_sim/lists`` on a simulator process shows deployed and pending entries and the deploys."""
    async with simulator_process({"backlog": 0}) as process, aiohttp.ClientSession() as session:
        headers = AUTH
        base = process.url
        async with session.post(
            f"{base}{URLLIST}",
            data=orjson.dumps({"name": "l", "data": {"urls": ["a.example"]}}),
            headers=headers,
        ) as response:
            list_id = orjson.loads(await response.read())[0]["id"]
        async with session.post(f"{base}{URLLIST}/deploy", headers=headers) as response:
            assert response.status == 200
        patch = orjson.dumps({"data": {"urls": ["b.example"]}})
        async with session.patch(
            f"{base}{URLLIST}/{list_id}/append", data=patch, headers=headers
        ) as response:
            assert response.status == 200
        report = await process.lists()
    assert report["deploys"] == 1
    (listed,) = report["url_lists"]
    assert listed["deployed_urls"] == ["a.example"]
    assert listed["pending_urls"] == ["a.example", "b.example"]
    assert listed["pending"] is True


async def test_scripted_faults_on_url_lists(session: aiohttp.ClientSession, sim: TenantSimulator) -> None:
    """A status or rate_limit fault refuses a change; a truncate fault applies it and loses the answer."""
    list_id = await create(session, sim, "ce-iocs", ["a.example"])
    sim.inject_policy(Fault("status", status=503))
    sim.inject_policy(Fault("rate_limit", retry_after=3))
    sim.inject_policy(Fault("truncate"))
    append = {"data": {"urls": ["b.example"]}}
    status, _, _ = await call(session, sim, "PATCH", f"{URLLIST}/{list_id}/append", append)
    assert status == 503
    status, _, headers = await call(session, sim, "PATCH", f"{URLLIST}/{list_id}/append", append)
    assert status == 429 and headers["Retry-After"] == "3"
    assert sim.policy.get(list_id).urls == ["a.example"]
    with pytest.raises(aiohttp.ClientError):
        await call(session, sim, "PATCH", f"{URLLIST}/{list_id}/append", append)
    assert sim.policy.get(list_id).urls == ["a.example", "b.example"]
    assert sim.pending_faults() == {}


async def test_policy_faults_through_the_control_endpoint(
    session: aiohttp.ClientSession, sim: TenantSimulator
) -> None:
    """``POST /_sim/faults`` with ``endpoint: policy`` queues a URL-list fault; other types are refused."""
    fault = {"endpoint": "policy", "fault": {"type": "status", "status": 500}}
    async with session.post(f"{sim.url}/_sim/faults", data=orjson.dumps(fault)) as response:
        assert response.status == 200
        assert (await response.json())["pending"]["policy"][0]["status"] == 500
    bad = {"endpoint": "policy", "fault": {"type": "malformed_json"}}
    async with session.post(f"{sim.url}/_sim/faults", data=orjson.dumps(bad)) as response:
        assert response.status == 400
    status, _, _ = await call(session, sim, "POST", f"{URLLIST}/deploy")
    assert status == 500 and sim.policy.deploys == 0
