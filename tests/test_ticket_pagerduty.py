"""The ``pagerduty`` ticket destination against the fake Events API v2 on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ce_pagerduty import PagerDutySink
from ce_pagerduty.fake import FakePagerDuty
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from ce_daemon.errors import AuthError, PermanentError, TransientError
from ce_daemon.plugin import PluginContext, Ticket, TicketRef
from ce_daemon.testing.sinks import closed_port


def ticket(count: int = 1, **changes: Any) -> Ticket:
    values: dict[str, Any] = {
        "key": "malware-host7",
        "rule": "Malware on endpoints",
        "title": "Malware: EICAR on host7",
        "description": "EICAR test file found on host7 by the Netskope client",
        "severity": "critical",
        "fields": {"component": "endpoint", "group": "emea", "Host": "host7"},
        "alert": {"_id": "a1", "timestamp": 1_700_000_000},
        "count": count,
    }
    return Ticket(**{**values, **changes})


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    fake = FakePagerDuty()
    async with fake:
        yield fake


@contextlib.asynccontextmanager
async def opened(pd: FakePagerDuty, tmp_path: Path, **options: Any) -> AsyncIterator[PagerDutySink]:
    settings = {"routing_key": pd.routing_key, "url": f"{pd.url}/v2/enqueue", **options}
    sink = PagerDutySink(
        PagerDutySink.Options.model_validate(settings),
        PluginContext(name="pagerduty", base_dir=tmp_path, data_dir=tmp_path),
    )
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


async def raised(call: Any) -> Exception:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - each test asserts which error it expected
        await call
    return caught.value


async def test_create_triggers_with_the_ticket_key_as_dedup_key(tmp_path: Path, pd: FakePagerDuty) -> None:
    """A create is a trigger: dedup_key = the ticket's key, payload fields mapped, the ref is the key."""
    async with opened(pd, tmp_path, client_url="https://tenant.goskope.com/ns#/alerts") as sink:
        ref = await sink.create(ticket())
    assert ref == TicketRef(id="malware-host7")
    [event] = pd.events
    assert event["event_action"] == "trigger" and event["dedup_key"] == "malware-host7"
    assert event["client"] == "ce-daemon" and event["client_url"] == "https://tenant.goskope.com/ns#/alerts"
    assert event["payload"] == {
        "summary": "Malware: EICAR on host7",
        "source": "netskope-ce",
        "severity": "critical",
        "component": "endpoint",
        "group": "emea",
        "timestamp": "2023-11-14T22:13:20Z",
        "custom_details": {
            "Host": "host7",
            "rule": "Malware on endpoints",
            "count": 1,
            "description": "EICAR test file found on host7 by the Netskope client",
        },
    }
    assert [i.dedup_key for i in pd.incidents] == ["malware-host7"]


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        ("critical", "critical"),
        ("high", "error"),
        ("medium", "warning"),
        ("low", "info"),
        ("informational", "info"),
    ],
)
async def test_severity_maps_onto_pagerduty_levels(
    tmp_path: Path, pd: FakePagerDuty, severity: str, expected: str
) -> None:
    """Ticket severities map onto PagerDuty's four levels (the fake refuses any other)."""
    async with opened(pd, tmp_path) as sink:
        await sink.create(ticket(severity=severity))
    assert pd.incidents[0].severity == expected


async def test_update_appends_to_the_open_incident(tmp_path: Path, pd: FakePagerDuty) -> None:
    """A duplicate triggers again with the same dedup_key: one incident, two events, count in the details."""
    async with opened(pd, tmp_path) as sink:
        ref = await sink.create(ticket())
        assert await sink.update(ref, ticket(count=5)) == ref
    [incident] = pd.incidents
    assert len(incident.events) == 2
    assert incident.events[1]["payload"]["custom_details"]["count"] == 5


async def test_resolve_closes_and_a_later_trigger_opens_a_new_incident(
    tmp_path: Path, pd: FakePagerDuty
) -> None:
    """resolve() resolves the key's incident; a trigger after that opens a new one (PagerDuty's rule)."""
    async with opened(pd, tmp_path) as sink:
        ref = await sink.create(ticket())
        await sink.resolve(ref)
        assert pd.open_incident(ref.id) is None
        await sink.create(ticket())
        await sink.resolve(TicketRef(id="never-triggered"))  # PagerDuty ignores an unknown key
    assert [i.status for i in pd.incidents] == ["resolved", "triggered"]
    assert pd.events[1] == {"routing_key": pd.routing_key, "event_action": "resolve", "dedup_key": ref.id}


async def test_replay_after_a_lost_answer_creates_one_incident(tmp_path: Path, pd: FakePagerDuty) -> None:
    """PagerDuty took the trigger but the answer was lost: the replayed create joins the same incident."""
    pd.lose_next_answer()
    async with opened(pd, tmp_path) as sink:
        assert isinstance(await raised(sink.create(ticket())), TransientError)
        assert len(pd.incidents) == 1  # it was processed
        assert await sink.find(ticket().key) is None  # no search needed: the key deduplicates
        ref = await sink.create(ticket())
    assert ref.id == "malware-host7"
    [incident] = pd.incidents
    assert len(incident.events) == 2


