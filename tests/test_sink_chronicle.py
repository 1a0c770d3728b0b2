"""The `chronicle` log sink against a fake Google token endpoint and Chronicle ingestion API."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest
from ce_chronicle import ChronicleSink
from ce_chronicle.fake import FakeChronicle
from ce_chronicle.sink import regional_endpoint
from pydantic import ValidationError

from ce_daemon.errors import AuthError, ComponentConfigError, PermanentError, TransientError
from ce_daemon.plugin import OutRecord, PluginContext
from ce_daemon.testing.pipelines import ship_backlog
from ce_daemon.testing.sinks import assert_tls_verified, open_sink
from ce_daemon.testing.tls import self_signed_tls

TS = 1_700_000_000


def record(n: int, *, fmt: str = "cef", pad: int = 0) -> OutRecord:
    rid = f"{n:024x}"
    if fmt == "json":
        data = orjson.dumps({"_id": rid, "timestamp": TS, "n": n, "pad": "x" * pad})
    else:
        data = f'CEF:0|Netskope|demo|1.0|dlp|alert {n}|5|externalId={rid} msg="q" \\\\ {"x" * pad}'.encode()
    return OutRecord(rid, TS, data, "alerts", "dlp", fmt)


@pytest.fixture
async def fake() -> AsyncIterator[FakeChronicle]:
    server = FakeChronicle()
    async with server:
        yield server


def options(fake: FakeChronicle, **overrides: Any) -> dict[str, Any]:
    return {
        "customer_id": fake.customer_id,
        "endpoint": fake.url,
        "credentials": fake.service_account_key(),
        **overrides,
    }


def opened(tmp_path: Path, raw: dict[str, Any]) -> AbstractAsyncContextManager[ChronicleSink]:
    return open_sink(ChronicleSink, raw, tmp_path, "chronicle")


@pytest.fixture
async def sink(tmp_path: Path, fake: FakeChronicle) -> AsyncIterator[ChronicleSink]:
    async with opened(tmp_path, options(fake)) as opened_sink:
        yield opened_sink


# -- payload -----------------------------------------------------------------------------------------


async def test_batch_is_one_batch_create_with_log_text_and_microseconds(
    fake: FakeChronicle, sink: ChronicleSink
) -> None:
    """The body is {customer_id, log_type NETSKOPE_ALERT_V2, entries: [{log_text, ts_epoch_microseconds}]}."""
    batch = [record(n) for n in range(3)]
    result = await sink.send(batch)
    assert not result.rejected
    (call,) = fake.calls
    assert (call.customer_id, call.log_type, call.namespace, call.labels) == (
        fake.customer_id,
        "NETSKOPE_ALERT_V2",
        None,
        [],
    )
    assert call.gzip
    assert fake.entries == [
        {"log_text": r.data.decode(), "ts_epoch_microseconds": TS * 1_000_000} for r in batch
    ]


async def test_json_records_travel_as_their_text(fake: FakeChronicle, sink: ChronicleSink) -> None:
    """A JSON record's log_text is the JSON document as text, unchanged."""
    batch = [record(0, fmt="json")]
    await sink.send(batch)
    assert orjson.loads(fake.entries[0]["log_text"]) == orjson.loads(batch[0].data)


async def test_namespace_labels_and_log_type_are_sent(tmp_path: Path, fake: FakeChronicle) -> None:
    """namespace, labels (as [{key, value}]) and a custom log_type go in every request."""
    async with opened(
        tmp_path,
        options(
            fake,
            namespace="prod",
            labels={"source": "ce-daemon", "tenant": "acme"},
            log_type="NETSKOPE_ALERT",
        ),
    ) as sink:
        await sink.send([record(0)])
    (call,) = fake.calls
    assert call.namespace == "prod" and call.log_type == "NETSKOPE_ALERT"
    assert call.labels == [{"key": "source", "value": "ce-daemon"}, {"key": "tenant", "value": "acme"}]


async def test_key_can_be_read_from_a_file_relative_to_the_pipeline(
    tmp_path: Path, fake: FakeChronicle
) -> None:
    """credentials_file points at the JSON key; a relative path resolves against the pipeline's folder."""
    (tmp_path / "key.json").write_text(fake.service_account_key())
    raw = {"customer_id": fake.customer_id, "endpoint": fake.url, "credentials_file": "key.json"}
    async with opened(tmp_path, raw) as sink:
        await sink.send([record(0)])
    assert len(fake.entries) == 1


def test_exactly_one_key_source_is_required(fake: FakeChronicle) -> None:
    """Neither or both of credentials / credentials_file is a validation error."""
    with pytest.raises(ValidationError, match="exactly one"):
        ChronicleSink.Options.model_validate({"customer_id": fake.customer_id})
    with pytest.raises(ValidationError, match="exactly one"):
        ChronicleSink.Options.model_validate({**options(fake), "credentials_file": "key.json"})


