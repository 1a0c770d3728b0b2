"""The syslog health channel: formats, transports, repeat suppression and unreachable targets."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ce_daemon.syslog import HealthChannel
from ce_daemon.testing.sockets import SyslogReceiver

FIXED_TIME = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def unix_receiver(tmp_path: Path) -> AsyncIterator[SyslogReceiver]:
    async with SyslogReceiver("unix", directory=tmp_path) as receiver:
        yield receiver


def refused_tcp_port() -> tuple[socket.socket, int]:
    """A loopback port bound but not listening, so connecting to it is refused while it is held."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    return holder, holder.getsockname()[1]


async def test_local_format_is_byte_exact(unix_receiver: SyslogReceiver) -> None:
    """The local form is <PRI>app[PID]: logfmt-body, with PRI = daemon*8 + info = 30."""
    channel = HealthChannel(unix_receiver.target, pid=4242)
    channel.emit("health.heartbeat", gen=2, components_ok="3/3", last_page_age_s=41.5)
    channel.close()
    assert await unix_receiver.receive() == (
        "<30>ce-daemon[4242]: event=health.heartbeat gen=2 components_ok=3/3 last_page_age_s=41.5"
    )


async def test_rfc5424_format_is_byte_exact(unix_receiver: SyslogReceiver) -> None:
    """The RFC 5424 form carries version, UTC timestamp, hostname, app, pid, event as MSGID and nil SD."""
    channel = HealthChannel(
        unix_receiver.target, fmt="rfc5424", hostname="collector-01", pid=4242, now=lambda: FIXED_TIME
    )
    channel.emit("health.degraded", severity="warning", gen=2, failing="ticket")
    channel.close()
    assert await unix_receiver.receive() == (
        "<28>1 2024-05-01T12:30:45.123456Z collector-01 ce-daemon 4242 health.degraded - "
        "event=health.degraded gen=2 failing=ticket"
    )


async def test_rfc5424_msgid_is_cut_to_32_characters(unix_receiver: SyslogReceiver) -> None:
    """An event name longer than 32 characters is truncated in MSGID but kept whole in the body."""
    event = "health.component_state_changed_to_degraded"
    channel = HealthChannel(unix_receiver.target, fmt="rfc5424", hostname="h", pid=1, now=lambda: FIXED_TIME)
    channel.emit(event)
    channel.close()
    message = await unix_receiver.receive()
    assert message.split(" ")[5] == event[:32]
    assert message.endswith(f" - event={event}")


async def test_facility_and_severity_make_the_priority(unix_receiver: SyslogReceiver) -> None:
    """PRI is facility*8 + severity: local0 (16) and err (3) give 131."""
    channel = HealthChannel(unix_receiver.target, facility="local0", pid=7)
    channel.emit("sink.failed", severity="err", sink="siem")
    channel.close()
    assert await unix_receiver.receive() == "<131>ce-daemon[7]: event=sink.failed sink=siem"


async def test_logfmt_values_are_quoted_and_escaped(unix_receiver: SyslogReceiver) -> None:
    """Values with spaces, quotes, = or newlines are quoted and escaped; bools and None are rendered."""
    channel = HealthChannel(unix_receiver.target, pid=1)
    channel.emit(
        "health.state",
        reason='timed out after "30 s"',
        query="a=b",
        detail="line1\nline2",
        ok=False,
        degraded=True,
        last_error=None,
    )
    channel.close()
    assert await unix_receiver.receive() == (
        "<30>ce-daemon[1]: event=health.state "
        r'reason="timed out after \"30 s\"" query="a=b" detail=line1\nline2 '
        "ok=false degraded=true last_error="
    )


async def test_udp_target_delivers() -> None:
    """A udp://127.0.0.1:PORT target delivers the datagram to the collector."""
    async with SyslogReceiver("udp") as receiver:
        channel = HealthChannel(receiver.target, fmt="rfc5424", hostname="h", pid=9, now=lambda: FIXED_TIME)
        channel.emit("health.heartbeat", gen=1)
        await channel.aclose()
        assert await receiver.receive() == (
            "<30>1 2024-05-01T12:30:45.123456Z h ce-daemon 9 health.heartbeat - event=health.heartbeat gen=1"
        )


