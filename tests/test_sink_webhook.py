"""The ``webhook`` log sink against a fake JSON receiver on loopback."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from ce_webhook import WebhookOptions, WebhookSink
from ce_webhook.fake import FakeWebhook, basic_value, bearer_value

from ce_daemon.errors import AuthError, PermanentError, TransientError
from ce_daemon.plugin import OutRecord
from ce_daemon.testing.pipelines import ship_backlog
from ce_daemon.testing.sinks import assert_tls_verified, attempt, closed_port, open_sink
from ce_daemon.testing.tls import self_signed_tls

TOKEN = "hook-secret-token-0123"


def cef(i: int) -> OutRecord:
    line = f'CEF:0|Netskope|demo|1.0|dlp|DLP alert {i}|5|suser=user{i}@example.com msg=caf\u00e9 "quoted"'
    return OutRecord(f"cef-{i}", 1_700_000_000 + i, line.encode(), "alerts", "dlp", "cef")


def js(i: int, **extra: Any) -> OutRecord:
    data = orjson.dumps({"_id": f"js-{i}", "timestamp": 1_700_000_000 + i, "user": f"u{i}", **extra})
    return OutRecord(f"js-{i}", 1_700_000_000 + i, data, "events", "page", "json")


def webhook_sink(tmp_path: Path, url: str, **options: Any) -> AbstractAsyncContextManager[WebhookSink]:
    return open_sink(WebhookSink, {"url": url, **options}, tmp_path, "hook")


@pytest.fixture
async def hook() -> AsyncIterator[FakeWebhook]:
    fake = FakeWebhook(auth=("Authorization", bearer_value(TOKEN)))
    async with fake:
        yield fake


def bearer_auth() -> dict[str, Any]:
    return {"type": "bearer", "token": TOKEN}


async def test_json_array_embeds_json_records_and_wraps_cef_lines(tmp_path: Path, hook: FakeWebhook) -> None:
    """One JSON array per batch: JSON records as they are, CEF lines wrapped with id, time, kind, subtype."""
    async with webhook_sink(
        tmp_path, f"{hook.url}/hook", auth=bearer_auth(), headers={"X-Team": "soc"}
    ) as sink:
        result = await sink.send([js(1), cef(2)])
    assert list(result.rejected) == []
    assert hook.batches == [
        [
            {"_id": "js-1", "timestamp": 1_700_000_001, "user": "u1"},
            {
                "message": cef(2).data.decode(),
                "id": "cef-2",
                "timestamp": 1_700_000_002,
                "kind": "alerts",
                "subtype": "dlp",
            },
        ]
    ]
    request = hook.requests[-1]
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Team"] == "soc"


async def test_ndjson_body_and_put_method(tmp_path: Path, hook: FakeWebhook) -> None:
    """`body: ndjson` sends one object per line with a final newline; `method: PUT` is honoured."""
    async with webhook_sink(
        tmp_path, f"{hook.url}/hook", auth=bearer_auth(), body="ndjson", method="PUT"
    ) as sink:
        await sink.send([js(1), js(2), cef(3)])
    request = hook.requests[-1]
    assert request.method == "PUT"
    assert request.headers["Content-Type"] == "application/x-ndjson"
    assert request.body.endswith(b"\n") and request.body.count(b"\n") == 3
    assert [r.get("_id") or r.get("id") for r in hook.records] == ["js-1", "js-2", "cef-3"]


async def test_gzip_option_compresses_the_body(tmp_path: Path, hook: FakeWebhook) -> None:
    """With `gzip: true` the body travels compressed with Content-Encoding: gzip."""
    batch = [js(i) for i in range(200)]
    async with webhook_sink(tmp_path, f"{hook.url}/hook", auth=bearer_auth(), gzip=True) as sink:
        await sink.send(batch)
    request = hook.requests[-1]
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.wire_bytes < len(request.body)
    assert len(hook.records) == 200


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (
            {"type": "basic", "username": "svc", "password": "pa:ss"},
            ("Authorization", basic_value("svc", "pa:ss")),
        ),
        ({"type": "bearer", "token": "tok"}, ("Authorization", "Bearer tok")),
        ({"type": "header", "name": "X-Api-Key", "value": "k3y"}, ("X-Api-Key", "k3y")),
    ],
)
async def test_each_auth_kind_reaches_the_endpoint(
    tmp_path: Path, auth: dict[str, Any], expected: tuple[str, str]
) -> None:
    """basic, bearer and header auth put the secret where the endpoint expects it."""
    fake = FakeWebhook(auth=expected)
    async with fake as url, webhook_sink(tmp_path, f"{url}/hook", auth=auth) as sink:
        await sink.send([js(1)])
    assert len(fake.records) == 1


async def test_wrong_credentials_raise_auth_error_without_the_secret(
    tmp_path: Path, hook: FakeWebhook
) -> None:
    """A 401 is an AuthError, and the secret we sent appears in neither the error nor the options' repr."""
    auth = {"type": "bearer", "token": "wrong-secret-value"}
    async with webhook_sink(tmp_path, f"{hook.url}/hook", auth=auth) as sink:
        with pytest.raises(AuthError) as caught:
            await sink.send([js(1)])
        assert "wrong-secret-value" not in str(caught.value)
        assert "wrong-secret-value" not in repr(sink.options)


