"""The ``elasticsearch`` log sink against a fake cluster's ``_bulk`` API on loopback."""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from ce_elastic import ElasticsearchOptions, ElasticsearchSink
from ce_elastic.fake import FakeElasticsearch

from ce_daemon.errors import AuthError, ComponentConfigError, TransientError
from ce_daemon.plugin import OutRecord
from ce_daemon.testing.pipelines import ship_backlog
from ce_daemon.testing.sinks import assert_tls_verified, attempt, closed_port, open_sink
from ce_daemon.testing.tls import self_signed_tls

USER, PASSWORD = "shipper", "s3cret-password"
KEY_ID, KEY_SECRET = "VuaCfGcBCdbkQm-e5aOx", "ui2lp2axTNmsyakw9tvNnw"
API_KEY = base64.b64encode(f"{KEY_ID}:{KEY_SECRET}".encode()).decode()
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def cef(i: int, kind: str = "alerts", subtype: str = "dlp") -> OutRecord:
    line = f"CEF:0|Netskope|demo|1.0|{subtype}|alert {i}|5|suser=user{i}@example.com"
    return OutRecord(f"cef-{i}", T0 + i, line.encode(), kind, subtype, "cef")


def js(i: int, kind: str = "events", subtype: str = "page", **extra: Any) -> OutRecord:
    data = orjson.dumps({"_id": f"js-{i}", "timestamp": T0 + i, "user": f"u{i}", **extra})
    return OutRecord(f"js-{i}", T0 + i, data, kind, subtype, "json")


def basic() -> dict[str, str]:
    return {"username": USER, "password": PASSWORD}


def es_sink(tmp_path: Path, url: str, **options: Any) -> AbstractAsyncContextManager[ElasticsearchSink]:
    return open_sink(
        ElasticsearchSink, {"url": url, "item_retry_delay": 0.01, **options}, tmp_path, "elastic"
    )


@pytest.fixture
async def cluster() -> AsyncIterator[FakeElasticsearch]:
    fake = FakeElasticsearch(users={USER: PASSWORD}, api_keys={KEY_ID: KEY_SECRET})
    async with fake:
        yield fake


async def test_bulk_creates_documents_keyed_by_record_id(tmp_path: Path, cluster: FakeElasticsearch) -> None:
    """NDJSON `create` actions, `_id` = record id, dated per-kind indices; `_id` moves out of the source."""
    async with es_sink(tmp_path, cluster.url, **basic()) as sink:
        result = await sink.send([js(1), cef(2)])
    assert list(result.rejected) == []
    assert cluster.documents == {
        "netskope-events-2026.01.01": {
            "js-1": {"id": "js-1", "timestamp": T0 + 1, "user": "u1", "@timestamp": "2026-01-01T00:00:01Z"},
        },
        "netskope-alerts-2026.01.01": {
            "cef-2": {
                "message": cef(2).data.decode(),
                "id": "cef-2",
                "timestamp": T0 + 2,
                "kind": "alerts",
                "subtype": "dlp",
                "@timestamp": "2026-01-01T00:00:02Z",
            },
        },
    }
    request = cluster.requests[-1]
    assert request.path == "/_bulk"
    assert request.headers["Content-Type"] == "application/x-ndjson"
    assert request.headers["Content-Encoding"] == "gzip"
    lines = request.body.split(b"\n")
    assert request.body.endswith(b"\n") and len(lines) == 5
    assert orjson.loads(lines[0]) == {"create": {"_index": "netskope-events-2026.01.01", "_id": "js-1"}}


async def test_a_replayed_batch_creates_no_duplicates(tmp_path: Path, cluster: FakeElasticsearch) -> None:
    """Sending the same batch twice: the 409 conflicts count as delivered, the documents are unchanged."""
    batch = [js(i) for i in range(10)]
    async with es_sink(tmp_path, cluster.url, api_key=API_KEY) as sink:
        await sink.send(batch)
        result = await sink.send(batch)
    assert list(result.rejected) == []
    assert len(cluster.all_documents) == 10
    last = orjson.loads(cluster.requests[-1].body.split(b"\n")[0])
    assert "create" in last


async def test_busy_items_are_retried_alone(tmp_path: Path, cluster: FakeElasticsearch) -> None:
    """Items refused 429 (write queue full) are retried alone until indexed; the others are not resent."""
    cluster.reject_items(2, 429, when=lambda index, doc_id: doc_id in ("js-3", "js-5"))
    async with es_sink(tmp_path, cluster.url, **basic()) as sink:
        result = await sink.send([js(i) for i in range(8)])
    assert list(result.rejected) == []
    assert sorted(cluster.all_documents) == [f"js-{i}" for i in range(8)]
    assert [doc_id for _, doc_id in cluster.item_attempts[8:]] == ["js-3", "js-5"]


