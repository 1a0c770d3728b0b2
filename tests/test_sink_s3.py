"""The `s3` log sink against a fake S3 that re-computes every SigV4 signature itself."""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest
from ce_s3 import S3Sink
from ce_s3.fake import FakeS3, expected_signature
from ce_s3.sigv4 import EMPTY_SHA256, Credentials, authorization, sha256_hex, uri_encode

from ce_daemon.errors import AuthError, ComponentConfigError, PermanentError, TransientError
from ce_daemon.plugin import OutRecord, PluginContext
from ce_daemon.testing.pipelines import ship_backlog
from ce_daemon.testing.sinks import assert_tls_verified, open_sink
from ce_daemon.testing.tls import self_signed_tls

# AWS's documented example credentials ("Authenticating Requests: Using the Authorization Header").
AWS_EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
TS = 1_700_000_000  # 2023-11-14T22:13:20Z


def record(
    n: int, *, subtype: str = "dlp", kind: str = "alerts", fmt: str = "json", ts: int = TS
) -> OutRecord:
    rid = f"{n:024x}"
    if fmt == "json":
        data = orjson.dumps({"_id": rid, "timestamp": ts, "alert_type": subtype, "n": n})
    else:
        data = f"CEF:0|Netskope|demo|1.0|{subtype}|alert {n}|5|externalId={rid} msg=a \\= b".encode()
    return OutRecord(rid, ts, data, kind, subtype, fmt)


@pytest.fixture
async def fake() -> AsyncIterator[FakeS3]:
    server = FakeS3(buckets=["netskope"])
    async with server:
        yield server


def options(fake: FakeS3, **overrides: Any) -> dict[str, Any]:
    return {
        "bucket": "netskope",
        "endpoint": fake.url,
        "access_key_id": fake.access_key_id,
        "secret_access_key": fake.secret_access_key,
        **overrides,
    }


def opened(tmp_path: Path, raw: dict[str, Any]) -> AbstractAsyncContextManager[S3Sink]:
    return open_sink(S3Sink, raw, tmp_path, "s3")


@pytest.fixture
async def sink(tmp_path: Path, fake: FakeS3) -> AsyncIterator[S3Sink]:
    async with opened(tmp_path, options(fake)) as opened_sink:
        yield opened_sink


# -- signing -----------------------------------------------------------------------------------------