async def test_large_batch_is_split_under_max_request_bytes(tmp_path: Path, hook: FakeWebhook) -> None:
    """A batch larger than `max_request_bytes` goes in several requests, each within the cap, in order
    when they go one after another (``parallel_requests: 1``)."""
    batch = [js(i, pad="x" * 300) for i in range(100)]
    options = {"auth": bearer_auth(), "max_request_bytes": 5000, "parallel_requests": 1}
    async with webhook_sink(tmp_path, f"{hook.url}/hook", **options) as sink:
        await sink.send(batch)
    assert len(hook.batches) > 5
    assert all(len(r.body) <= 5000 for r in hook.requests)
    assert [r["_id"] for r in hook.records] == [f"js-{i}" for i in range(100)]


async def test_the_requests_of_a_batch_are_under_way_together(tmp_path: Path, hook: FakeWebhook) -> None:
    """Up to ``parallel_requests`` requests of one batch wait on the endpoint at once; all arrive once."""
    batch = [js(i, pad="x" * 300) for i in range(100)]
    hook.hold_next(10)
    options = {"auth": bearer_auth(), "max_request_bytes": 5000, "parallel_requests": 3}
    async with webhook_sink(tmp_path, f"{hook.url}/hook", **options) as sink:
        sending = asyncio.create_task(sink.send(batch))
        await hook.wait_until(lambda: hook.held == 3)
        await asyncio.sleep(0.2)
        assert hook.held == 3  # never a fourth while three are under way
        hook.release_held()
        result = await sending
    assert not result.rejected
    assert all(len(r.body) <= 5000 for r in hook.requests)
    assert sorted(r["_id"] for r in hook.records) == sorted(f"js-{i}" for i in range(100))


@pytest.mark.parametrize("parallel", [1, 4])
async def test_a_batch_retried_after_one_request_failed_sends_only_the_rest(
    tmp_path: Path, hook: FakeWebhook, parallel: int
) -> None:
    """One request of the batch fails: the batch fails, and its retry (the same records, as the route
    retries) sends what the endpoint did not take, so every record arrives exactly once."""
    batch = [js(i, pad="x" * 300) for i in range(100)]
    hook.fail_next(1, 500, after=2)
    options = {"auth": bearer_auth(), "max_request_bytes": 5000, "parallel_requests": parallel}
    async with webhook_sink(tmp_path, f"{hook.url}/hook", **options) as sink:
        with pytest.raises(TransientError):
            await sink.send(batch)
        delivered_first = len(hook.records)
        assert 0 < delivered_first < 100
        result = await sink.send(batch)
    assert not result.rejected
    assert sorted(r["_id"] for r in hook.records) == sorted(f"js-{i}" for i in range(100))


async def test_413_halves_the_request_and_rejects_only_the_oversized_record(tmp_path: Path) -> None:
    """A smaller cap on the endpoint (413) halves the request; a record too big even alone is rejected."""
    fake = FakeWebhook(max_body=3000)
    batch = [js(i, pad="y" * 200) for i in range(20)]
    batch[7] = js(7, pad="z" * 5000)
    async with fake as url, webhook_sink(tmp_path, f"{url}/hook") as sink:
        result = await sink.send(batch)
    assert [index for index, _ in result.rejected] == [7]
    assert "413" in result.rejected[0][1]
    assert sorted(r["_id"] for r in fake.records) == sorted(f"js-{i}" for i in range(20) if i != 7)


async def test_429_with_retry_after_seconds_is_transient(tmp_path: Path, hook: FakeWebhook) -> None:
    """A 429 with Retry-After: 30 raises TransientError(retry_after=30)."""
    hook.fail_next(1, 429, retry_after=30)
    async with webhook_sink(tmp_path, f"{hook.url}/hook", auth=bearer_auth()) as sink:
        with pytest.raises(TransientError) as caught:
            await sink.send([js(1)])
        assert caught.value.retry_after == 30
        await sink.send([js(1)])
    assert len(hook.records) == 1


