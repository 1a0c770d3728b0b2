"""The contract kit catches the faults it is there for: each broken sink here fails the check it should."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from ce_webhook.fake import FakeWebhook
from pydantic import SecretStr

from ce_daemon.http import HttpOptions, make_session, raise_for_status, transport_error
from ce_daemon.plugin import Health, LogSink, OutRecord, SendResult
from ce_daemon.testing.contract import (
    FakeServerTarget,
    LogSinkContract,
    SinkTarget,
    check_plugin_class,
    close_without_open,
    ids_in,
    open_health_send_close,
    refused_record_is_rejected_alone,
    retry_after_partial_failure_does_not_duplicate,
)


class AcmeOptions(HttpOptions):
    """Options of the `acme` sink."""

    token: SecretStr


class FormerlyDocumentedSink(LogSink):
    """The example docs/plugins.md showed before the kit existed (its send body made valid JSON here)."""

    api_version = 1
    Options = AcmeOptions

    async def open(self) -> None:
        self.session = make_session(
            self.options,
            self.context.base_dir,
            Authorization=f"Bearer {self.options.token.get_secret_value()}",
        )

    async def health(self) -> Health:  # type: ignore[empty-body] # the fault under test: it returns None
        ...

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        body = b"[" + b",".join(r.data for r in batch) + b"]"
        try:
            async with self.session.post(
                self.options.url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                await raise_for_status(response, "acme")
        except (OSError, TimeoutError) as exc:
            raise transport_error(exc, "acme") from exc
        return SendResult()

    async def close(self) -> None:
        await self.session.close()


class JsonPoster(LogSink):
    """Posts each record alone as a JSON array of one, with a session that ``close`` closes."""

    api_version = 1
    Options = HttpOptions

    async def open(self) -> None:
        self.session: aiohttp.ClientSession | None = make_session(self.options, self.context.base_dir)

    async def health(self) -> Health:
        return Health(ok=True)

    async def send(self, batch: Sequence[OutRecord]) -> SendResult:
        assert self.session is not None
        for record in batch:  # one request per record, and no memory of what an earlier attempt delivered
            async with self.session.post(
                self.options.url, data=b"[" + record.data + b"]", headers={"Content-Type": "application/json"}
            ) as response:
                await raise_for_status(response, "poster")
        return SendResult()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class LeakyPoster(JsonPoster):
    """Forgets to close its session."""

    async def close(self) -> None:
        self.session = None


class WebhookTarget(FakeServerTarget):
    fake: FakeWebhook

    def options(self) -> dict[str, Any]:
        return {"url": f"{self.fake.url}/hook", "token": "t"}

    async def received_ids(self, at_least: int) -> list[str]:
        return ids_in(self.fake.records)


class _Against(LogSinkContract):
    """The kit against ``sink_class`` and a fake webhook (not collected: no ``Test`` prefix)."""

    def __init__(self, sink_class: type[LogSink], *, token: bool = False) -> None:
        self.sink_class = sink_class  # type: ignore[misc] # a ClassVar set per instance, for the test's sake
        self.token = token

    @asynccontextmanager
    async def target(self, tmp_path: Path) -> AsyncIterator[SinkTarget]:
        fake = FakeWebhook()
        async with fake:
            target = WebhookTarget(fake)
            if not self.token:
                target.options = lambda: {"url": f"{fake.url}/hook"}  # type: ignore[method-assign]  # a target whose options name no credential
            yield target


def test_a_health_that_returns_none_fails(tmp_path: Path) -> None:
    """The formerly documented example fails the first check: its health() answers None."""
    with pytest.raises(AssertionError, match=r"health\(\) returned None, not a Health"):
        _Against(FormerlyDocumentedSink, token=True).run_check(open_health_send_close, tmp_path)


def test_a_close_that_needs_open_fails(tmp_path: Path) -> None:
    """The formerly documented example's close() raises when open() never ran."""
    with pytest.raises(AttributeError, match="session"):
        _Against(FormerlyDocumentedSink, token=True).run_check(close_without_open, tmp_path)


def test_a_sink_that_leaves_its_session_open_fails(tmp_path: Path) -> None:
    """A close() that forgets the aiohttp session fails, naming what was left open."""
    with pytest.raises(AssertionError, match="LeakyPoster left resources open: Unclosed client session"):
        _Against(LeakyPoster).run_check(open_health_send_close, tmp_path)


def test_a_retry_that_sends_again_what_was_delivered_fails(tmp_path: Path) -> None:
    """A sink without memory of a failed attempt's requests duplicates on retry, and the kit says so."""
    with pytest.raises(AssertionError, match="reached the target more than once"):
        _Against(JsonPoster).run_check(retry_after_partial_failure_does_not_duplicate, tmp_path)


def test_a_check_the_target_cannot_show_is_skipped(tmp_path: Path) -> None:
    """An adapter without refuse() skips the check that needs it, naming the missing method."""
    with pytest.raises(pytest.skip.Exception, match=r"WebhookTarget does not implement refuse\(\)"):
        _Against(JsonPoster).run_check(refused_record_is_rejected_alone, tmp_path)


def test_the_static_check_wants_an_api_version() -> None:
    """A sink class that declares no api_version fails the kit's class check."""

    class Undeclared(JsonPoster):
        """No api_version of its own (JsonPoster's is hidden below)."""

    Undeclared.api_version = None  # type: ignore[assignment,misc] # what a class without one looks like
    with pytest.raises(AssertionError, match="declares no api_version"):
        check_plugin_class(Undeclared, "log_sink")


def test_records_are_json_with_their_id() -> None:
    """The kit's records are JSON objects whose `_id` is the OutRecord id, alternating two streams."""
    from ce_daemon.testing.contract import contract_records

    records = contract_records(4, start=10)
    assert [orjson.loads(r.data)["_id"] for r in records] == [r.id for r in records]
    assert [r.id for r in records] == ["contract-00010", "contract-00011", "contract-00012", "contract-00013"]
    assert [(r.kind, r.subtype) for r in records[:2]] == [("alerts", "dlp"), ("events", "page")]