def test_sigv4_matches_aws_documented_get_object_example() -> None:
    """The signer reproduces AWS's documented GET Object example signature exactly."""
    headers = {
        "Host": "examplebucket.s3.amazonaws.com",
        "Range": "bytes=0-9",
        "x-amz-content-sha256": EMPTY_SHA256,
        "x-amz-date": "20130524T000000Z",
    }
    value = authorization(
        AWS_EXAMPLE,
        method="GET",
        encoded_path="/test.txt",
        headers=headers,
        payload_hash=EMPTY_SHA256,
        region="us-east-1",
    )
    assert value == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_sigv4_matches_aws_documented_put_object_example() -> None:
    """The signer reproduces AWS's PUT Object example: `$` in the key encoded, payload hash signed."""
    payload_hash = sha256_hex(b"Welcome to Amazon S3.")
    assert payload_hash == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
    headers = {
        "Host": "examplebucket.s3.amazonaws.com",
        "Date": "Fri, 24 May 2013 00:00:00 GMT",
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": payload_hash,
    }
    path = "/" + uri_encode("test$file.text", keep_slash=True)
    assert path == "/test%24file.text"
    value = authorization(
        AWS_EXAMPLE,
        method="PUT",
        encoded_path=path,
        headers=headers,
        payload_hash=payload_hash,
        region="us-east-1",
    )
    assert value.endswith("Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    assert "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class," in value


def test_sigv4_matches_aws_documented_list_objects_example() -> None:
    """Query parameters are encoded and sorted as in AWS's GET Bucket example (max-keys=2&prefix=J)."""
    headers = {
        "Host": "examplebucket.s3.amazonaws.com",
        "x-amz-content-sha256": EMPTY_SHA256,
        "x-amz-date": "20130524T000000Z",
    }
    value = authorization(
        AWS_EXAMPLE,
        method="GET",
        encoded_path="/",
        query=[("prefix", "J"), ("max-keys", "2")],
        headers=headers,
        payload_hash=EMPTY_SHA256,
        region="us-east-1",
    )
    assert value.endswith("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")


def test_fake_verifier_agrees_with_aws_documented_example() -> None:
    """The fake's independent verifier computes AWS's documented signature too (so it can judge the sink)."""
    payload_hash = sha256_hex(b"Welcome to Amazon S3.")
    wanted = expected_signature(
        AWS_EXAMPLE.secret_access_key,
        method="PUT",
        raw_path="/test%24file.text",
        raw_query="",
        headers={
            "host": "examplebucket.s3.amazonaws.com",
            "date": "Fri, 24 May 2013 00:00:00 GMT",
            "x-amz-date": "20130524T000000Z",
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
            "x-amz-content-sha256": payload_hash,
        },
        signed_headers=["date", "host", "x-amz-content-sha256", "x-amz-date", "x-amz-storage-class"],
        payload_hash=payload_hash,
        amz_date="20130524T000000Z",
        region="us-east-1",
    )
    assert wanted == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"


def test_virtual_hosted_addressing_puts_the_bucket_in_the_host(tmp_path: Path) -> None:
    """`addressing: virtual` sends `{bucket}.{host}/{key}`; path-style keeps the bucket in the path."""
    raw = {"bucket": "logs", "region": "eu-west-1", "access_key_id": "A", "secret_access_key": "S"}
    context = PluginContext(name="s3", base_dir=tmp_path, data_dir=tmp_path)
    virtual = S3Sink(S3Sink.Options.model_validate({**raw, "addressing": "virtual"}), context)
    assert virtual.location("a/b c.gz") == ("logs.s3.eu-west-1.amazonaws.com", "/a/b%20c.gz")
    assert str(virtual.url(*virtual.location("k"))) == "https://logs.s3.eu-west-1.amazonaws.com/k"
    path_style = S3Sink(S3Sink.Options.model_validate(raw), context)
    assert path_style.location("a/b") == ("s3.eu-west-1.amazonaws.com", "/logs/a/b")
    assert path_style.location() == ("s3.eu-west-1.amazonaws.com", "/logs")


# -- objects -----------------------------------------------------------------------------------------


async def test_batch_becomes_one_gzip_ndjson_object_at_a_deterministic_key(
    fake: FakeS3, sink: S3Sink
) -> None:
    """JSON records as they are, one per line, gzip, at prefix/kind/subtype/Y/M/D/H/first-last-count."""
    batch = [record(n) for n in range(3)]
    result = await sink.send(batch)
    assert not result.rejected
    key = f"netskope/alerts/dlp/2023/11/14/22/{batch[0].id}-{batch[-1].id}-3.ndjson.gz"
    stored = fake.stored(key)
    assert gzip.decompress(stored.raw) == stored.body
    assert [orjson.loads(line) for line in stored.lines()] == [orjson.loads(r.data) for r in batch]
    assert stored.headers["content-encoding"] == "gzip"
    assert stored.headers["content-type"] == "application/x-ndjson"


async def test_cef_lines_are_wrapped_as_message_objects(fake: FakeS3, sink: S3Sink) -> None:
    """In ndjson content a CEF line becomes {"message", "id", "timestamp"}, the line intact."""
    batch = [record(n, fmt="cef") for n in range(2)]
    await sink.send(batch)
    (stored,) = fake.objects.values()
    rows = [orjson.loads(line) for line in stored.lines()]
    assert rows == [{"message": r.data.decode(), "id": r.id, "timestamp": TS} for r in batch]


async def test_lines_content_writes_the_formatted_lines_as_they_are(tmp_path: Path, fake: FakeS3) -> None:
    """`content: lines` writes each formatted record as its own line, in a .log.gz object."""
    async with opened(tmp_path, options(fake, content="lines", prefix="raw/")) as sink:
        batch = [record(n, fmt="cef") for n in range(2)]
        await sink.send(batch)
    ((_, key),) = fake.objects.keys()
    assert key.startswith("raw/alerts/dlp/") and key.endswith("-2.log.gz")
    assert fake.stored(key).lines() == [r.data for r in batch]


async def test_resent_batch_overwrites_its_object_instead_of_duplicating(fake: FakeS3, sink: S3Sink) -> None:
    """Sending the same batch twice (a retry or a replay) writes the same key: one object, two PUTs."""
    batch = [record(n) for n in range(5)]
    await sink.send(batch)
    await sink.send(batch)
    assert len(fake.puts) == 2 and fake.puts[0] == fake.puts[1]
    assert len(fake.objects) == 1


async def test_mixed_batch_is_split_per_kind_and_subtype(fake: FakeS3, sink: S3Sink) -> None:
    """A batch holding two streams becomes one object under each stream's own prefix."""
    batch = [record(0), record(1, subtype="malware"), record(2), record(3, kind="events", subtype="page")]
    await sink.send(batch)
    prefixes = sorted(key.rsplit("/", 5)[0] for _, key in fake.objects)
    assert prefixes == ["netskope/alerts/dlp", "netskope/alerts/malware", "netskope/events/page"]
    dlp = next(o for (_, k), o in fake.objects.items() if "/dlp/" in k)
    assert len(dlp.lines()) == 2 and dlp.key.endswith(f"{batch[0].id}-{batch[2].id}-2.ndjson.gz")


async def test_object_size_cap_splits_a_batch_into_several_objects(tmp_path: Path, fake: FakeS3) -> None:
    """With `max_object_bytes`, no object's uncompressed body passes the cap; every record is written once."""
    async with opened(tmp_path, options(fake, max_object_bytes=2048)) as sink:
        batch = [record(n) for n in range(100)]
        await sink.send(batch)
    assert len(fake.objects) > 1
    assert all(len(o.body) <= 2048 for o in fake.objects.values())
    ids = [orjson.loads(line)["_id"] for o in fake.objects.values() for line in o.lines()]
    assert sorted(ids) == sorted(r.id for r in batch)


async def test_session_token_is_sent_and_signed(tmp_path: Path) -> None:
    """Temporary credentials: x-amz-security-token is sent and covered by the signature."""
    fake = FakeS3(session_token="sts-session-token")
    async with (
        fake,
        opened(tmp_path, options(fake)) as without,
        opened(tmp_path, options(fake, session_token="sts-session-token")) as with_token,
    ):
        with pytest.raises(AuthError, match="InvalidToken"):
            await without.send([record(0)])
        await with_token.send([record(0)])


# -- errors ------------------------------------------------------------------------------------------


async def test_wrong_secret_is_signature_does_not_match_and_auth_error(tmp_path: Path, fake: FakeS3) -> None:
    """A wrong secret key: the fake's own signature check says SignatureDoesNotMatch → AuthError."""
    async with opened(tmp_path, options(fake, secret_access_key="not-the-secret")) as sink:
        with pytest.raises(AuthError, match="SignatureDoesNotMatch") as caught:
            await sink.send([record(0)])
    assert "not-the-secret" not in str(caught.value)
    assert fake.objects == {}


async def test_unknown_access_key_is_auth_error(tmp_path: Path, fake: FakeS3) -> None:
    """An access key the store does not know: InvalidAccessKeyId → AuthError."""
    async with opened(tmp_path, options(fake, access_key_id="AKIANOBODY")) as sink:
        with pytest.raises(AuthError, match="InvalidAccessKeyId"):
            await sink.send([record(0)])


async def test_access_denied_is_auth_error(fake: FakeS3, sink: S3Sink) -> None:
    """403 AccessDenied (a bucket policy refusing the PUT) → AuthError."""
    fake.fail_next(1, 403, code="AccessDenied", message="Access Denied")
    with pytest.raises(AuthError, match="AccessDenied"):
        await sink.send([record(0)])


async def test_missing_bucket_is_permanent_error_naming_it(tmp_path: Path, fake: FakeS3) -> None:
    """NoSuchBucket → PermanentError whose message names the bucket and the endpoint."""
    async with opened(tmp_path, options(fake, bucket="gone")) as sink:
        with pytest.raises(PermanentError, match=r"bucket 'gone' does not exist at http://127\.0\.0\.1"):
            await sink.send([record(0)])


async def test_wrong_region_is_a_config_error_naming_the_right_one(tmp_path: Path, fake: FakeS3) -> None:
    """A request signed for another region: health says where the bucket is; send stops the route (config)."""
    async with opened(tmp_path, options(fake, region="eu-west-3")) as sink:
        health = await sink.health()
        with pytest.raises(ComponentConfigError, match="lives in region 'us-east-1'"):
            await sink.send([record(0)])
    assert not health.ok and "'us-east-1'" in health.detail
    assert fake.objects == {}


async def test_slow_down_with_retry_after_is_transient(fake: FakeS3, sink: S3Sink) -> None:
    """503 SlowDown with Retry-After → TransientError carrying the delay; the next attempt succeeds."""
    fake.fail_next(1, 503, code="SlowDown", message="Please reduce your request rate.", retry_after=7)
    with pytest.raises(TransientError, match="SlowDown") as caught:
        await sink.send([record(0)])
    assert caught.value.retry_after == 7
    await sink.send([record(0)])
    assert len(fake.objects) == 1


async def test_internal_error_is_transient(fake: FakeS3, sink: S3Sink) -> None:
    """500 InternalError → TransientError (retry the batch later)."""
    fake.fail_next(
        1, 500, code="InternalError", message="We encountered an internal error. Please try again."
    )
    with pytest.raises(TransientError, match="InternalError"):
        await sink.send([record(0)])


async def test_object_too_large_for_the_store_is_permanent(tmp_path: Path) -> None:
    """A store refusing the object size (EntityTooLarge) → PermanentError."""
    fake = FakeS3(max_object_bytes=64)
    async with fake, opened(tmp_path, options(fake)) as sink:
        with pytest.raises(PermanentError, match="EntityTooLarge"):
            await sink.send([record(n) for n in range(50)])


async def test_slow_store_is_transient_timeout(tmp_path: Path, fake: FakeS3) -> None:
    """A store that does not answer within `timeout` → TransientError (the batch is retried later)."""
    fake.hold_next(1)
    async with opened(tmp_path, options(fake, timeout=0.2)) as sink:
        with pytest.raises(TransientError, match="no answer in time"):
            await sink.send([record(0)])
    fake.release_held()


# -- health ------------------------------------------------------------------------------------------


async def test_health_heads_the_bucket(tmp_path: Path, fake: FakeS3, sink: S3Sink) -> None:
    """health() is a signed HEAD of the bucket: ok for a good bucket, a clear detail otherwise."""
    assert (await sink.health()).ok
    assert (fake.requests[-1].method, fake.requests[-1].path) == ("HEAD", "/netskope")
    async with (
        opened(tmp_path, options(fake, bucket="absent")) as missing,
        opened(tmp_path, options(fake, secret_access_key="wrong-secret")) as wrong,
    ):
        missing_health = await missing.health()
        assert not missing_health.ok and "'absent' does not exist" in missing_health.detail
        wrong_health = await wrong.health()
        assert not wrong_health.ok and "HTTP 403" in wrong_health.detail
        assert "wrong-secret" not in wrong_health.detail


async def test_health_reports_unreachable_endpoint(tmp_path: Path) -> None:
    """A store that is not listening → health not ok, with the connection error."""
    async with FakeS3() as url:
        pass
    async with opened(
        tmp_path, {"bucket": "netskope", "endpoint": url, "access_key_id": "A", "secret_access_key": "S"}
    ) as sink:
        health = await sink.health()
    assert not health.ok and "ClientConnectorError" in health.detail


def test_secrets_never_appear_in_options_repr() -> None:
    """Keys and tokens are SecretStr: printing the options shows no secret."""
    raw = {
        "bucket": "logs",
        "access_key_id": "AKIAVISIBLE",
        "secret_access_key": "s3cr3t",
        "session_token": "t0k3n",
    }
    text = repr(S3Sink.Options.model_validate(raw))
    assert "s3cr3t" not in text and "t0k3n" not in text and "AKIAVISIBLE" not in text


# -- TLS ---------------------------------------------------------------------------------------------


async def test_tls_is_verified_by_default_and_a_ca_file_makes_it_work(tmp_path: Path) -> None:
    """Over HTTPS with a self-signed CA: refused without `tls.ca_file`, accepted with it (a relative path)."""
    server_context, ca_file = self_signed_tls(tmp_path)
    fake = FakeS3(ssl_context=server_context)
    async with fake as url:
        assert url.startswith("https://")
        await assert_tls_verified(
            lambda tls: opened(tmp_path, options(fake, **tls)), [record(0)], ca_file.name
        )
    assert len(fake.objects) == 1


# -- end to end --------------------------------------------------------------------------------------


async def test_pipeline_ships_every_simulated_record_to_s3(tmp_path: Path) -> None:
    """The daemon reads 500 records per subtype from the simulator; every `_id` reaches the fake; exit 0."""
    fake = FakeS3(buckets=["netskope"])

    def shipped() -> set[str]:
        return {orjson.loads(line)["id"] for o in fake.objects.values() for line in o.lines()}

    async with fake as url:
        sink = {
            "type": "s3",
            "bucket": "netskope",
            "endpoint": url,
            "region": "us-east-1",
            "access_key_id": {"$env": "S3_KEY"},
            "secret_access_key": {"$env": "S3_SECRET"},
        }
        env = {"S3_KEY": fake.access_key_id, "S3_SECRET": fake.secret_access_key}
        run = await ship_backlog(
            tmp_path,
            fake,
            sink,
            shipped,
            streams={"alerts": ["dlp", "malware"]},
            record_format="cef",
            env=env,
        )
    assert run.exit_code == 0
    assert shipped() == run.ids
    assert all(re.search(r"/alerts/(dlp|malware)/\d{4}/\d\d/\d\d/\d\d/", key) for _, key in fake.objects)
    assert fake.secret_access_key not in run.output
