"""The HTTP API against the running demo (the simulator, every job wired): every GET route answers what
its OpenAPI document says (each answer validated against the route's JSON schema), path parameters
taken from what the lists return; bad parameters are a 400 naming them, unknown items a 404; the
write routes refuse a bad request and take a good one; arbitrary query strings never make a 5xx."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from ce_daemon.access.credentials import parse_token
from ce_daemon.demo import DEMO_LIST_TOKEN, DEMO_TOKEN
from ce_daemon.testing.demo import DemoProcess
from ce_daemon.testing.pipelines import run_cli


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as answer:
        return answer.status, await answer.json(content_type=None)


async def until_listed(session: aiohttp.ClientSession, base: str, path: str, key: str) -> list[Any]:
    """The first non-empty ``key`` list ``path`` answers (the demo fills its state within seconds)."""
    async with asyncio.timeout(90):
        while True:
            status, body = await get(session, base + path)
            if status == 200 and body[key]:
                return list(body[key])
            await asyncio.sleep(1)


def _pattern(path: str) -> str:
    """A regular expression matching the concrete paths of an OpenAPI path template."""
    return re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path))


def check(document: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """``body`` is what the document says ``path`` answers with ``status``."""
    answers = document["paths"][path][method]["responses"]
    assert str(status) in answers, (path, status, body)
    schema = answers[str(status)]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    errors = sorted(Draft202012Validator(schema).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, (path, [f"{list(e.path)}: {e.message}" for e in errors[:5]])


@pytest.mark.timeout(300)
async def test_every_route_answers_what_the_openapi_document_says(demo: DemoProcess) -> None:
    base = demo.url + "api/v1"
    async with aiohttp.ClientSession(headers=demo.headers) as session:
        status, document = await get(session, base + "/openapi.json")
        assert status == 200 and document["openapi"].startswith("3.1")
        Draft202012Validator.check_schema({"$defs": document["components"]["schemas"]})
        gets = {p for p, ops in document["paths"].items() if "get" in ops}
        assert {"/api/v1/status", "/api/v1/logs/routes", "/api/v1/threats/iocs", "/api/v1/tickets/tickets",
                "/api/v1/risk/entities", "/api/v1/risk/trend"} <= gets  # fmt: skip
        iocs = await until_listed(session, base, "/threats/iocs?limit=5", "iocs")
        tickets = await until_listed(session, base, "/tickets/tickets?limit=5", "tickets")
        entities = await until_listed(session, base, "/risk/entities?limit=5&type=device", "entities")
        filled = {
            "{value}": quote(iocs[0]["value"], safe=""), "{ticket}": str(tickets[0]["id"]),
            "{type}": entities[0]["type"], "{key}": quote(entities[0]["key"], safe=""),
        }  # fmt: skip
        parsed = parse_token(demo.token)
        assert parsed is not None
        # The token's secret part too (its own text may hold "_": it is everything after the id).
        secrets = (DEMO_TOKEN, DEMO_LIST_TOKEN, demo.password, demo.token, parsed[1])
        for path in sorted(gets):
            url = path
            for placeholder, value in filled.items():
                url = url.replace(placeholder, value)
            status, body = await get(session, demo.url + url.removeprefix("/"))
            assert status == 200, (url, status, body)
            check(document, path, "get", status, body)
            text = json.dumps(body)
            assert not [s for s in secrets if s in text], url  # no answer carries a secret
        # the lists' filters hold
        for kind in ("user", "device", "application"):
            status, body = await get(session, f"{base}/risk/entities?type={kind}&limit=50")
            assert status == 200 and body["entities"] and {e["type"] for e in body["entities"]} == {kind}
        status, body = await get(session, f"{base}/tickets/tickets?sort=rule&limit=50")
        assert [t["rule"] for t in body["tickets"]] == sorted(t["rule"] for t in body["tickets"])
        status, body = await get(session, f"{base}/threats/iocs?type=md5&status=active&limit=50")
        assert body["iocs"] and {(i["type"], i["active"]) for i in body["iocs"]} == {("md5", True)}
        # what is wrong is said, with the right status
        for url, expected, words in (
            ("/risk/entities?limit=x", 400, "'limit' must be a whole number"),
            ("/risk/entities?limit=0", 400, "'limit' must be at least 1"),
            ("/risk/entities?type=robot", 400, "'type' must be one of"),
            ("/risk/entities?limit=1&limit=2", 400, "given 2 times"),
            ("/risk/entities/user/nobody%40example.com", 404, "no user 'nobody@example.com'"),
            ("/tickets/tickets/999999999", 404, "no ticket"),
            ("/threats/iocs/never.example.org", 404, "is not stored"),
            ("/risk/what-if?weight=nope=2", 400, "no source named 'nope'"),
            ("/logs/dead-letters?route=nope", 404, "no route named 'nope'"),
        ):
            status, body = await get(session, base + url)
            assert status == expected and words in body["error"], (url, status, body)
            path = next(
                p for p in document["paths"] if re.fullmatch(_pattern(p), "/api/v1" + url.split("?")[0])
            )
            check(document, path, "get", status, body)
        # the write routes: a bad request is refused, a good one is done
        async with session.post(f"{base}/risk/actions/approve") as answer:
            assert answer.status == 400 and "all=true" in (await answer.json())["error"]
        async with session.post(f"{base}/risk/actions/approve?all=true") as answer:
            assert answer.status == 200
            check(document, "/api/v1/risk/actions/approve", "post", 200, await answer.json())
        async with session.post(f"{base}/tickets/tickets/{tickets[0]['id']}/approve") as answer:
            body = await answer.json()
            assert answer.status == 409 and "not waiting for approval" in body["error"], body
        async with session.post(f"{base}/logs/dead-letters/purge") as answer:
            assert answer.status == 200
            check(document, "/api/v1/logs/dead-letters/purge", "post", 200, await answer.json())
        async with session.get(f"{base}/risk/actions/approve") as answer:
            assert answer.status == 405  # a write is never a GET


_NAMES = [
    "limit",
    "type",
    "band",
    "source",
    "status",
    "sort",
    "days",
    "weight",
    "value",
    "since",
    "id",
    "all",
]
_QUERY = st.dictionaries(
    st.sampled_from([*_NAMES, "outcome", "rule", "key"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30),
    max_size=4,
)  # fmt: skip


@pytest.mark.timeout(300)
async def test_arbitrary_query_strings_never_make_a_server_error(demo: DemoProcess) -> None:
    base = demo.url + "api/v1"
    async with aiohttp.ClientSession(headers=demo.headers) as session:
        _, document = await get(session, base + "/openapi.json")
        paths = sorted(p for p, ops in document["paths"].items() if "get" in ops and "{" not in p)

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(paths), _QUERY)
        def probe(path: str, query: dict[str, str]) -> None:
            async def one() -> None:
                async with session.get(demo.url + path.removeprefix("/"), params=query) as answer:
                    body = await answer.json(content_type=None)
                    assert answer.status in (200, 400, 404), (path, query, answer.status, body)
                    check(document, path, "get", answer.status, body)

            future = asyncio.run_coroutine_threadsafe(one(), loop)
            future.result(timeout=60)

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(probe)


@pytest.mark.timeout(300)
async def test_every_route_refuses_no_credential_and_a_lower_role(demo: DemoProcess) -> None:
    base = demo.url + "api/v1"
    code, out = await run_cli(
        "token",
        "create",
        "api-viewer",
        "--role",
        "viewer",
        "-c",
        str(demo.directory / "pipeline.yaml"),
        env={},
    )
    assert code == 0, out
    token = next(word for word in out.split() if word.startswith("ced_"))
    viewer = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        _, document = await get_as(session, base + "/openapi.json", demo.headers)
        # refusals are throttled per client address: each pair of refused requests comes from its own
        for n, (path, method, role) in enumerate(
            (p, m, o["x-role"]) for p, ops in document["paths"].items() for m, o in ops.items()
        ):
            url = demo.url + re.sub(r"\{\w+\}", "1", path).removeprefix("/")
            connector = aiohttp.TCPConnector(local_addr=(f"127.0.{1 + n // 250}.{1 + n % 250}", 0))
            async with aiohttp.ClientSession(connector=connector) as stranger:
                async with stranger.request(method, url) as answer:
                    assert answer.status == 401, (method, path, answer.status)
                    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
                async with stranger.request(
                    method, url, headers={"Authorization": "Bearer ced_0_wrong"}
                ) as answer:
                    assert answer.status == 401, (method, path, answer.status)
            if role != "viewer":
                async with session.request(method, url, headers=viewer) as answer:
                    assert answer.status == 403, (method, path, answer.status)
        status, body = await get_as(session, base + "/risk/trend", viewer)
        assert status == 200 and "types" in body
        async with session.get(demo.url + "ui/", allow_redirects=False) as answer:
            assert answer.status == 303 and answer.headers["Location"].startswith("/login?next=")


async def get_as(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with session.get(url, headers=headers) as answer:
        return answer.status, await answer.json(content_type=None)