async def test_unreadable_key_is_a_config_error_that_never_quotes_it(
    tmp_path: Path, fake: FakeChronicle
) -> None:
    """A key that is not JSON is refused at open, with a message that never quotes the key."""
    sink = ChronicleSink(
        ChronicleSink.Options.model_validate(options(fake, credentials="not json SECRET-MATERIAL")),
        PluginContext(name="chronicle", base_dir=tmp_path, data_dir=tmp_path),
    )
    with pytest.raises(ComponentConfigError, match="not valid JSON") as caught:
        await sink.open()
    assert "SECRET-MATERIAL" not in str(caught.value)
    await sink.close()


def test_region_selects_the_regional_host() -> None:
    """`us` is the unprefixed host; other regions prefix it (europe-, asia-southeast1-…)."""
    assert regional_endpoint("us") == "https://malachiteingestion-pa.googleapis.com"
    assert regional_endpoint("europe") == "https://europe-malachiteingestion-pa.googleapis.com"
    assert (
        regional_endpoint("asia-southeast1") == "https://asia-southeast1-malachiteingestion-pa.googleapis.com"
    )


# -- size limits -------------------------------------------------------------------------------------


async def test_requests_stay_under_800000_bytes(fake: FakeChronicle, sink: ChronicleSink) -> None:
    """A batch over the default 800,000-byte cap is split; each JSON body fits; each entry arrives once."""
    batch = [record(n, pad=20_000) for n in range(90)]
    await sink.send(batch)
    assert len(fake.calls) > 1
    assert all(call.json_bytes <= 800_000 for call in fake.calls)
    assert [e["log_text"] for e in fake.entries] == [r.data.decode() for r in batch]


async def test_payload_size_refusal_splits_the_request(tmp_path: Path) -> None:
    """A service limit below ours ("payload size exceeds the limit") makes the sink halve the request."""
    fake = FakeChronicle(max_body_bytes=20_000)
    async with fake:
        async with opened(tmp_path, options(fake, gzip=False)) as sink:
            batch = [record(n, pad=1_000) for n in range(60)]
            result = await sink.send(batch)
    assert not result.rejected
    assert any(call.status == 400 for call in fake.calls)
    assert len(fake.entries) == 60


async def test_entry_too_large_for_any_request_is_rejected_alone(
    fake: FakeChronicle, sink: ChronicleSink
) -> None:
    """An entry bigger than the request cap is rejected; its neighbours are delivered."""
    result = await sink.send([record(0), record(1, pad=900_000), record(2)])
    assert [index for index, _ in result.rejected] == [1]
    assert len(fake.entries) == 2


# -- errors ------------------------------------------------------------------------------------------


async def test_resource_exhausted_with_retry_after_is_transient(
    fake: FakeChronicle, sink: ChronicleSink
) -> None:
    """429 RESOURCE_EXHAUSTED with Retry-After → TransientError carrying the delay."""
    fake.fail_next(1, 429, message="Quota exceeded for quota metric 'Ingestion requests'", retry_after=30)
    with pytest.raises(TransientError, match="RESOURCE_EXHAUSTED") as caught:
        await sink.send([record(0)])
    assert caught.value.retry_after == 30


async def test_server_error_is_transient(fake: FakeChronicle, sink: ChronicleSink) -> None:
    """503 UNAVAILABLE → TransientError."""
    fake.fail_next(1, 503, message="The service is currently unavailable.")
    with pytest.raises(TransientError, match="UNAVAILABLE"):
        await sink.send([record(0)])


async def test_invalid_argument_is_permanent(tmp_path: Path, fake: FakeChronicle) -> None:
    """400 INVALID_ARGUMENT (an unknown log type) → PermanentError with Google's message."""
    async with opened(tmp_path, options(fake, log_type="NOT_A_TYPE")) as sink:
        with pytest.raises(PermanentError, match="INVALID_ARGUMENT: Invalid log type"):
            await sink.send([record(0)])


async def test_invalid_argument_for_one_request_of_several_rejects_its_entries(
    tmp_path: Path, fake: FakeChronicle
) -> None:
    """When one request of a split batch is refused, only its records are rejected."""
    batch = [record(n, pad=3_000) for n in range(20)]
    fake.fail_next(1, 400, message="bad entry", after=1)
    async with opened(tmp_path, options(fake, max_request_bytes=20_000)) as sink:
        result = await sink.send(batch)
    rejected = {index for index, _ in result.rejected}
    assert rejected and len(rejected) < 20
    assert len(fake.entries) == 20 - len(rejected)


async def test_retry_after_partial_failure_does_not_resend_accepted_requests(
    tmp_path: Path, fake: FakeChronicle
) -> None:
    """A transient failure of request 2: the retried batch sends the rest only, no duplicate entries."""
    batch = [record(n, pad=3_000) for n in range(20)]
    fake.fail_next(1, 503, message="unavailable", after=1)
    async with opened(tmp_path, options(fake, max_request_bytes=20_000)) as sink:
        with pytest.raises(TransientError):
            await sink.send(batch)
        assert 0 < len(fake.entries) < 20
        await sink.send(batch)
    assert [e["log_text"] for e in fake.entries] == [r.data.decode() for r in batch]


