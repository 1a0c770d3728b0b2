"""The `azure_logs_ingestion` log sink against a fake Entra ID and Logs Ingestion API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest
from ce_azure import AzureLogsIngestionSink
from ce_azure.fake import FakeAzureMonitor

from ce_daemon.errors import AuthError, ComponentConfigError, PermanentError, TransientError
from ce_daemon.http import split_by_size
from ce_daemon.plugin import OutRecord
from ce_daemon.testing.pipelines import ship_backlog
from ce_daemon.testing.sinks import assert_tls_verified, open_sink
from ce_daemon.testing.tls import self_signed_tls

TS = 1_700_000_000
ISO = "2023-11-14T22:13:20Z"
STREAM = "Custom-Netskope_CL"


def record(n: int, *, fmt: str = "json", pad: int = 0) -> OutRecord:
    rid = f"{n:024x}"
    if fmt == "json":
        data = orjson.dumps({"_id": rid, "timestamp": TS, "alert_type": "dlp", "n": n, "pad": "x" * pad})
    else:
        line = f'CEF:0|Netskope|demo|1.0|dlp|alert {n}|5|externalId={rid} msg=quote " and \\\\ {"x" * pad}'
        data = line.encode()
    return OutRecord(rid, TS, data, "alerts", "dlp", fmt)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAzureMonitor]:
    server = FakeAzureMonitor()
    async with server:
        yield server


def options(fake: FakeAzureMonitor, **overrides: Any) -> dict[str, Any]:
    return {
        "dce": fake.url,
        "authority": fake.url,
        "dcr_immutable_id": fake.dcr_immutable_id,
        "stream_name": STREAM,
        "tenant_id": fake.tenant_id,
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        **overrides,
    }


def opened(tmp_path: Path, raw: dict[str, Any]) -> AbstractAsyncContextManager[AzureLogsIngestionSink]:
    return open_sink(AzureLogsIngestionSink, raw, tmp_path, "azure")


@pytest.fixture
async def sink(tmp_path: Path, fake: FakeAzureMonitor) -> AsyncIterator[AzureLogsIngestionSink]:
    async with opened(tmp_path, options(fake)) as opened_sink:
        yield opened_sink


# -- payload -----------------------------------------------------------------------------------------


async def test_json_records_arrive_as_objects_with_time_generated(
    fake: FakeAzureMonitor, sink: AzureLogsIngestionSink
) -> None:
    """JSON records are posted gzip as a JSON array of the records' own objects plus TimeGenerated; 204."""
    batch = [record(n) for n in range(3)]
    result = await sink.send(batch)
    assert not result.rejected
    assert fake.rows == [{"TimeGenerated": ISO, **orjson.loads(r.data)} for r in batch]
    (call,) = fake.calls
    assert call.gzip and call.status == 204 and call.stream == STREAM


async def test_cef_lines_become_raw_data_rows(fake: FakeAzureMonitor, sink: AzureLogsIngestionSink) -> None:
    """A CEF line is sent as {TimeGenerated, RawData: line, Id: _id}, quotes and backslashes intact."""
    batch = [record(n, fmt="cef") for n in range(2)]
    await sink.send(batch)
    assert fake.rows == [{"TimeGenerated": ISO, "RawData": r.data.decode(), "Id": r.id} for r in batch]


async def test_column_names_are_options(tmp_path: Path, fake: FakeAzureMonitor) -> None:
    """time_column, raw_column and id_column rename the columns a table expects."""
    fake.required_columns = ("Time",)
    async with opened(
        tmp_path, options(fake, time_column="Time", raw_column="Line", id_column="EventId")
    ) as sink:
        await sink.send([record(0, fmt="cef"), record(1)])
    assert set(fake.rows[0]) == {"Time", "Line", "EventId"}
    assert fake.rows[1]["Time"] == ISO and fake.rows[1]["n"] == 1


async def test_record_already_holding_the_time_column_gets_it_set_once(
    fake: FakeAzureMonitor, sink: AzureLogsIngestionSink
) -> None:
    """A JSON record with its own TimeGenerated is parsed, not spliced: one key, the record's timestamp."""
    data = b'{"TimeGenerated":"bogus","_id":"a"}'
    await sink.send([OutRecord("a", TS, data, "alerts", "dlp", "json")])
    assert fake.rows == [{"TimeGenerated": ISO, "_id": "a"}]