async def test_503_with_retry_after_date_is_transient(tmp_path: Path, hook: FakeWebhook) -> None:
    """A Retry-After given as an HTTP date becomes a delay in seconds."""
    hook.fail_next(1, 503, retry_after=email.utils.formatdate(time.time() + 120, usegmt=True))
    async with webhook_sink(tmp_path, f"{hook.url}/hook", auth=bearer_auth()) as sink:
        with pytest.raises(TransientError) as caught:
            await sink.send([js(1)])
    assert caught.value.retry_after is not None and 60 < caught.value.retry_after <= 120


async def test_400_is_permanent(tmp_path: Path, hook: FakeWebhook) -> None:
    """A 400 (the endpoint refuses the data) raises PermanentError naming the status."""
    hook.fail_next(1, 400, body=b'{"error": "schema mismatch"}')
    async with webhook_sink(tmp_path, f"{hook.url}/hook", auth=bearer_auth()) as sink:
        with pytest.raises(PermanentError, match=r"400.*schema mismatch"):
            await sink.send([js(1)])


async def test_slow_endpoint_times_out_as_transient(tmp_path: Path, hook: FakeWebhook) -> None:
    """An endpoint that does not answer within `timeout` gives a TransientError."""
    hook.hold_next(1)
    async with webhook_sink(tmp_path, f"{hook.url}/hook", auth=bearer_auth(), timeout=0.3) as sink:
        with pytest.raises(TransientError, match="no answer in time"):
            await sink.send([js(1)])
    hook.release_held()


async def test_health_url_decides_health(tmp_path: Path, hook: FakeWebhook) -> None:
    """With `health_url`, 2xx is healthy and 503 is not."""
    async with webhook_sink(
        tmp_path, f"{hook.url}/hook", auth=bearer_auth(), health_url=f"{hook.url}/health"
    ) as sink:
        assert (await sink.health()).ok
        hook.healthy = False
        health = await sink.health()
    assert not health.ok and "503" in health.detail


async def test_health_probe_counts_any_answer_as_reachable(tmp_path: Path, hook: FakeWebhook) -> None:
    """Without `health_url`, a HEAD answered 405 still means reachable."""
    async with webhook_sink(tmp_path, f"{hook.url}/hook", auth=bearer_auth()) as sink:
        health = await sink.health()
    assert health.ok and "405" in health.detail


async def test_health_probe_401_is_unhealthy_with_a_clear_detail(tmp_path: Path, hook: FakeWebhook) -> None:
    """A probe answered 401 is unhealthy and says the credentials were refused."""
    async with webhook_sink(tmp_path, f"{hook.url}/hook") as sink:
        health = await sink.health()
    assert not health.ok and "credentials" in health.detail and "401" in health.detail


async def test_health_unreachable_endpoint(tmp_path: Path) -> None:
    """Nothing listening: unhealthy, and send raises TransientError."""
    port = closed_port()
    async with webhook_sink(tmp_path, f"http://127.0.0.1:{port}/hook") as sink:
        unreachable = await attempt(sink, [js(1)])
    assert not unreachable.health.ok and isinstance(unreachable.error, TransientError)


async def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    """A self-signed HTTPS endpoint is refused without `tls.ca_file` and accepted with it."""
    server_context, ca_file = self_signed_tls(tmp_path / "tls")
    fake = FakeWebhook(ssl_context=server_context)
    async with fake as url:
        await assert_tls_verified(
            lambda tls: webhook_sink(tmp_path, f"{url}/hook", **tls), [js(1)], str(ca_file)
        )
    assert len(fake.records) == 1


def test_options_refuse_unknown_keys_and_bad_auth() -> None:
    """Unknown keys and an auth block of an unknown type are configuration errors."""
    with pytest.raises(pydantic.ValidationError):
        WebhookOptions.model_validate({"url": "https://x", "colour": "blue"})
    with pytest.raises(pydantic.ValidationError):
        WebhookOptions.model_validate({"url": "https://x", "auth": {"type": "digest", "token": "t"}})


async def test_pipeline_ships_every_record_to_the_webhook(tmp_path: Path) -> None:
    """The daemon ships 500 simulated dlp alerts: the webhook receives every _id; SIGTERM exits 0."""
    fake = FakeWebhook(auth=("Authorization", bearer_value(TOKEN)))
    async with fake as url:
        sink = {
            "type": "webhook",
            "url": f"{url}/hook",
            "gzip": True,
            "auth": {"type": "bearer", "token": {"$env": "HOOK_TOKEN"}},
        }
        run = await ship_backlog(
            tmp_path,
            fake,
            sink,
            lambda: (record["_id"] for record in fake.records),
            env={"HOOK_TOKEN": TOKEN},
        )
    assert run.exit_code == 0
    assert {record["_id"] for record in fake.records} == run.expected["alerts", "dlp"]
    assert all(request.headers.get("Content-Encoding") == "gzip" for request in fake.requests)
    assert TOKEN not in run.output