async def test_unix_target_accepts_a_plain_path(tmp_path: Path) -> None:
    """A bare socket path (like /dev/log) is a unix datagram target."""
    async with SyslogReceiver("unix", directory=tmp_path, name="dev-log") as receiver:
        channel = HealthChannel(str(tmp_path / "dev-log"), pid=3)
        channel.emit("health.heartbeat")
        channel.close()
        assert await receiver.receive() == "<30>ce-daemon[3]: event=health.heartbeat"


async def test_tcp_rfc5424_uses_octet_counting() -> None:
    """Over TCP the RFC 5424 form is framed by octet counting (RFC 6587)."""
    async with SyslogReceiver("tcp", framing="octet-counting") as receiver:
        channel = HealthChannel(receiver.target, fmt="rfc5424", hostname="h", pid=9, now=lambda: FIXED_TIME)
        channel.emit("health.heartbeat", gen=1)
        channel.emit("health.heartbeat", gen=2)
        await channel.aclose()
        assert await receiver.wait_for("gen=2") == (
            "<30>1 2024-05-01T12:30:45.123456Z h ce-daemon 9 health.heartbeat - event=health.heartbeat gen=2"
        )
        assert len(receiver.messages) == 2
        assert receiver.framing_errors == []


async def test_tcp_local_form_is_lf_framed() -> None:
    """Over TCP the local form is sent as LF-terminated lines."""
    async with SyslogReceiver("tcp", framing="lf") as receiver:
        channel = HealthChannel(receiver.target, pid=5)
        channel.emit("health.heartbeat", gen=1)
        channel.emit("health.heartbeat", gen=2)
        await channel.aclose()
        assert await receiver.wait_for("gen=2") == "<30>ce-daemon[5]: event=health.heartbeat gen=2"
        assert receiver.messages == [
            "<30>ce-daemon[5]: event=health.heartbeat gen=1",
            "<30>ce-daemon[5]: event=health.heartbeat gen=2",
        ]
        assert receiver.framing_errors == []


async def test_tcp_reconnects_after_the_collector_restarts() -> None:
    """When the collector closes the connection, the next message goes over a new one."""
    async with SyslogReceiver("tcp") as first:
        port = int(first.target.rsplit(":", 1)[1])
        channel = HealthChannel(first.target, pid=5)
        channel.emit("health.heartbeat", gen=1)
        await channel.flush()
        await first.wait_for("gen=1")
    async with SyslogReceiver("tcp", port=port) as second:
        channel.emit("health.heartbeat", gen=2)
        await channel.aclose()
        assert await second.wait_for("gen=2") == "<30>ce-daemon[5]: event=health.heartbeat gen=2"


async def test_identical_repeat_is_suppressed(unix_receiver: SyslogReceiver) -> None:
    """A message identical to the previous one of its event is dropped within repeat_after."""
    clock = FakeClock()
    channel = HealthChannel(unix_receiver.target, pid=1, repeat_after=300, monotonic=clock)
    channel.emit("health.heartbeat", gen=1, components_ok="3/3")
    clock.now += 299
    channel.emit("health.heartbeat", gen=1, components_ok="3/3")
    channel.emit("health.marker")
    channel.close()
    await unix_receiver.wait_for("health.marker")
    assert unix_receiver.messages == [
        "<30>ce-daemon[1]: event=health.heartbeat gen=1 components_ok=3/3",
        "<30>ce-daemon[1]: event=health.marker",
    ]


async def test_identical_repeat_is_sent_again_after_repeat_after(unix_receiver: SyslogReceiver) -> None:
    """Once repeat_after seconds have passed since it was sent, an identical message goes out again."""
    clock = FakeClock()
    channel = HealthChannel(unix_receiver.target, pid=1, repeat_after=300, monotonic=clock)
    channel.emit("health.heartbeat", gen=1)
    clock.now += 300
    channel.emit("health.heartbeat", gen=1)
    channel.close()
    assert [await unix_receiver.receive() for _ in range(2)] == [
        "<30>ce-daemon[1]: event=health.heartbeat gen=1",
        "<30>ce-daemon[1]: event=health.heartbeat gen=1",
    ]