async def test_uncompressed_when_gzip_is_off(tmp_path: Path, fake: FakeAzureMonitor) -> None:
    """`gzip: false` posts plain JSON."""
    async with opened(tmp_path, options(fake, gzip=False)) as sink:
        await sink.send([record(0)])
    assert not fake.calls[0].gzip and fake.calls[0].wire_bytes == fake.calls[0].json_bytes


# -- size limits -------------------------------------------------------------------------------------


def test_pack_keeps_every_array_under_the_cap() -> None:
    """Packing never builds an array over the cap, keeps order, and sets aside rows too big alone."""
    sizes = [10, 10, 10, 50, 10]
    parts = split_by_size(sizes, 35, overhead=2, separator=1)
    oversize = [part[0] for part in parts if 2 + sizes[part[0]] > 35]
    chunks = [list(part) for part in parts if part[0] not in oversize]
    assert oversize == [3]
    assert chunks == [[0, 1, 2], [4]]
    assert all(2 + sum(sizes[i] for i in c) + len(c) - 1 <= 35 for c in chunks)
    assert [list(part) for part in parts] == [[0, 1, 2], [3], [4]]  # a row too big is alone


async def test_large_batch_is_split_into_calls_under_the_limit(
    tmp_path: Path, fake: FakeAzureMonitor
) -> None:
    """A batch whose rows exceed max_request_bytes goes out as several calls, each JSON body under it."""
    async with opened(tmp_path, options(fake, max_request_bytes=20_000)) as sink:
        batch = [record(n, pad=900) for n in range(60)]
        await sink.send(batch)
    assert len(fake.calls) > 1
    assert all(c.json_bytes <= 20_000 for c in fake.calls)
    assert [row["_id"] for row in fake.rows] == [r.id for r in batch]


async def test_413_splits_the_call_and_retries_smaller(tmp_path: Path) -> None:
    """A service whose limit is below ours answers 413: the sink halves the call until it fits."""
    fake = FakeAzureMonitor(max_body_bytes=8_000)
    async with fake:
        async with opened(tmp_path, options(fake, gzip=False)) as sink:
            batch = [record(n, pad=400) for n in range(40)]
            result = await sink.send(batch)
    assert not result.rejected
    assert any(call.status == 413 for call in fake.calls)
    assert [row["n"] for row in fake.rows] == list(range(40))


async def test_row_the_service_refuses_even_alone_is_rejected(tmp_path: Path) -> None:
    """When a single row still gets 413, that record alone is rejected with the service's message."""
    fake = FakeAzureMonitor(max_body_bytes=2_000)
    async with fake:
        async with opened(tmp_path, options(fake, gzip=False)) as sink:
            result = await sink.send([record(0), record(1, pad=3_000), record(2)])
    assert [index for index, _ in result.rejected] == [1]
    assert "ContentLengthLimitExceeded" in result.rejected[0][1]
    assert [row["n"] for row in fake.rows] == [0, 2]


async def test_row_larger_than_any_call_is_rejected_alone(
    fake: FakeAzureMonitor, sink: AzureLogsIngestionSink
) -> None:
    """A record that cannot fit in one call even alone is rejected; its neighbours are delivered."""
    batch = [record(0), record(1, pad=1_100_000), record(2)]
    result = await sink.send(batch)
    assert [index for index, _ in result.rejected] == [1]
    assert "exceeds the call limit" in result.rejected[0][1]
    assert [row["n"] for row in fake.rows] == [0, 2]


# -- errors ------------------------------------------------------------------------------------------


async def test_429_with_retry_after_is_transient(
    fake: FakeAzureMonitor, sink: AzureLogsIngestionSink
) -> None:
    """429 TooManyRequests with Retry-After → TransientError carrying the delay."""
    fake.fail_next(1, 429, code="TooManyRequests", message="Rate limit exceeded", retry_after=12)
    with pytest.raises(TransientError, match="TooManyRequests") as caught:
        await sink.send([record(0)])
    assert caught.value.retry_after == 12


async def test_503_is_transient(fake: FakeAzureMonitor, sink: AzureLogsIngestionSink) -> None:
    """503 ServiceUnavailable → TransientError."""
    fake.fail_next(1, 503, code="ServiceUnavailable", message="try later")
    with pytest.raises(TransientError, match="503"):
        await sink.send([record(0)])


