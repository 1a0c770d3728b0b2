"""The log sink contract kit (ce_daemon.testing.contract) run against every first-party sink.

Each class is what a plugin's own test suite writes: the sink class, and an adapter from the kit to
the target the sink ships to (its fake server, a real rsyslogd, a folder). Request limits are small
so that a batch of the kit takes several requests, and a retry must not send again what was taken.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from ce_azure import AzureLogsIngestionSink
from ce_azure.fake import FakeAzureMonitor
from ce_chronicle import ChronicleSink
from ce_chronicle.fake import FakeChronicle
from ce_elastic import ElasticsearchSink
from ce_elastic.fake import FakeElasticsearch
from ce_file import FileSink
from ce_s3 import S3Sink
from ce_s3.fake import FakeS3
from ce_splunk import SplunkHecSink
from ce_splunk.fake import FakeSplunk
from ce_syslog import SyslogSink
from ce_webhook import WebhookSink
from ce_webhook.fake import FakeWebhook, bearer_value

from ce_daemon.testing.contract import FakeServerTarget, LogSinkContract, SinkTarget, ids_in
from ce_daemon.testing.rsyslog import RsyslogServer, rsyslogd_path

SECRET = "contract-secret-0123456789"  # the fakes' own throwaway credential
MISSING_CA = {"tls": {"ca_file": "no-such-ca.pem"}}
"""TLS options whose CA file does not exist: building the TLS context in open() fails."""


# -- file ------------------------------------------------------------------------------------------


class FileTarget(SinkTarget):
    """A folder: the file the sink appends to."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def options(self) -> dict[str, Any]:
        return {"path": str(self.folder / "out" / "contract.log")}

    async def received_ids(self, at_least: int) -> list[str]:
        path = self.folder / "out" / "contract.log"
        return ids_in(path.read_bytes().splitlines()) if path.exists() else []

    def failing_open_options(self) -> dict[str, Any]:
        (self.folder / "a-file").write_text("not a folder")
        return {"path": str(self.folder / "a-file" / "contract.log")}


class TestFileSinkContract(LogSinkContract):
    sink_class = FileSink

    @asynccontextmanager
    async def target(self, tmp_path: Path) -> AsyncIterator[SinkTarget]:
        yield FileTarget(tmp_path)


# -- syslog, through a real rsyslogd ---------------------------------------------------------------


class RsyslogTarget(SinkTarget):
    """rsyslogd listening on TCP; it can be stopped and started again on the same port."""

    def __init__(self, rsyslog: RsyslogServer) -> None:
        self.rsyslog = rsyslog

    def options(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.rsyslog.tcp_port}

    async def received_ids(self, at_least: int) -> list[str]:
        return ids_in(message.msg for message in await self.rsyslog.wait_for_lines(at_least))

    def failing_open_options(self) -> dict[str, Any]:
        return {**self.options(), "protocol": "tls", **MISSING_CA}

    async def go_down(self) -> None:
        await self.rsyslog.stop()

    async def come_back(self) -> None:
        await self.rsyslog.start()


@pytest.mark.rsyslog
@pytest.mark.skipif(rsyslogd_path() is None and not os.environ.get("CI"), reason="rsyslogd is not installed")
class TestSyslogSinkContract(LogSinkContract):
    sink_class = SyslogSink
    redelivers_on_retry = True  # syslog has no acknowledgement: documented at-least-once

    @asynccontextmanager
    async def target(self, tmp_path: Path) -> AsyncIterator[SinkTarget]:
        async with RsyslogServer(tmp_path, tcp=True) as rsyslog:
            yield RsyslogTarget(rsyslog)


# -- Splunk HEC ------------------------------------------------------------------------------------


class SplunkTarget(FakeServerTarget):
    fake: FakeSplunk

    def options(self) -> dict[str, Any]:
        return {"url": self.fake.url, "token": SECRET, "max_request_bytes": 4096}

    async def received_ids(self, at_least: int) -> list[str]:
        return ids_in(envelope["event"] for envelope in self.fake.events)

    def refuse(self, record_id: str) -> None:
        self.fake.refuse_when = lambda envelope: envelope["event"]["_id"] == record_id

    def failing_open_options(self) -> dict[str, Any]:
        return {**self.options(), **MISSING_CA}


class TestSplunkHecSinkContract(LogSinkContract):
    sink_class = SplunkHecSink

    @asynccontextmanager
    async def target(self, tmp_path: Path) -> AsyncIterator[SinkTarget]:
        fake = FakeSplunk(tokens=[SECRET])
        async with fake:
            yield SplunkTarget(fake)


# -- Elasticsearch ---------------------------------------------------------------------------------


class ElasticTarget(FakeServerTarget):
    fake: FakeElasticsearch

    def options(self) -> dict[str, Any]:
        return {"url": self.fake.url, "username": "ingest", "password": SECRET, "max_request_bytes": 4096}

    async def received_ids(self, at_least: int) -> list[str]:
        return list(self.fake.all_documents)  # keyed by _id: the target itself cannot hold a copy

    def refuse(self, record_id: str) -> None:
        self.fake.refuse_when = lambda document: document.get("id") == record_id

    def failing_open_options(self) -> dict[str, Any]:
        return {**self.options(), **MISSING_CA}


