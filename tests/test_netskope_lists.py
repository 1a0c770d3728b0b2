"""The Netskope list sinks against the tenant simulator: URL lists (v2, deploy) and file-hash lists (v1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from ce_netskope import NetskopeFileHashSink, NetskopeUrlListSink
from ce_netskope.filehash import FileHashListOptions
from ce_netskope.tenant import Answer
from ce_netskope.urllist import UrlListOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from ce_daemon.plugin import (
    AuthError,
    ComponentConfigError,
    PermanentError,
    PluginContext,
    Push,
    SharedIoc,
    TransientError,
)
from ce_daemon.registry import Registry
from ce_daemon.simulator.faults import Fault
from ce_daemon.simulator.policy_lists import (
    FILE_HASH_LIST_MAX_BYTES,
    URL_LIST_MAX_BYTES,
    URL_LIST_MAX_ENTRIES,
    PolicyLists,
    encoded_size,
)
from ce_daemon.simulator.tenant import DEFAULT_TOKEN, TenantSimulator, running_simulator
from ce_daemon.testing.fakes.base import FakeHttpServer

LIST = "ce-iocs"


def ioc(value: str, kind: str = "domain") -> SharedIoc:
    return SharedIoc(kind, value, "high", 9, 80, (), "", 0.0, 0.0, ("misp",))


def add(*values: str) -> Push:
    return Push(add=[ioc(v) for v in values], remove=[], full=False, tag="ce-daemon")


def remove(*values: str) -> Push:
    return Push(add=[], remove=[ioc(v) for v in values], full=False, tag="ce-daemon")


def full(*values: str) -> Push:
    return Push(add=[ioc(v) for v in values], remove=[], full=True, tag="ce-daemon")


def context(tmp_path: Path) -> PluginContext:
    return PluginContext(name="netskope", base_dir=tmp_path, data_dir=tmp_path)


class ScriptedUrlListSink(NetskopeUrlListSink):
    """The sink whose Nth request of a method (and path end) suffers a simulator fault, or runs an action."""

    simulator: TenantSimulator
    aims: list[tuple[str, str, int, Fault | Callable[[], object]]]

    async def call(self, method: str, path: str, body: object = None, **kwargs: Any) -> Answer:
        for position, (aim_method, aim_end, countdown, fault) in enumerate(self.aims):
            if aim_method == method and path.endswith(aim_end):
                if countdown == 1 and isinstance(fault, Fault):
                    self.simulator.inject_policy(fault)
                elif countdown == 1:
                    fault()
                self.aims[position] = (aim_method, aim_end, countdown - 1, fault)
        return await super().call(method, path, body, **kwargs)


@pytest.fixture
async def sim() -> AsyncIterator[TenantSimulator]:
    async with running_simulator(backlog=0, rate_limit=10_000) as simulator:
        yield simulator


UrlSinkFactory = Callable[..., Awaitable[ScriptedUrlListSink]]


@pytest.fixture
async def url_sink(sim: TenantSimulator, tmp_path: Path) -> AsyncIterator[UrlSinkFactory]:
    """Open URL-list sinks on the simulator (options as keywords), closed after the test."""
    opened: list[ScriptedUrlListSink] = []

    async def make(**options: Any) -> ScriptedUrlListSink:
        settings = {"url": sim.url, "token": DEFAULT_TOKEN, "list": LIST} | options
        sink = ScriptedUrlListSink(UrlListOptions.model_validate(settings), context(tmp_path))
        sink.simulator, sink.aims = sim, []
        await sink.open()
        opened.append(sink)
        return sink

    yield make
    for sink in opened:
        await sink.close()


def listed(sim: TenantSimulator, name: str = LIST) -> dict[str, Any]:
    (found,) = [item for item in sim.policy.report()["url_lists"] if item["name"] == name]
    return found


# -- registration and caps -----------------------------------------------------------------------


def test_both_sinks_are_registered_as_threat_sinks() -> None:
    """The entry points name both sinks in the threat_sinks group, and they load."""
    found = {p.name: p for p in Registry.discover().all() if p.kind == "threat_sink"}
    assert found["netskope_url_list"].cls is NetskopeUrlListSink
    assert found["netskope_file_hash_list"].cls is NetskopeFileHashSink


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=30))
def test_url_entry_size_counts_what_the_tenants_cap_counts(values: list[str]) -> None:
    """Σ entry_size ≤ max_bytes exactly when the JSON array the 7 MB cap measures fits."""
    sink = NetskopeUrlListSink(
        UrlListOptions(url="https://t.example", token=SecretStr("t"), list=LIST), context(Path())
    )
    assert sum(sink.entry_size(ioc(v)) for v in values) == encoded_size(values) - 1
    assert sink.max_bytes == URL_LIST_MAX_BYTES - 1
    assert sink.max_entries == URL_LIST_MAX_ENTRIES == 300_000
    assert sink.types == {"url", "domain", "hostname", "ipv4", "ipv6"} and sink.incremental


def test_a_list_filled_to_max_bytes_is_taken_and_one_byte_more_is_not() -> None:
    """At max_bytes by entry_size the tenant takes the list; one more byte it refuses."""
    sink = NetskopeUrlListSink(
        UrlListOptions(url="https://t.example", token=SecretStr("t"), list=LIST), context(Path())
    )
    assert sink.max_bytes is not None
    each = sink.entry_size(ioc("00000.example/" + "p" * 990))
    values = [f"{n:05d}.example/" + "p" * 990 for n in range(sink.max_bytes // each - 1)]
    left = sink.max_bytes - sum(sink.entry_size(ioc(v)) for v in values)
    values.append("z" * (left - 3))  # quotes and comma: exactly max_bytes
    assert sum(sink.entry_size(ioc(v)) for v in values) == sink.max_bytes
    PolicyLists().create({"name": "fits", "data": {"urls": values}})
    with pytest.raises(ValueError, match="7 MB"):
        PolicyLists().create({"name": "over", "data": {"urls": [*values[:-1], values[-1] + "z"]}})


def test_file_hash_caps_count_the_comma_joined_list() -> None:
    """The file-hash sink takes MD5 and SHA-256, whole lists, within 8 MB of comma-joined hashes."""
    sink = NetskopeFileHashSink(
        FileHashListOptions(url="https://t.example", token=SecretStr("t"), list="h"), context(Path())
    )
    hashes = ["a" * 32, "b" * 64, "c" * 64]
    assert sum(sink.entry_size(ioc(h, "sha256")) for h in hashes) == len(",".join(hashes)) + 1
    assert sink.max_bytes == FILE_HASH_LIST_MAX_BYTES
    assert sink.types == {"md5", "sha256"} and not sink.incremental


# -- URL lists: the happy path -------------------------------------------------------------------


async def test_first_push_creates_appends_in_batches_and_deploys_once(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """A new list is created with the first batch, the rest appended, then one deploy applies it all."""
    sink = await url_sink(batch=2)
    values = [f"h{n}.example" for n in range(5)]
    result = await sink.push(add(*values))
    assert result.rejected == []
    found = listed(sim)
    assert found["deployed_urls"] == values and found["pending"] is False
    assert sim.policy.deploys == 1
    assert sim.stats().requests["policy/urllist"] == 1 + 1 + 2  # list, create, two appends
    assert sim.stats().requests["policy/urllist/deploy"] == 1


async def test_second_push_appends_only_what_is_new(sim: TenantSimulator, url_sink: UrlSinkFactory) -> None:
    """Values already in the list are not sent again; a push with nothing new does not deploy."""
    sink = await url_sink()
    await sink.push(add("a.example", "b.example", "c.example"))
    await sink.push(add("b.example", "c.example", "d.example", "d.example", "e.example"))
    assert listed(sim)["deployed_urls"] == ["a.example", "b.example", "c.example", "d.example", "e.example"]
    assert sim.policy.deploys == 2
    await sink.push(add("a.example", "e.example"))
    assert sim.policy.deploys == 2


async def test_removal_replaces_the_list_and_removing_what_is_gone_changes_nothing(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """Removing present values replaces the list without them (with any additions); absent ones do nothing."""
    sink = await url_sink()
    await sink.push(add("a.example", "b.example", "c.example"))
    await sink.push(
        Push(add=[ioc("d.example")], remove=[ioc("b.example"), ioc("x.example")], full=False, tag="t")
    )
    assert listed(sim)["deployed_urls"] == ["a.example", "c.example", "d.example"]
    assert sim.policy.deploys == 2
    await sink.push(remove("b.example", "x.example"))
    assert sim.policy.deploys == 2
    await sink.push(remove("nothing.example"))
    assert sim.policy.report()["url_lists"][0]["deployed_urls"] == ["a.example", "c.example", "d.example"]


async def test_full_push_replaces_unless_the_list_already_is_it(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """A full push makes its values the list's whole content; the same list again is no change."""
    sink = await url_sink()
    await sink.push(add("a.example", "b.example"))
    await sink.push(full("b.example", "c.example"))
    assert listed(sim)["deployed_urls"] == ["b.example", "c.example"]
    await sink.push(full("c.example", "b.example"))
    assert sim.policy.deploys == 2