async def test_retry_after_partial_failure_does_not_resend_accepted_calls(
    tmp_path: Path, fake: FakeAzureMonitor
) -> None:
    """A later call of a split batch fails: the retried batch skips the calls already accepted."""
    batch = [record(n, pad=1_500) for n in range(9)]
    fake.fail_next(1, 500, code="InternalServerError", message="boom", after=1)
    async with opened(tmp_path, options(fake, max_request_bytes=5_000)) as sink:
        with pytest.raises(TransientError, match="500"):
            await sink.send(batch)
        delivered_first = [row["n"] for row in fake.rows]
        assert 0 < len(delivered_first) < 9
        result = await sink.send(batch)
    assert not result.rejected
    assert [row["n"] for row in fake.rows] == list(range(9))


async def test_a_new_batch_after_a_failure_is_sent_whole(tmp_path: Path, fake: FakeAzureMonitor) -> None:
    """The memory of delivered calls belongs to one batch: a different batch is sent in full."""
    fake.fail_next(1, 500, code="InternalServerError", message="boom", after=1)
    async with opened(tmp_path, options(fake, max_request_bytes=5_000)) as sink:
        with pytest.raises(TransientError):
            await sink.send([record(n, pad=1_500) for n in range(9)])
        fake.rows.clear()
        other = [record(n, pad=1_500) for n in range(100, 109)]
        await sink.send(other)
    assert [row["n"] for row in fake.rows] == list(range(100, 109))


async def test_bad_data_is_a_permanent_error(fake: FakeAzureMonitor, sink: AzureLogsIngestionSink) -> None:
    """400 for the only call of a batch → PermanentError with Azure's code and message."""
    fake.fail_next(1, 400, code="InvalidPayload", message="Row 0 does not match the stream schema.")
    with pytest.raises(PermanentError, match="InvalidPayload: Row 0 does not match"):
        await sink.send([record(0)])


async def test_bad_data_in_one_call_of_several_rejects_only_its_records(
    tmp_path: Path, fake: FakeAzureMonitor
) -> None:
    """400 for one call of a split batch: that call's records are rejected, the other calls delivered."""
    batch = [record(n, pad=1_500) for n in range(9)]
    fake.fail_next(1, 400, code="InvalidPayload", message="schema mismatch", after=1)
    async with opened(tmp_path, options(fake, max_request_bytes=5_000)) as sink:
        result = await sink.send(batch)
    rejected = {index for index, _ in result.rejected}
    assert rejected and all("schema mismatch" in reason for _, reason in result.rejected)
    assert {row["n"] for row in fake.rows} == set(range(9)) - rejected


async def test_unknown_dcr_stops_the_route_as_a_config_error(tmp_path: Path, fake: FakeAzureMonitor) -> None:
    """404 for the DCR → ComponentConfigError (fix the file and reload), not a dead-lettered batch."""
    async with opened(
        tmp_path, options(fake, dcr_immutable_id="dcr-ffffffffffffffffffffffffffffffff")
    ) as sink:
        with pytest.raises(ComponentConfigError, match="NotFound"):
            await sink.send([record(0)])


async def test_forbidden_is_auth_error_with_the_role_hint(
    fake: FakeAzureMonitor, sink: AzureLogsIngestionSink
) -> None:
    """403 → AuthError naming the role the app needs on the DCR."""
    fake.fail_next(
        1, 403, code="OperationFailed", message="The authentication token provided does not have access."
    )
    with pytest.raises(AuthError, match="Monitoring Metrics Publisher"):
        await sink.send([record(0)])


# -- tokens ------------------------------------------------------------------------------------------


async def test_token_is_cached_across_calls(fake: FakeAzureMonitor, sink: AzureLogsIngestionSink) -> None:
    """One token serves many calls while it is valid."""
    for n in range(3):
        await sink.send([record(n)])
    assert fake.tokens_issued == 1 and len(fake.calls) == 3


async def test_token_near_expiry_is_renewed_before_the_call(tmp_path: Path) -> None:
    """A token whose lifetime is already over is not reused: each call fetches a fresh one."""
    fake = FakeAzureMonitor(token_lifetime=0)
    async with fake:
        async with opened(tmp_path, options(fake)) as sink:
            await sink.send([record(0)])
            await sink.send([record(1)])
    assert fake.tokens_issued == 2