async def test_changed_fields_or_severity_are_not_repeats(unix_receiver: SyslogReceiver) -> None:
    """A change in a field or in severity is sent at once; other events in between do not reset the check."""
    clock = FakeClock()
    channel = HealthChannel(unix_receiver.target, pid=1, repeat_after=300, monotonic=clock)
    channel.emit("health.state", state="ok")
    channel.emit("health.other")
    channel.emit("health.state", state="ok")  # still a repeat: the previous health.state was identical
    channel.emit("health.state", state="degraded")
    channel.emit("health.state", severity="warning", state="degraded")
    channel.emit("health.marker")
    channel.close()
    await unix_receiver.wait_for("health.marker")
    assert unix_receiver.messages == [
        "<30>ce-daemon[1]: event=health.state state=ok",
        "<30>ce-daemon[1]: event=health.other",
        "<30>ce-daemon[1]: event=health.state state=degraded",
        "<28>ce-daemon[1]: event=health.state state=degraded",
        "<30>ce-daemon[1]: event=health.marker",
    ]


async def test_missing_unix_socket_warns_once_then_recovers(tmp_path: Path) -> None:
    """A missing socket warns once (syslog.unavailable) without raising; syslog.available when it appears."""
    path = tmp_path / "dev-log"
    channel = HealthChannel(str(path), pid=1)
    with capture_logs() as logs:
        channel.emit("health.state", state="starting")
        channel.emit("health.state", state="ok")
        async with SyslogReceiver("unix", directory=tmp_path, name="dev-log") as receiver:
            channel.emit("health.state", state="degraded")
            assert await receiver.receive() == "<30>ce-daemon[1]: event=health.state state=degraded"
        channel.close()
    assert [(entry["event"], entry["log_level"], entry["target"]) for entry in logs] == [
        ("syslog.unavailable", "warning", str(path)),
        ("syslog.available", "info", str(path)),
    ]


async def test_refused_tcp_connection_warns_once_then_delivers_the_backlog() -> None:
    """A refused TCP connection warns once; the next message after the collector starts brings the backlog."""
    holder, port = refused_tcp_port()
    target = f"tcp://127.0.0.1:{port}"
    channel = HealthChannel(target, pid=1)
    with capture_logs() as logs:
        channel.emit("health.state", state="starting")
        await channel.flush()
        channel.emit("health.state", state="ok")
        await channel.flush()
        holder.close()
        async with SyslogReceiver("tcp", port=port) as receiver:
            channel.emit("health.state", state="degraded")
            await channel.aclose()
            await receiver.wait_for("degraded")
    assert receiver.messages == [
        "<30>ce-daemon[1]: event=health.state state=starting",
        "<30>ce-daemon[1]: event=health.state state=ok",
        "<30>ce-daemon[1]: event=health.state state=degraded",
    ]
    assert [(entry["event"], entry["target"]) for entry in logs] == [
        ("syslog.unavailable", target),
        ("syslog.available", target),
    ]


@pytest.mark.parametrize(
    "target",
    ["dev/log", "udp://127.0.0.1", "tcp://:514", "http://127.0.0.1:514", "udp://127.0.0.1:99999", "unix:rel"],
)
def test_malformed_target_is_refused_at_construction(target: str) -> None:
    """A target that is not a socket path, unix:/path, udp://host:port or tcp://host:port is a ValueError."""
    with pytest.raises(ValueError, match="syslog target"):
        HealthChannel(target)


def test_unknown_facility_is_refused_at_construction() -> None:
    """An unknown facility name is a ValueError naming the valid ones."""
    with pytest.raises(ValueError, match="local7"):
        HealthChannel("/dev/log", facility="daemons")


def test_network_target_outside_an_event_loop_warns_and_does_not_raise() -> None:
    """Emitting to a network target with no running event loop is reported once, never raised."""
    channel = HealthChannel("tcp://127.0.0.1:9", pid=1)
    with capture_logs() as logs:
        channel.emit("health.state", state="starting")
        channel.emit("health.state", state="ok")
    channel.close()
    assert [entry["event"] for entry in logs] == ["syslog.unavailable"]


async def test_receiver_wait_for_times_out_listing_what_arrived(unix_receiver: SyslogReceiver) -> None:
    """The test kit's wait_for raises TimeoutError naming the messages that did arrive."""
    channel = HealthChannel(unix_receiver.target, pid=1)
    channel.emit("health.heartbeat")
    channel.close()
    await unix_receiver.receive()
    with pytest.raises(TimeoutError, match=r"health\.heartbeat"):
        await unix_receiver.wait_for("never sent", timeout=0.05)