async def test_items_still_busy_after_the_retries_make_the_batch_transient(
    tmp_path: Path, cluster: FakeElasticsearch
) -> None:
    """Items that stay 429 beyond `item_retries` raise TransientError; a later resend completes the batch."""
    cluster.reject_items(3, 429, when=lambda index, doc_id: doc_id == "js-2")
    batch = [js(i) for i in range(4)]
    async with es_sink(tmp_path, cluster.url, item_retries=2, **basic()) as sink:
        with pytest.raises(TransientError, match="es_rejected_execution_exception"):
            await sink.send(batch)
        result = await sink.send(batch)
    assert list(result.rejected) == []
    assert sorted(cluster.all_documents) == [f"js-{i}" for i in range(4)]


async def test_mapping_errors_reject_only_their_records(tmp_path: Path) -> None:
    """A 400 document_parsing_exception rejects that record with `type: reason`; the others are indexed."""
    fake = FakeElasticsearch(field_types={"bytes": "long"})
    batch = [js(0, bytes=10), js(1, bytes="lots"), js(2, bytes=30)]
    async with fake as url, es_sink(tmp_path, url) as sink:
        result = await sink.send(batch)
    assert [index for index, _ in result.rejected] == [1]
    assert result.rejected[0][1].startswith("document_parsing_exception: ")
    assert "[bytes]" in result.rejected[0][1]
    assert sorted(fake.all_documents) == ["js-0", "js-2"]


async def test_a_record_that_is_not_json_is_rejected_before_sending(
    tmp_path: Path, cluster: FakeElasticsearch
) -> None:
    """A JSON-format record that is not a JSON object is rejected locally; the rest is indexed."""
    broken = OutRecord("bad", T0, b'{"user": ', "events", "page", "json")
    array = OutRecord("arr", T0, b"[1, 2]", "events", "page", "json")
    async with es_sink(tmp_path, cluster.url, **basic()) as sink:
        result = await sink.send([js(0), broken, array, js(3)])
    assert [index for index, _ in result.rejected] == [1, 2]
    assert sorted(cluster.all_documents) == ["js-0", "js-3"]


async def test_whole_request_429_with_retry_after_is_transient(
    tmp_path: Path, cluster: FakeElasticsearch
) -> None:
    """A 429 for the whole request (circuit breaker) raises TransientError(retry_after)."""
    cluster.fail_next(1, 429, retry_after=7)
    async with es_sink(tmp_path, cluster.url, **basic()) as sink:
        with pytest.raises(TransientError, match="es_rejected_execution_exception") as caught:
            await sink.send([js(1)])
    assert caught.value.retry_after == 7


@pytest.mark.parametrize(
    "credentials",
    [{"username": USER, "password": "wrong"}, {"api_key": base64.b64encode(b"nobody:nothing").decode()}],
)
async def test_refused_credentials_raise_auth_error(
    tmp_path: Path, cluster: FakeElasticsearch, credentials: dict[str, str]
) -> None:
    """Wrong basic or API-key credentials (401 security_exception) raise AuthError; health says so too."""
    async with es_sink(tmp_path, cluster.url, **credentials) as sink:
        with pytest.raises(AuthError, match="security_exception") as caught:
            await sink.send([js(1)])
        health = await sink.health()
    secret = credentials.get("password") or credentials["api_key"]
    assert secret not in str(caught.value) and secret not in health.detail
    assert not health.ok and "credentials refused" in health.detail


async def test_user_without_write_privilege_is_auth_error(tmp_path: Path) -> None:
    """A user who may not write (403 on _bulk) raises AuthError."""
    fake = FakeElasticsearch(users={USER: PASSWORD}, read_only=[USER])
    async with fake as url, es_sink(tmp_path, url, **basic()) as sink:
        with pytest.raises(AuthError, match="403"):
            await sink.send([js(1)])


async def test_large_batch_is_split_under_max_request_bytes(
    tmp_path: Path, cluster: FakeElasticsearch
) -> None:
    """A batch larger than `max_request_bytes` goes in several _bulk requests, each within the cap."""
    batch = [js(i, pad="x" * 500) for i in range(100)]
    async with es_sink(tmp_path, cluster.url, max_request_bytes=10_000, **basic()) as sink:
        await sink.send(batch)
    assert len(cluster.requests) > 5
    assert all(len(request.body) <= 10_000 for request in cluster.requests)
    assert len(cluster.all_documents) == 100


async def test_413_halves_the_request(tmp_path: Path) -> None:
    """A cluster with a smaller `http.max_content_length` answers 413: requests are halved until accepted."""
    fake = FakeElasticsearch(max_content_length=4_000)
    batch = [
        js(i, pad=random.Random(i).randbytes(150).hex()) for i in range(30)
    ]  # gzip cannot shrink it much
    async with fake as url, es_sink(tmp_path, url) as sink:
        result = await sink.send(batch)
    assert list(result.rejected) == []
    assert any(request.status == 413 for request in fake.requests)
    assert len(fake.all_documents) == 30