async def test_revoked_token_is_refreshed_once_on_401(
    fake: FakeAzureMonitor, sink: AzureLogsIngestionSink
) -> None:
    """A 401 with a cached token: the sink fetches a new token and the call goes through."""
    await sink.send([record(0)])
    fake.revoke_tokens()
    await sink.send([record(1)])
    assert fake.tokens_issued == 2 and [row["n"] for row in fake.rows] == [0, 1]


async def test_persistent_401_is_auth_error(fake: FakeAzureMonitor, sink: AzureLogsIngestionSink) -> None:
    """A 401 even with a fresh token → AuthError (no retry storm)."""
    fake.fail_next(2, 401, code="InvalidToken", message="The access token is invalid.")
    with pytest.raises(AuthError, match="InvalidToken"):
        await sink.send([record(0)])
    assert fake.tokens_issued == 2


async def test_wrong_client_secret_is_auth_error_without_the_secret(
    tmp_path: Path, fake: FakeAzureMonitor
) -> None:
    """Entra ID refusing the secret (401 invalid_client AADSTS7000215) → AuthError, secret not echoed."""
    async with opened(tmp_path, options(fake, client_secret="not-the-secret-value")) as sink:
        with pytest.raises(AuthError, match="invalid_client: AADSTS7000215") as caught:
            await sink.send([record(0)])
    assert "not-the-secret-value" not in str(caught.value)
    assert "Trace ID" not in str(caught.value)


async def test_health_obtains_a_token(
    tmp_path: Path, fake: FakeAzureMonitor, sink: AzureLogsIngestionSink
) -> None:
    """health() is ok when Entra ID grants a token, and says why not for an unknown tenant."""
    assert (await sink.health()).ok
    assert fake.tokens_issued == 1 and fake.calls == []
    async with opened(tmp_path, options(fake, tenant_id="nobody")) as other:
        health = await other.health()
    assert not health.ok and "AADSTS90002" in health.detail


async def test_slow_service_is_transient(tmp_path: Path, fake: FakeAzureMonitor) -> None:
    """A call that gets no answer within `timeout` → TransientError."""
    fake.hold_next(1)
    async with opened(tmp_path, options(fake, timeout=0.2)) as sink:
        with pytest.raises(TransientError, match="no answer in time"):
            await sink.send([record(0)])
    fake.release_held()


def test_secret_never_appears_in_options_repr(fake: FakeAzureMonitor) -> None:
    """client_secret is a SecretStr."""
    text = repr(AzureLogsIngestionSink.Options.model_validate(options(fake)))
    assert fake.client_secret not in text


# -- TLS ---------------------------------------------------------------------------------------------


async def test_tls_is_verified_by_default_and_a_ca_file_makes_it_work(tmp_path: Path) -> None:
    """Over HTTPS with a self-signed CA: health and send fail without `tls.ca_file`, succeed with it."""
    server_context, ca_file = self_signed_tls(tmp_path)
    fake = FakeAzureMonitor(ssl_context=server_context)
    async with fake as url:
        assert url.startswith("https://")
        await assert_tls_verified(
            lambda tls: opened(tmp_path, options(fake, **tls)), [record(0)], str(ca_file)
        )
    assert len(fake.rows) == 1


# -- end to end --------------------------------------------------------------------------------------


async def test_pipeline_ships_every_simulated_record_to_azure(tmp_path: Path) -> None:
    """The daemon reads 500 records per subtype from the simulator; every `_id` reaches the fake; exit 0."""
    fake = FakeAzureMonitor()
    async with fake:
        sink = {"type": "azure_logs_ingestion", **options(fake), "client_secret": {"$env": "AZURE_SECRET"}}
        run = await ship_backlog(
            tmp_path,
            fake,
            sink,
            lambda: (row["Id"] for row in fake.rows),
            streams={"alerts": ["dlp", "malware"]},
            record_format="cef",
            env={"AZURE_SECRET": fake.client_secret},
        )
    assert run.exit_code == 0
    assert {row["Id"] for row in fake.rows} == run.ids
    assert all(
        row["RawData"].startswith("CEF:0|") and row["TimeGenerated"].endswith("Z") for row in fake.rows
    )
    assert fake.client_secret not in run.output