async def test_removal_on_a_missing_list_creates_nothing(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """A push with nothing to add to a list that does not exist neither creates it nor deploys."""
    sink = await url_sink()
    await sink.push(remove("a.example"))
    assert sim.policy.report() == {"deploys": 0, "url_lists": [], "file_hash_lists": {}}


async def test_deploy_false_leaves_the_changes_pending(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """With deploy off, pushes change the pending content only."""
    sink = await url_sink(deploy=False)
    await sink.push(add("a.example"))
    assert listed(sim)["pending_urls"] == ["a.example"] and sim.policy.deploys == 0


async def test_ip_addresses_and_urls_are_valid_entries(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """IPv4, IPv6 and URL values go into the list as they are."""
    sink = await url_sink()
    values = ["192.0.2.7", "2001:db8::1", "http://evil.example/path?q=1"]
    result = await sink.push(Push(add=[ioc(v, "url") for v in values], remove=[], full=False, tag="t"))
    assert result.rejected == [] and listed(sim)["deployed_urls"] == values


async def test_health_names_the_list_and_a_refused_token(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """Health is ok with the right token (the list need not exist) and not ok with a wrong one."""
    assert (await (await url_sink()).health()).ok
    health = await (await url_sink(token="wrong")).health()
    assert not health.ok and "401" in health.detail


# -- URL lists: refusals and invalid entries -----------------------------------------------------


async def test_invalid_entries_are_dropped_reported_and_the_rest_applied(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """Entries the tenant names invalid are left out, reported with a reason; the valid ones land."""
    sink = await url_sink(batch=2)
    result = await sink.push(add("has space.example", "a.example", "x" * 3000, "b.example"))
    assert [value for value, _ in result.rejected] == ["has space.example", "x" * 3000]
    assert all("invalid exact URL-list entry" in reason for _, reason in result.rejected)
    assert listed(sim)["deployed_urls"] == ["a.example", "b.example"]
    assert sim.policy.deploys == 1


async def test_a_bad_regex_is_rejected_in_a_regex_list(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """In a regex list a value that does not compile is rejected; a batch all invalid creates nothing."""
    sink = await url_sink(list_type="regex", batch=1)
    result = await sink.push(add("(unclosed", r"evil\.example"))
    assert [value for value, _ in result.rejected] == ["(unclosed"]
    found = listed(sim)
    assert found["type"] == "regex" and found["deployed_urls"] == [r"evil\.example"]


async def test_every_entry_invalid_creates_no_list(sim: TenantSimulator, url_sink: UrlSinkFactory) -> None:
    """A push of only invalid entries rejects them all and leaves the tenant as it was."""
    result = await (await url_sink()).push(add("a b", "c d"))
    assert len(result.rejected) == 2
    assert sim.policy.report()["url_lists"] == [] and sim.policy.deploys == 0


async def test_a_refusal_naming_no_entry_is_permanent(sim: TenantSimulator, url_sink: UrlSinkFactory) -> None:
    """A 400 without invalid entries (the tenant's own cap) is a PermanentError quoting the tenant."""
    sim.policy.create(
        {"name": LIST, "data": {"urls": [f"h{n}.example" for n in range(URL_LIST_MAX_ENTRIES - 1)]}}
    )
    with pytest.raises(PermanentError, match="300000"):
        await (await url_sink()).push(add("x.example", "y.example"))


async def test_wrong_or_scoped_token_is_an_auth_error(tmp_path: Path) -> None:
    """401 (unknown token) and 403 (a token scoped to some streams) raise AuthError; nothing changes."""
    async with running_simulator(
        backlog=0, tokens={DEFAULT_TOKEN: None, "scoped": [("alerts", "dlp")]}
    ) as sim:
        for token in ("wrong", "scoped"):
            options = UrlListOptions(url=sim.url, token=SecretStr(token), list=LIST)
            sink = NetskopeUrlListSink(options, context(tmp_path))
            try:
                with pytest.raises(AuthError):
                    await sink.push(add("a.example"))
            finally:
                await sink.close()
        assert sim.policy.report()["url_lists"] == []


async def test_long_rate_limit_is_a_transient_error_with_retry_after(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """A 429 asking for more than a short wait is raised with its Retry-After; nothing was applied."""
    sink = await url_sink()
    sim.inject_policy(Fault("rate_limit", retry_after=30))
    with pytest.raises(TransientError) as caught:
        await sink.push(add("a.example"))
    assert caught.value.retry_after == 30
    assert sim.policy.report()["url_lists"] == []


async def test_short_rate_limit_is_waited_out_inside_the_push(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """A 429 with Retry-After 0 is retried at once and the push goes through."""
    sink = await url_sink()
    sim.inject_policy(Fault("rate_limit", retry_after=0, count=2))
    await sink.push(add("a.example"))
    assert listed(sim)["deployed_urls"] == ["a.example"]


async def test_server_error_is_transient(sim: TenantSimulator, url_sink: UrlSinkFactory) -> None:
    """A 503 from the tenant is a TransientError."""
    sink = await url_sink()
    sim.inject_policy(Fault("status", status=503))
    with pytest.raises(TransientError, match="503"):
        await sink.push(add("a.example"))


# -- URL lists: lost answers and failed deploys --------------------------------------------------


async def test_lost_append_answer_then_replay_doubles_nothing_and_deploys_once(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """An append applied, its answer lost, fails the push; the replay appends only the rest, deploys once."""
    sink = await url_sink(batch=2)
    await sink.push(add("a.example"))
    sink.aims = [("PATCH", "/append", 2, Fault("truncate"))]
    values = [f"h{n}.example" for n in range(6)]
    with pytest.raises(TransientError):
        await sink.push(add(*values))
    assert listed(sim)["pending_urls"] == ["a.example", *values[:4]]
    await sink.push(add(*values))
    found = listed(sim)
    assert found["deployed_urls"] == ["a.example", *values]
    assert sim.policy.deploys == 2


async def test_lost_create_answer_makes_no_second_list(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """The create landed but its answer was lost: the replay finds the list, appends the rest, deploys."""
    sink = await url_sink(batch=2)
    sink.aims = [("POST", "/urllist", 1, Fault("truncate"))]
    values = ["a.example", "b.example", "c.example"]
    with pytest.raises(TransientError):
        await sink.push(add(*values))
    await sink.push(add(*values))
    (found,) = sim.policy.report()["url_lists"]
    assert found["deployed_urls"] == values and sim.policy.deploys == 1


async def test_a_list_created_meanwhile_by_another_is_used_not_doubled(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """The list appears between the look and the create: the refused create looks again and appends."""
    sink = await url_sink()
    other = {"name": LIST, "data": {"urls": ["a.example"]}}
    sink.aims = [("POST", "/urllist", 1, lambda: sim.policy.create(other))]
    await sink.push(add("a.example", "b.example"))
    (found,) = sim.policy.report()["url_lists"]
    assert found["deployed_urls"] == ["a.example", "b.example"] and sim.policy.deploys == 1


async def test_lost_deploy_answer_is_not_deployed_again(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """A deploy applied but its answer lost: the replay finds nothing pending and does not deploy."""
    sink = await url_sink()
    sink.aims = [("POST", "/deploy", 1, Fault("truncate"))]
    with pytest.raises(TransientError):
        await sink.push(add("a.example"))
    await sink.push(add("a.example"))
    assert listed(sim)["deployed_urls"] == ["a.example"] and sim.policy.deploys == 1


async def test_a_failed_deploy_is_made_by_the_next_push(
    sim: TenantSimulator, url_sink: UrlSinkFactory
) -> None:
    """A deploy refused leaves the list pending: the next push, even with nothing new, deploys it."""
    sink = await url_sink()
    sink.aims = [("POST", "/deploy", 1, Fault("status", status=503))]
    with pytest.raises(TransientError):
        await sink.push(add("a.example"))
    assert listed(sim)["pending"] is True and sim.policy.deploys == 0
    await sink.push(remove("nothing.example"))
    assert listed(sim)["deployed_urls"] == ["a.example"] and sim.policy.deploys == 1


# -- URL lists: hostile peers --------------------------------------------------------------------


class HostileTenant(FakeHttpServer):
    """Answers every request with what ``answer`` makes of it."""

    def __init__(self, answer: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        super().__init__()
        self.answer = answer

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.route("*", "/{tail:.*}", self.answer)]


async def hostile_push(
    tmp_path: Path,
    answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
    timeout: float = 5.0,
    then: Callable[[], object] = lambda: None,
) -> None:
    """Push to a tenant answering with ``answer``; ``then`` runs before the tenant stops (a release)."""
    async with HostileTenant(answer) as url:
        sink = NetskopeUrlListSink(
            UrlListOptions(url=url, token=SecretStr("t"), list=LIST, timeout=timeout), context(tmp_path)
        )
        try:
            await sink.push(add("a.example"))
        finally:
            then()
            await sink.close()


async def test_garbage_answers_are_transient(tmp_path: Path) -> None:
    """A listing that is not JSON, not an array, or a list without an id is a TransientError."""
    bodies = [b"<html>proxy</html>", b'{"lists": []}', orjson.dumps([{"name": LIST, "id": "x"}])]
    for body in bodies:

        async def answer(request: web.Request, body: bytes = body) -> web.Response:
            return web.Response(body=body, content_type="application/json")

        with pytest.raises(TransientError):
            await hostile_push(tmp_path, answer)


async def test_an_oversize_answer_is_not_read(tmp_path: Path) -> None:
    """An answer longer than the sink reads is refused as a TransientError."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b" " * 1024**2
        for _ in range(17):
            await response.write(chunk)
        return response

    with pytest.raises(TransientError, match="more than"):
        await hostile_push(tmp_path, answer)


async def test_no_answer_in_time_is_transient(tmp_path: Path) -> None:
    """A tenant that never answers is a TransientError after the timeout."""
    never = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    with pytest.raises(TransientError, match="no answer in time"):
        await hostile_push(tmp_path, answer, timeout=0.5, then=never.set)


async def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    """A 302 (the token would follow it) is a configuration error naming where it pointed."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "https://elsewhere.example/"})

    with pytest.raises(ComponentConfigError, match="elsewhere"):
        await hostile_push(tmp_path, answer)


# -- file-hash lists ----------------------------------------------------------------------------


@pytest.fixture
async def hash_sink(
    sim: TenantSimulator, tmp_path: Path
) -> AsyncIterator[Callable[..., NetskopeFileHashSink]]:
    opened: list[NetskopeFileHashSink] = []

    def make(**options: Any) -> NetskopeFileHashSink:
        settings = {"url": sim.url, "token": DEFAULT_TOKEN, "list": "ce-hashes"} | options
        sink = NetskopeFileHashSink(FileHashListOptions.model_validate(settings), context(tmp_path))
        opened.append(sink)
        return sink

    yield make
    for sink in opened:
        await sink.close()


MD5, SHA256 = "d" * 32, "e" * 64


async def test_file_hash_push_replaces_the_list_and_a_replay_is_a_success(
    sim: TenantSimulator, hash_sink: Callable[..., NetskopeFileHashSink]
) -> None:
    """Each push replaces the whole list; the same list again ("Duplicate request") succeeds."""
    sink = hash_sink()
    await sink.push(full(MD5, SHA256))
    assert sim.policy.report()["file_hash_lists"] == {"ce-hashes": [MD5, SHA256]}
    assert (await sink.push(full(MD5, SHA256))).rejected == []
    await sink.push(full(SHA256))
    assert sim.policy.report()["file_hash_lists"] == {"ce-hashes": [SHA256]}


async def test_file_hash_invalid_hashes_are_dropped_and_reported(
    sim: TenantSimulator, hash_sink: Callable[..., NetskopeFileHashSink]
) -> None:
    """Hashes the tenant names invalid (a SHA-1 among them) are rejected; the rest is the list."""
    sha1 = "a" * 40
    result = await hash_sink().push(full(MD5, sha1, SHA256))
    assert [value for value, _ in result.rejected] == [sha1]
    assert "invalid file hash" in result.rejected[0][1]
    assert sim.policy.report()["file_hash_lists"] == {"ce-hashes": [MD5, SHA256]}


async def test_file_hash_wrong_token_in_a_200_is_an_auth_error(
    sim: TenantSimulator, hash_sink: Callable[..., NetskopeFileHashSink]
) -> None:
    """v1 refuses a token with HTTP 200 and status error: AuthError, and health says so."""
    sink = hash_sink(token="wrong")
    with pytest.raises(AuthError, match="Invalid token"):
        await sink.push(full(MD5))
    assert not (await sink.health()).ok
    assert (await hash_sink().health()).ok
    assert sim.policy.report()["file_hash_lists"] == {}


async def test_file_hash_over_the_cap_is_permanent(
    sim: TenantSimulator, hash_sink: Callable[..., NetskopeFileHashSink]
) -> None:
    """The tenant's 8 MB refusal (a 200 with status error) is a PermanentError."""
    hashes = [f"{n:064x}" for n in range(FILE_HASH_LIST_MAX_BYTES // 65 + 1)]
    with pytest.raises(PermanentError, match="8 MB"):
        await hash_sink().push(full(*hashes))


async def test_file_hash_rate_limit_is_transient(tmp_path: Path) -> None:
    """A 429 on the v1 call asking for a long wait is a TransientError with its Retry-After."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"status": "error"}, status=429, headers={"Retry-After": "30"})

    async with HostileTenant(answer) as url:
        sink = NetskopeFileHashSink(
            FileHashListOptions(url=url, token=SecretStr("t"), list="h"), context(tmp_path)
        )
        try:
            with pytest.raises(TransientError) as caught:
                await sink.push(full(MD5))
        finally:
            await sink.close()
    assert caught.value.retry_after == 30


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("Service temporarily unavailable, try again later", TransientError),
        ("Unauthorized", AuthError),
        ("List name is too long", PermanentError),
    ],
)
async def test_file_hash_errors_are_classified_by_their_words(
    tmp_path: Path, message: str, error: type[Exception]
) -> None:
    """A v1 error in a 200 is transient when it says busy, auth when about access, else permanent."""

    async def answer(request: web.Request) -> web.Response:
        body = {"status": "error", "errorCode": "General Error", "errors": [message]}
        return web.json_response(body)

    async with HostileTenant(answer) as url:
        sink = NetskopeFileHashSink(
            FileHashListOptions(url=url, token=SecretStr("t"), list="h"), context(tmp_path)
        )
        try:
            with pytest.raises(error):
                await sink.push(full(MD5))
        finally:
            await sink.close()


# -- the property: whatever the pushes and lost answers, the deployed list is the set ----------

VALUES = [f"v{n}.example" for n in range(8)]
operations = st.tuples(
    st.sampled_from(["add", "remove", "full"]),
    st.sets(st.sampled_from(VALUES), max_size=5),
    st.none() | st.tuples(st.sampled_from(["GET", "POST", "PATCH"]), st.integers(1, 3)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operations, min_size=1, max_size=6), st.integers(1, 3))
def test_pushes_with_lost_answers_deploy_the_set_model(
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[str, set[str], tuple[str, int] | None]],
    batch: int,
) -> None:
    """Any add/remove/full pushes, replayed after a lost answer, deploy exactly the model set, once each."""
    asyncio.run(_run_model(steps, batch, tmp_path_factory.mktemp("model")))


async def _run_model(
    steps: list[tuple[str, set[str], tuple[str, int] | None]], batch: int, tmp: Path
) -> None:
    async with running_simulator(backlog=0, rate_limit=10_000) as sim:
        options = UrlListOptions(url=sim.url, token=SecretStr(DEFAULT_TOKEN), list=LIST, batch=batch)
        sink = ScriptedUrlListSink(options, context(tmp))
        sink.simulator, sink.aims = sim, []
        model: set[str] = set()
        try:
            for kind, values, lost in steps:
                ordered = sorted(values)
                push = {"add": add, "remove": remove, "full": full}[kind](*ordered)
                before, deploys = set(model), sim.policy.deploys
                model = model - values if kind == "remove" else values if kind == "full" else model | values
                if lost is not None:
                    sink.aims = [(lost[0], "", lost[1], Fault("truncate"))]
                try:
                    await sink.push(push)
                except TransientError:
                    await sink.push(push)  # the core pushes again whole
                sink.aims = []
                lists = sim.policy.report()["url_lists"]
                deployed = lists[0]["deployed_urls"] if lists else []
                assert len(lists) <= 1
                assert sorted(deployed) == sorted(model), (kind, values)
                assert len(deployed) == len(set(deployed))
                assert sim.policy.deploys - deploys == (1 if model != before else 0)
        finally:
            await sink.close()