async def test_unknown_customer_is_auth_error(tmp_path: Path, fake: FakeChronicle) -> None:
    """403 PERMISSION_DENIED (a customer id the account may not write to) → AuthError."""
    async with opened(tmp_path, options(fake, customer_id="00000000-0000-0000-0000-000000000000")) as sink:
        with pytest.raises(AuthError, match="PERMISSION_DENIED"):
            await sink.send([record(0)])


# -- tokens ------------------------------------------------------------------------------------------


async def test_token_is_cached_and_refreshed_once_after_revocation(
    fake: FakeChronicle, sink: ChronicleSink
) -> None:
    """One token serves many calls; a 401 fetches one new token and the call succeeds."""
    await sink.send([record(0)])
    await sink.send([record(1)])
    assert fake.tokens_issued == 1
    fake.revoke_tokens()
    await sink.send([record(2)])
    assert fake.tokens_issued == 2 and len(fake.entries) == 3


async def test_persistent_401_is_auth_error(fake: FakeChronicle, sink: ChronicleSink) -> None:
    """401 UNAUTHENTICATED even with a fresh token → AuthError."""
    fake.fail_next(2, 401, message="Request had invalid authentication credentials.")
    with pytest.raises(AuthError, match="UNAUTHENTICATED"):
        await sink.send([record(0)])


async def test_key_google_does_not_know_is_refused_by_signature(tmp_path: Path, fake: FakeChronicle) -> None:
    """A JWT signed with another key: the fake checks RS256, answers invalid_grant → AuthError, unhealthy."""
    async with opened(tmp_path, options(fake, credentials=fake.service_account_key(foreign=True))) as sink:
        health = await sink.health()
        with pytest.raises(AuthError, match="invalid_grant: Invalid JWT Signature"):
            await sink.send([record(0)])
    assert not health.ok and "Invalid JWT Signature" in health.detail
    assert "PRIVATE KEY" not in health.detail


async def test_health_obtains_a_token(fake: FakeChronicle, sink: ChronicleSink) -> None:
    """health() is ok once the token endpoint grants a token (no ingestion call is made)."""
    health = await sink.health()
    assert health.ok and fake.client_email in health.detail
    assert fake.tokens_issued == 1 and fake.calls == []


async def test_slow_service_is_transient(tmp_path: Path, fake: FakeChronicle) -> None:
    """No answer within `timeout` → TransientError."""
    fake.hold_next(1)
    async with opened(tmp_path, options(fake, timeout=0.2)) as sink:
        with pytest.raises(TransientError, match="no answer in time"):
            await sink.send([record(0)])
    fake.release_held()


def test_key_never_appears_in_options_repr(fake: FakeChronicle) -> None:
    """The JSON key is a SecretStr."""
    text = repr(ChronicleSink.Options.model_validate(options(fake)))
    assert "PRIVATE KEY" not in text


# -- TLS ---------------------------------------------------------------------------------------------


async def test_tls_is_verified_by_default_and_a_ca_file_makes_it_work(tmp_path: Path) -> None:
    """Over HTTPS with a self-signed CA: health and send fail without `tls.ca_file`, succeed with it."""
    server_context, ca_file = self_signed_tls(tmp_path)
    fake = FakeChronicle(ssl_context=server_context)
    async with fake as url:
        assert url.startswith("https://")
        await assert_tls_verified(
            lambda tls: opened(tmp_path, options(fake, **tls)), [record(0)], str(ca_file)
        )
    assert len(fake.entries) == 1


# -- end to end --------------------------------------------------------------------------------------


async def test_pipeline_ships_every_simulated_record_to_chronicle(tmp_path: Path) -> None:
    """The daemon reads 500 records per subtype from the simulator; every `_id` reaches the fake; exit 0."""
    fake = FakeChronicle()
    external_id = re.compile(r"externalId=([0-9a-f]+)")

    def shipped() -> set[str]:
        return {m.group(1) for e in fake.entries if (m := external_id.search(e["log_text"]))}

    async with fake as url:
        (tmp_path / "sa-key.json").write_text(fake.service_account_key())
        sink = {
            "type": "chronicle",
            "customer_id": fake.customer_id,
            "endpoint": url,
            "credentials": {"$file": "sa-key.json"},
        }
        run = await ship_backlog(
            tmp_path, fake, sink, shipped, streams={"alerts": ["dlp", "malware"]}, record_format="cef"
        )
    assert run.exit_code == 0
    assert shipped() == run.ids
    assert len(fake.entries) == len(run.ids)
    assert "PRIVATE KEY" not in run.output
