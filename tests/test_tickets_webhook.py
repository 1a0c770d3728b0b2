"""The ``webhook`` ticket destination against its fake receiver: idempotent creates, updates, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from ce_ticket_webhook import TicketWebhookOptions, TicketWebhookSink
from ce_ticket_webhook.fake import FakeTicketWebhook

from ce_daemon.errors import AuthError, PermanentError, TransientError
from ce_daemon.plugin import PluginContext, Ticket, TicketRef


def ticket(key: str = "ce-0123abcd", count: int = 1) -> Ticket:
    return Ticket(
        key, "dlp", "DLP alert", "leak", "high", {"team": "sec"}, {"_id": "a1", "user": "ann"}, count
    )


async def sink(fake: FakeTicketWebhook, tmp_path: Path, **options: object) -> TicketWebhookSink:
    model = TicketWebhookOptions.model_validate({"url": f"{fake.url}/tickets", **options})
    plugin = TicketWebhookSink(model, PluginContext("hook", tmp_path, tmp_path))
    await plugin.open()
    return plugin


async def test_create_is_idempotent_by_key_and_updates_reach_the_ticket(tmp_path: Path) -> None:
    fake = FakeTicketWebhook(token="s3cret")
    async with fake:
        plugin = await sink(fake, tmp_path, token="s3cret", find_url=f"{fake.url}/tickets/find")
        ref = await plugin.create(ticket())
        again = await plugin.create(ticket())  # a create whose answer was lost, sent again
        assert ref == again and ref.id == "T-1" and ref.url.endswith("/tickets/T-1")
        assert len(fake.tickets) == 1 and fake.replays == 1 and fake.keys == ["ce-0123abcd"] * 2
        assert fake.requests[0].headers["Idempotency-Key"] == "ce-0123abcd"
        body = orjson.loads(fake.requests[0].body)
        assert body["action"] == "create" and body["alert"] == {"_id": "a1", "user": "ann"}
        assert await plugin.find("ce-0123abcd") == TicketRef("T-1", ref.url)
        assert await plugin.find("ce-nothere") is None
        await plugin.update(ref, ticket(count=3))
        await plugin.resolve(ref)
        received = fake.tickets["ce-0123abcd"]
        assert [u["count"] for u in received.updates] == [3] and received.resolved
        await plugin.close()


async def test_errors_map_onto_the_taxonomy(tmp_path: Path) -> None:
    fake = FakeTicketWebhook()
    async with fake:
        plugin = await sink(fake, tmp_path)
        fake.fail_next(1, 429, retry_after=7)
        with pytest.raises(TransientError) as throttled:
            await plugin.create(ticket())
        assert throttled.value.retry_after == 7
        fake.fail_next(1, 503)
        with pytest.raises(TransientError):
            await plugin.create(ticket())
        fake.refusing = True
        with pytest.raises(PermanentError, match="422"):
            await plugin.create(ticket())
        fake.refusing = False
        fake.refuse_credentials()
        with pytest.raises(AuthError):
            await plugin.create(ticket())
        await plugin.close()


async def test_garbage_oversize_and_silent_answers(tmp_path: Path) -> None:
    fake = FakeTicketWebhook()
    async with fake:
        plugin = await sink(fake, tmp_path, timeout=0.5)
        fake.fail_next(1, 200, body=b"<html>ok</html>")
        assert await plugin.create(ticket()) == TicketRef("ce-0123abcd")  # no JSON: the key is the id
        fake.fail_next(1, 200, body=b'{"id": "' + b"x" * 1_100_000 + b'"}')
        with pytest.raises(TransientError, match="more than"):
            await plugin.create(ticket())
        fake.hold_next()
        with pytest.raises(TransientError, match="no answer in time"):
            await plugin.create(ticket())
        fake.release_held()
        await asyncio.sleep(0)
        await plugin.close()