async def test_missing_index_without_auto_creation_is_a_config_error(tmp_path: Path) -> None:
    """index_not_found_exception (no auto-creation) stops the route: ComponentConfigError, no rejection."""
    fake = FakeElasticsearch(auto_create_index=False)
    async with fake as url, es_sink(tmp_path, url, index="netskope") as sink:
        with pytest.raises(ComponentConfigError, match="index_not_found_exception"):
            await sink.send([js(1)])
        fake.create_index("netskope")
        await sink.send([js(1)])
    assert list(fake.documents["netskope"]) == ["js-1"]


async def test_index_pattern_and_pipeline(tmp_path: Path, cluster: FakeElasticsearch) -> None:
    """`{subtype}` and strftime codes shape the index; `pipeline` is passed as a query parameter."""
    options = {"index": "ns-{kind}-{subtype}-%Y%m", "pipeline": "netskope-enrich", "timestamp_field": None}
    async with es_sink(tmp_path, cluster.url, **options, **basic()) as sink:
        await sink.send([js(1, subtype="audit"), cef(2, subtype="malware")])
    assert set(cluster.documents) == {"ns-events-audit-202601", "ns-alerts-malware-202601"}
    assert "@timestamp" not in cluster.documents["ns-events-audit-202601"]["js-1"]
    assert cluster.requests[-1].query == {"pipeline": "netskope-enrich"}


async def test_health_reports_the_cluster(tmp_path: Path, cluster: FakeElasticsearch) -> None:
    """Health is GET / with our credentials; the detail names the version and the cluster."""
    async with es_sink(tmp_path, cluster.url, api_key=API_KEY) as sink:
        health = await sink.health()
    assert health.ok and "8.15.0" in health.detail and "fake-cluster" in health.detail
    assert cluster.requests == []  # a health check is not a data request


async def test_health_unreachable_cluster(tmp_path: Path) -> None:
    """Nothing listening: unhealthy, and send raises TransientError."""
    port = closed_port()
    async with es_sink(tmp_path, f"http://127.0.0.1:{port}") as sink:
        unreachable = await attempt(sink, [js(1)])
    assert not unreachable.health.ok and isinstance(unreachable.error, TransientError)


async def test_slow_cluster_times_out_as_transient(tmp_path: Path, cluster: FakeElasticsearch) -> None:
    """A cluster that does not answer within `timeout` gives a TransientError."""
    cluster.hold_next(1)
    async with es_sink(tmp_path, cluster.url, timeout=0.3, **basic()) as sink:
        with pytest.raises(TransientError, match="no answer in time"):
            await sink.send([js(1)])
    cluster.release_held()


async def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    """A self-signed cluster is refused without `tls.ca_file` and accepted with it."""
    server_context, ca_file = self_signed_tls(tmp_path / "tls")
    fake = FakeElasticsearch(ssl_context=server_context)
    async with fake as url:
        await assert_tls_verified(lambda tls: es_sink(tmp_path, url, **tls), [js(1)], str(ca_file))
    assert list(fake.all_documents) == ["js-1"]


@pytest.mark.parametrize(
    "options",
    [
        {"api_key": "k", "username": "u", "password": "p"},
        {"username": "u"},
        {"index": "Netskope-{kind}"},
        {"index": "netskope-{tenant}"},
        {"index": "netskope {kind}"},
    ],
)
def test_options_refuse_contradictions_and_bad_index_patterns(options: dict[str, str]) -> None:
    """Two ways to authenticate, half a credential, or an index pattern giving invalid names are refused."""
    with pytest.raises(pydantic.ValidationError):
        ElasticsearchOptions.model_validate({"url": "https://es:9200", **options})


async def test_pipeline_indexes_every_record_once(tmp_path: Path) -> None:
    """The daemon ships 500 dlp alerts (JSON): the cluster holds one document per _id; SIGTERM exits 0."""
    fake = FakeElasticsearch(users={USER: PASSWORD})
    async with fake as url:
        sink = {"type": "elasticsearch", "url": url, "username": USER, "password": {"$env": "ES_PASSWORD"}}
        run = await ship_backlog(
            tmp_path, fake, sink, lambda: fake.all_documents, env={"ES_PASSWORD": PASSWORD}
        )
    assert run.exit_code == 0
    assert set(fake.all_documents) == run.expected["alerts", "dlp"]
    assert all(source["id"] == doc_id for doc_id, source in fake.all_documents.items())
    assert all(index.startswith("netskope-alerts-") for index in fake.documents)
    assert PASSWORD not in run.output