class TestElasticsearchSinkContract(LogSinkContract):
    sink_class = ElasticsearchSink

    @asynccontextmanager
    async def target(self, tmp_path: Path) -> AsyncIterator[SinkTarget]:
        fake = FakeElasticsearch(users={"ingest": SECRET})
        async with fake:
            yield ElasticTarget(fake)


# -- webhook ---------------------------------------------------------------------------------------


class WebhookTarget(FakeServerTarget):
    fake: FakeWebhook

    def options(self) -> dict[str, Any]:
        return {
            "url": f"{self.fake.url}/hook",
            "auth": {"type": "bearer", "token": SECRET},
            "max_request_bytes": 4096,
        }

    async def received_ids(self, at_least: int) -> list[str]:
        return ids_in(self.fake.records)

    def refuse(self, record_id: str) -> None:
        self.fake.refuse_when = lambda item: item.get("_id") == record_id

    def failing_open_options(self) -> dict[str, Any]:
        return {**self.options(), **MISSING_CA}


class TestWebhookSinkContract(LogSinkContract):
    sink_class = WebhookSink

    @asynccontextmanager
    async def target(self, tmp_path: Path) -> AsyncIterator[SinkTarget]:
        fake = FakeWebhook(auth=("Authorization", bearer_value(SECRET)))
        async with fake:
            yield WebhookTarget(fake)


# -- Azure Monitor Logs Ingestion ------------------------------------------------------------------


class AzureTarget(FakeServerTarget):
    fake: FakeAzureMonitor

    def options(self) -> dict[str, Any]:
        fake = self.fake
        return {
            "dce": fake.url,
            "authority": fake.url,
            "dcr_immutable_id": fake.dcr_immutable_id,
            "stream_name": "Custom-Netskope_CL",
            "tenant_id": fake.tenant_id,
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "max_request_bytes": 4096,
        }

    async def received_ids(self, at_least: int) -> list[str]:
        return ids_in(self.fake.rows)

    def refuse(self, record_id: str) -> None:
        self.fake.refuse_when = lambda row: row.get("_id") == record_id

    def failing_open_options(self) -> dict[str, Any]:
        return {**self.options(), **MISSING_CA}


class TestAzureLogsIngestionSinkContract(LogSinkContract):
    sink_class = AzureLogsIngestionSink

    @asynccontextmanager
    async def target(self, tmp_path: Path) -> AsyncIterator[SinkTarget]:
        fake = FakeAzureMonitor(streams=["Custom-Netskope_CL"])
        async with fake:
            yield AzureTarget(fake)


# -- Chronicle -------------------------------------------------------------------------------------


class ChronicleTarget(FakeServerTarget):
    fake: FakeChronicle

    def __init__(self, fake: FakeChronicle) -> None:
        super().__init__(fake)
        self.key = fake.service_account_key()

    def options(self) -> dict[str, Any]:
        return {
            "customer_id": self.fake.customer_id,
            "endpoint": self.fake.url,
            "credentials": self.key,
            "max_request_bytes": 10_000,
        }

    async def received_ids(self, at_least: int) -> list[str]:
        return ids_in(entry["log_text"] for entry in self.fake.entries)

    def refuse(self, record_id: str) -> None:
        self.fake.refuse_when = lambda entry: orjson.loads(entry["log_text"])["_id"] == record_id

    def failing_open_options(self) -> dict[str, Any]:
        options = {**self.options(), "credentials_file": "no-such-key.json"}
        del options["credentials"]
        return options


class TestChronicleSinkContract(LogSinkContract):
    sink_class = ChronicleSink

    @asynccontextmanager
    async def target(self, tmp_path: Path) -> AsyncIterator[SinkTarget]:
        fake = FakeChronicle()
        async with fake:
            yield ChronicleTarget(fake)


# -- S3 --------------------------------------------------------------------------------------------


class S3Target(FakeServerTarget):
    fake: FakeS3

    def options(self) -> dict[str, Any]:
        return {
            "bucket": "netskope",
            "endpoint": self.fake.url,
            "access_key_id": self.fake.access_key_id,
            "secret_access_key": self.fake.secret_access_key,
            "max_object_bytes": 4096,
        }

    async def received_ids(self, at_least: int) -> list[str]:
        return ids_in(line for stored in self.fake.objects.values() for line in stored.lines())

    def failing_open_options(self) -> dict[str, Any]:
        return {**self.options(), **MISSING_CA}


class TestS3SinkContract(LogSinkContract):
    sink_class = S3Sink

    @asynccontextmanager
    async def target(self, tmp_path: Path) -> AsyncIterator[SinkTarget]:
        fake = FakeS3(buckets=["netskope"])
        async with fake:
            yield S3Target(fake)