async def test_429_honours_retry_after_or_the_configured_wait(tmp_path: Path, pd: FakePagerDuty) -> None:
    """429 is transient: with PagerDuty's Retry-After when given, else `rate_limit_wait`."""
    pd.fail_next(status=429, retry_after=12)
    pd.fail_next(status=429)
    async with opened(pd, tmp_path, rate_limit_wait="5s") as sink:
        first = await raised(sink.create(ticket()))
        second = await raised(sink.create(ticket()))
        await sink.create(ticket())
    assert isinstance(first, TransientError) and first.retry_after == 12
    assert isinstance(second, TransientError) and second.retry_after == 5
    assert "arriving too quickly" in str(first)
    assert len(pd.incidents) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_transient(tmp_path: Path, pd: FakePagerDuty, status: int) -> None:
    """A 5xx is transient; the retry triggers."""
    pd.fail_next(status=status)
    async with opened(pd, tmp_path) as sink:
        assert isinstance(await raised(sink.create(ticket())), TransientError)
        await sink.create(ticket())
    assert len(pd.incidents) == 1


async def test_invalid_event_is_permanent_and_quotes_the_errors(tmp_path: Path, pd: FakePagerDuty) -> None:
    """A 400 invalid event is a PermanentError naming PagerDuty's errors."""
    body = {
        "status": "invalid event",
        "message": "Event object is invalid",
        "errors": ["'payload.severity' is invalid", "'payload.source' is missing or blank"],
    }
    pd.fail_next(status=400, body=orjson.dumps(body))
    async with opened(pd, tmp_path) as sink:
        caught = await raised(sink.create(ticket()))
    assert type(caught) is PermanentError
    assert "'payload.severity' is invalid; 'payload.source' is missing or blank" in str(caught)


async def test_refused_routing_key_is_an_auth_error_without_the_key(
    tmp_path: Path, pd: FakePagerDuty
) -> None:
    """An integration deleted (400 Invalid routing key) or a key of the wrong shape stop the destination."""
    key = pd.routing_key
    pd.refuse_credentials()
    async with opened(pd, tmp_path, routing_key=key) as sink:
        caught = await raised(sink.create(ticket()))
    assert isinstance(caught, AuthError) and "Invalid routing key" in str(caught)
    async with opened(pd, tmp_path, routing_key="short-key-0123") as sink:
        caught = await raised(sink.create(ticket()))
    assert isinstance(caught, AuthError) and "should be 32 characters" in str(caught)
    assert key not in str(caught) and "short-key-0123" not in str(caught)
    assert pd.incidents == []


async def test_summary_is_cut_to_1024_and_oversized_details_are_dropped(
    tmp_path: Path, pd: FakePagerDuty
) -> None:
    """A title over 1,024 characters is cut; an event over 512,000 bytes keeps only rule and count."""
    big = ticket(title="S" * 5000, description="D" * 600_000)
    async with opened(pd, tmp_path) as sink:
        await sink.create(big)
    payload = pd.events[0]["payload"]
    assert len(payload["summary"]) == 1024 and payload["summary"].endswith("…")
    assert payload["custom_details"]["count"] == 1 and "description" not in payload["custom_details"]


async def test_routing_key_never_in_errors_or_logs(tmp_path: Path, pd: FakePagerDuty) -> None:
    """Whatever fails, the routing key is in no error text and no log line."""
    errors: list[str] = []
    with capture_logs() as logs:
        for status in (400, 429, 500):
            pd.fail_next(status=status, body=orjson.dumps({"message": f"echo {pd.routing_key}"}))
            async with opened(pd, tmp_path) as sink:
                errors.append(str(await raised(sink.create(ticket()))))
        async with opened(pd, tmp_path, url=f"http://127.0.0.1:{closed_port()}/v2/enqueue") as sink:
            errors.append(str(await raised(sink.create(ticket()))))
    assert pd.routing_key not in "\n".join(errors) + repr(logs)
    assert "[REDACTED]" in errors[0]


async def test_health_is_not_probed(tmp_path: Path, pd: FakePagerDuty) -> None:
    """health() sends nothing (the Events API has no side-effect-free call)."""
    async with opened(pd, tmp_path) as sink:
        health = await sink.health()
    assert health.ok and pd.requests == []


@given(st.text(max_size=3000), st.sampled_from(["critical", "high", "medium", "low", "informational", "odd"]))
def test_any_title_and_severity_make_a_valid_trigger(title: str, severity: str) -> None:
    """Whatever the title and severity, the trigger's summary is 1-1,024 characters and its severity valid."""
    sink = PagerDutySink(
        PagerDutySink.Options.model_validate({"routing_key": "k" * 32}),
        PluginContext(name="pd", base_dir=Path(), data_dir=Path()),
    )
    event = sink._trigger(ticket(title=title, severity=severity))
    assert 1 <= len(event["payload"]["summary"]) <= 1024
    assert event["payload"]["severity"] in {"critical", "error", "warning", "info"}


async def test_a_timeout_then_a_replay_still_makes_one_incident(tmp_path: Path, pd: FakePagerDuty) -> None:
    """No answer in time is transient; PagerDuty may still process it, and the replay joins that incident."""
    pd.hold_next()
    async with opened(pd, tmp_path, timeout=0.2) as sink:
        caught = await raised(sink.create(ticket()))
        assert isinstance(caught, TransientError) and "no answer in time" in str(caught)
        pd.release_held()
        await pd.wait_until(lambda: len(pd.events) == 1)
        await sink.create(ticket())
    [incident] = pd.incidents
    assert len(incident.events) == 2
