"""The ``splunk_hec`` log sink against a fake HTTP Event Collector on loopback."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from ce_splunk import SplunkHecOptions, SplunkHecSink
from ce_splunk.fake import FakeSplunk

from ce_daemon.errors import AuthError, ComponentConfigError, PermanentError, TransientError
from ce_daemon.plugin import OutRecord, PluginContext
from ce_daemon.testing.pipelines import ship_backlog
from ce_daemon.testing.sinks import assert_tls_verified, attempt, closed_port, open_sink
from ce_daemon.testing.tls import self_signed_tls

TOKEN = "11111111-2222-3333-4444-555555555555"


def cef(i: int, kind: str = "alerts", subtype: str = "dlp") -> OutRecord:
    line = f'CEF:0|Netskope|demo|1.0|{subtype}|alert {i}|5|suser=user{i}@example.com msg=caf\u00e9 "q"'
    return OutRecord(f"cef-{i}", 1_700_000_000 + i, line.encode(), kind, subtype, "cef")


def js(i: int, kind: str = "events", subtype: str = "page", **extra: Any) -> OutRecord:
    data = orjson.dumps({"_id": f"js-{i}", "timestamp": 1_700_000_000 + i, "user": f"u{i}", **extra})
    return OutRecord(f"js-{i}", 1_700_000_000 + i, data, kind, subtype, "json")


def hec_sink(tmp_path: Path, url: str, **options: Any) -> AbstractAsyncContextManager[SplunkHecSink]:
    return open_sink(SplunkHecSink, {"url": url, "token": TOKEN, **options}, tmp_path, "splunk")


@pytest.fixture
async def splunk() -> AsyncIterator[FakeSplunk]:
    fake = FakeSplunk(tokens=[TOKEN])
    async with fake:
        yield fake


async def test_envelopes_carry_time_metadata_and_the_event(tmp_path: Path, splunk: FakeSplunk) -> None:
    """Concatenated envelopes: JSON records as `event` objects, CEF lines as strings, sourcetype by kind."""
    options = {
        "index": "netskope",
        "source": "ce-daemon",
        "host": "collector-1",
        "fields": {"tenant": "demo"},
    }
    async with hec_sink(tmp_path, splunk.url, **options) as sink:
        result = await sink.send([cef(1), js(2)])
    assert list(result.rejected) == []
    common = {"index": "netskope", "source": "ce-daemon", "host": "collector-1", "fields": {"tenant": "demo"}}
    assert splunk.events == [
        {"time": 1_700_000_001, "sourcetype": "netskope:alert", **common, "event": cef(1).data.decode()},
        {"time": 1_700_000_002, "sourcetype": "netskope:event", **common, "event": orjson.loads(js(2).data)},
    ]
    request = splunk.requests[-1]
    assert request.path == "/services/collector/event"
    assert request.headers["Authorization"] == f"Splunk {TOKEN}"
    assert request.headers["Content-Encoding"] == "gzip"
    assert not request.body.startswith(b"[")  # concatenated envelopes, not a JSON array


async def test_fixed_sourcetype_and_full_endpoint_url(tmp_path: Path, splunk: FakeSplunk) -> None:
    """A fixed `sourcetype` applies to every kind; a URL given with the endpoint path still works."""
    async with hec_sink(
        tmp_path, f"{splunk.url}/services/collector/event", sourcetype="netskope:all"
    ) as sink:
        await sink.send([cef(1), js(2)])
    assert [event["sourcetype"] for event in splunk.events] == ["netskope:all", "netskope:all"]


async def test_large_batch_is_split_under_max_request_bytes(tmp_path: Path, splunk: FakeSplunk) -> None:
    """Envelopes over `max_request_bytes` go in several requests within the cap, none lost or reordered."""
    batch = [js(i, pad="p" * 400) for i in range(300)]
    async with hec_sink(tmp_path, splunk.url, max_request_bytes=20_000) as sink:
        await sink.send(batch)
    assert len(splunk.requests) > 5
    assert all(len(request.body) <= 20_000 for request in splunk.requests)
    assert [event["event"]["_id"] for event in splunk.events] == [f"js-{i}" for i in range(300)]


async def test_413_halves_until_the_collector_accepts(tmp_path: Path) -> None:
    """A collector with a smaller `max_content_length` answers 413: requests are halved; all arrive once."""
    fake = FakeSplunk(tokens=[TOKEN], max_content_length=2_000)
    batch = [
        js(i, pad=random.Random(i).randbytes(200).hex()) for i in range(40)
    ]  # gzip cannot shrink it much
    async with fake as url, hec_sink(tmp_path, url) as sink:
        result = await sink.send(batch)
    assert list(result.rejected) == []
    assert any(request.status == 413 for request in fake.requests)
    assert [event["event"]["_id"] for event in fake.events] == [f"js-{i}" for i in range(40)]


async def test_invalid_event_is_rejected_alone_and_the_rest_sent_once(
    tmp_path: Path, splunk: FakeSplunk
) -> None:
    """Code 6 + invalid-event-number: that record is rejected; those before are not resent, the rest are."""
    splunk.refuse_when = lambda envelope: envelope["event"].get("user") == "u3"
    batch = [js(i) for i in range(8)]
    async with hec_sink(tmp_path, splunk.url) as sink:
        result = await sink.send(batch)
    assert [index for index, _ in result.rejected] == [3]
    assert "code 6" in result.rejected[0][1] and "Invalid data format" in result.rejected[0][1]
    assert [event["event"]["_id"] for event in splunk.events] == [f"js-{i}" for i in range(8) if i != 3]


async def test_malformed_json_record_is_rejected_by_its_event_number(
    tmp_path: Path, splunk: FakeSplunk
) -> None:
    """A JSON record that is not valid JSON breaks only its own envelope: it alone is rejected."""
    broken = OutRecord("bad", 1_700_000_000, b'{"user": ', "events", "page", "json")
    async with hec_sink(tmp_path, splunk.url) as sink:
        result = await sink.send([js(0), js(1), broken, js(3)])
    assert [index for index, _ in result.rejected] == [2]
    assert [event["event"]["_id"] for event in splunk.events] == ["js-0", "js-1", "js-3"]


async def test_server_busy_with_retry_after_is_transient(tmp_path: Path, splunk: FakeSplunk) -> None:
    """503 code 9 "Server is busy" with Retry-After raises TransientError(retry_after)."""
    splunk.fail_next(1, 503, retry_after=12)
    async with hec_sink(tmp_path, splunk.url) as sink:
        with pytest.raises(TransientError, match="code 9") as caught:
            await sink.send([js(1)])
    assert caught.value.retry_after == 12


@pytest.mark.parametrize(
    ("token", "code"),
    [("not-a-known-token", 4), ("disabled-token", 1)],
)
async def test_refused_tokens_raise_auth_error(tmp_path: Path, token: str, code: int) -> None:
    """Invalid (403 code 4) and disabled (403 code 1) tokens are AuthErrors that never show the token."""
    fake = FakeSplunk(tokens=[TOKEN], disabled_tokens=["disabled-token"])
    async with fake as url:
        sink = SplunkHecSink(
            SplunkHecOptions.model_validate({"url": url, "token": token}),
            PluginContext(name="splunk", base_dir=tmp_path, data_dir=tmp_path),
        )
        try:
            with pytest.raises(AuthError, match=f"code {code}") as caught:
                await sink.send([js(1)])
            health = await sink.health()
        finally:
            await sink.close()
    assert token not in str(caught.value)
    assert not health.ok and "token" in health.detail and token not in health.detail
    assert token not in repr(sink.options)


async def test_missing_authorization_is_auth_error(tmp_path: Path, splunk: FakeSplunk) -> None:
    """A 401 code 2 (token required), as a proxy stripping the header would cause, is an AuthError."""
    splunk.fail_next(1, 401)
    async with hec_sink(tmp_path, splunk.url) as sink:
        with pytest.raises(AuthError, match="code 2"):
            await sink.send([js(1)])


async def test_incorrect_index_stops_the_route_instead_of_dead_lettering(tmp_path: Path) -> None:
    """Code 7 "Incorrect index" is a settings problem: ComponentConfigError, with a hint."""
    fake = FakeSplunk(tokens=[TOKEN], indexes=["main"])
    async with fake as url, hec_sink(tmp_path, url, index="netskpoe") as sink:
        with pytest.raises(ComponentConfigError, match=r"code 7.*index"):
            await sink.send([js(1)])


async def test_no_data_is_permanent(tmp_path: Path, splunk: FakeSplunk) -> None:
    """A 400 without an event number (code 5 "No data" here) raises PermanentError."""
    splunk.fail_next(1, 400, body=b'{"text":"No data","code":5}')
    async with hec_sink(tmp_path, splunk.url) as sink:
        with pytest.raises(PermanentError, match="code 5"):
            await sink.send([js(1)])


async def test_acknowledgement_waits_until_indexed(tmp_path: Path) -> None:
    """With acknowledgement, the channel header is sent and `send` returns only after the ack turned true."""
    fake = FakeSplunk(tokens=[TOKEN], ack=True)
    fake.ack_after_polls = 2
    async with fake as url, hec_sink(tmp_path, url, acknowledgement=True, max_request_bytes=5_000) as sink:
        await sink.send([js(i, pad="a" * 300) for i in range(30)])
    events = [request for request in fake.requests if request.path == "/services/collector/event"]
    assert len(events) > 1 and all("X-Splunk-Request-Channel" in request.headers for request in events)
    assert fake.ack_polls == 3
    assert len(fake.events) == 30


async def test_acknowledgement_timeout_is_transient(tmp_path: Path) -> None:
    """Acks that never turn true within `ack_timeout` raise TransientError (the batch is resent)."""
    fake = FakeSplunk(tokens=[TOKEN], ack=True)
    fake.acks_lost = True
    async with fake as url, hec_sink(tmp_path, url, acknowledgement=True, ack_timeout=0.3) as sink:
        with pytest.raises(TransientError, match="did not confirm"):
            await sink.send([js(1)])
    assert fake.ack_polls >= 1


async def test_token_with_ack_but_sink_without_is_a_config_error(tmp_path: Path) -> None:
    """A token that requires acknowledgement answers code 10: ComponentConfigError naming the setting."""
    fake = FakeSplunk(tokens=[TOKEN], ack=True)
    async with fake as url, hec_sink(tmp_path, url) as sink:
        with pytest.raises(ComponentConfigError, match="acknowledgement: true"):
            await sink.send([js(1)])


async def test_health_follows_the_collector(tmp_path: Path, splunk: FakeSplunk) -> None:
    """Healthy while HEC says code 17; unhealthy when it answers 503 code 18."""
    async with hec_sink(tmp_path, splunk.url) as sink:
        assert (await sink.health()).ok
        splunk.healthy = False
        health = await sink.health()
    assert not health.ok and "queues are full" in health.detail


async def test_health_unreachable_collector(tmp_path: Path) -> None:
    """Nothing listening: unhealthy, and send raises TransientError."""
    port = closed_port()
    async with hec_sink(tmp_path, f"http://127.0.0.1:{port}") as sink:
        unreachable = await attempt(sink, [js(1)])
    assert not unreachable.health.ok and isinstance(unreachable.error, TransientError)


async def test_slow_collector_times_out_as_transient(tmp_path: Path, splunk: FakeSplunk) -> None:
    """A collector that does not answer within `timeout` gives a TransientError."""
    splunk.hold_next(1)
    async with hec_sink(tmp_path, splunk.url, timeout=0.3) as sink:
        with pytest.raises(TransientError, match="no answer in time"):
            await sink.send([js(1)])
    splunk.release_held()


async def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    """A self-signed HEC is refused without `tls.ca_file` and accepted with it."""
    server_context, ca_file = self_signed_tls(tmp_path / "tls")
    fake = FakeSplunk(tokens=[TOKEN], ssl_context=server_context)
    async with fake as url:
        await assert_tls_verified(lambda tls: hec_sink(tmp_path, url, **tls), [js(1)], str(ca_file))
    assert len(fake.events) == 1


def test_options_validate() -> None:
    """The token is required and secret; a channel must be a UUID; unknown keys are refused."""
    with pytest.raises(pydantic.ValidationError):
        SplunkHecOptions.model_validate({"url": "https://splunk:8088"})
    with pytest.raises(pydantic.ValidationError):
        SplunkHecOptions.model_validate({"url": "https://splunk:8088", "token": "t", "channel": "nope"})
    with pytest.raises(pydantic.ValidationError):
        SplunkHecOptions.model_validate({"url": "https://splunk:8088", "token": "t", "indx": "main"})
    options = SplunkHecOptions.model_validate(
        {"url": "https://splunk:8088/services/collector", "token": "t0k"}
    )
    assert options.url == "https://splunk:8088" and "t0k" not in repr(options)


async def test_pipeline_ships_every_record_to_splunk(tmp_path: Path) -> None:
    """The daemon ships 500 dlp alerts and 500 audit events (JSON): HEC indexes every _id; SIGTERM exits 0."""
    fake = FakeSplunk(tokens=[TOKEN], ack=True)
    async with fake as url:
        sink = {
            "type": "splunk_hec",
            "url": url,
            "token": {"$env": "HEC_TOKEN"},
            "index": "netskope",
            "acknowledgement": True,
        }
        run = await ship_backlog(
            tmp_path,
            fake,
            sink,
            lambda: (event["event"]["_id"] for event in fake.events),
            streams={"alerts": ["dlp"], "events": ["audit"]},
            env={"HEC_TOKEN": TOKEN},
            max_records=300,
        )
    assert run.exit_code == 0
    by_sourcetype: dict[str, set[str]] = {}
    for event in fake.events:
        by_sourcetype.setdefault(event["sourcetype"], set()).add(event["event"]["_id"])
    assert by_sourcetype == {
        "netskope:alert": run.expected["alerts", "dlp"],
        "netskope:event": run.expected["events", "audit"],
    }
    assert TOKEN not in run.output
