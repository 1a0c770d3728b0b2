"""The ``syslog`` sink against a real rsyslogd on loopback: framing, headers, TLS, UDP, failures."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from ce_syslog import SyslogSink, SyslogSinkOptions
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ce_daemon.errors import TransientError
from ce_daemon.logs.formatter import RecordFormatter
from ce_daemon.logs.mapping import Mapping
from ce_daemon.netskope.subtypes import DataKind
from ce_daemon.plugin import OutRecord, PluginContext
from ce_daemon.simulator.records import RecordFactory, record_id
from ce_daemon.simulator.tenant import running_simulator
from ce_daemon.testing import DaemonProcess, write_pipeline
from ce_daemon.testing.rsyslog import ReceivedMessage, RsyslogServer, rsyslogd_path, tls_driver_available
from ce_daemon.testing.state import state_section
from ce_daemon.testing.tls import make_certificates

HOST = "ce-test-host"
FIRST_TIMESTAMP = 1_714_557_600  # 2024-05-01T10:00:00Z
TRICKY = {
    # Values that CEF must escape (|, =, \), that a naive splitter would cut (spaces, tabs), and non-ASCII.
    "user": "ann|bob=x\\y ünï €",
    "alert_name": "pipe|name=eq\\back",
    "url": "https://example.com/a b?q=1|2&k=v\\w\tnext",
    "object": "отчёт 📄.pdf",
}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Outside CI a machine without rsyslog skips these (make test installs it); in CI they must run.
_IN_CI = bool(os.environ.get("CI"))
needs_rsyslog = pytest.mark.skipif(rsyslogd_path() is None and not _IN_CI, reason="rsyslogd is not installed")
needs_tls = pytest.mark.skipif(
    not tls_driver_available("gtls") and not _IN_CI, reason="rsyslog-gnutls is not installed"
)


def cef_records(
    count: int, *, start: int = 0, kind: DataKind = "alerts", subtype: str = "dlp", **overrides: Any
) -> list[OutRecord]:
    """``count`` Netskope records formatted as CEF with the default mapping, tricky values included."""
    factory = RecordFactory(seed=7, tenant="demo")
    formatter = RecordFormatter("cef", Mapping.builtin("netskope"), "demo")
    out = []
    for seq in range(start, start + count):
        record = factory.make(kind, subtype, seq, FIRST_TIMESTAMP + seq)
        record.update(TRICKY)
        record.update(overrides)
        data = formatter.format(record, kind, subtype)
        out.append(OutRecord(record["_id"], record["timestamp"], data, kind, subtype, "cef"))
    return out


def rfc5424(record: OutRecord, pri: int = 14) -> str:
    """What an RFC 5424 message of ``record`` must look like, written independently of the framer."""
    moment = dt.datetime.fromtimestamp(record.timestamp, dt.UTC)
    return f"<{pri}>1 {moment:%Y-%m-%dT%H:%M:%S}.000Z {HOST} netskopece - - - {record.data.decode()}"


def rfc3164(record: OutRecord, pri: int = 14) -> str:
    """What an RFC 3164 message of ``record`` must look like."""
    moment = dt.datetime.fromtimestamp(record.timestamp, dt.UTC)
    stamp = f"{_MONTHS[moment.month - 1]} {moment.day:2d} {moment:%H:%M:%S}"
    return f"<{pri}>{stamp} {HOST} netskopece: {record.data.decode()}"


def make_sink(tmp_path: Path, **options: Any) -> SyslogSink:
    """A sink with ``options`` (host 127.0.0.1 and our test hostname unless given)."""
    options = {"host": "127.0.0.1", "hostname": HOST, **options}
    context = PluginContext(name="test-route", base_dir=tmp_path, data_dir=tmp_path)
    return SyslogSink(SyslogSinkOptions.model_validate(options), context)


@asynccontextmanager
async def opened(sink: SyslogSink) -> AsyncIterator[SyslogSink]:
    """``sink`` opened, and closed on exit."""
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback TCP port bound but not listening: connecting to it is refused for the whole block."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def raws(messages: Sequence[ReceivedMessage]) -> list[str]:
    return [m.raw for m in messages]


# -- options -------------------------------------------------------------------------------------------


def test_defaults_follow_the_protocol() -> None:
    """Port 514 for tcp/udp and 6514 for tls, octet framing, PRI user.info, 65,000-byte UDP messages."""
    tcp = SyslogSinkOptions.model_validate({"host": "h"})
    tls = SyslogSinkOptions.model_validate({"host": "h", "protocol": "tls"})
    udp = SyslogSinkOptions.model_validate({"host": "h", "protocol": "udp"})
    assert (tcp.protocol, tcp.port, tcp.framing, tcp.max_message_bytes) == ("tcp", 514, "octet", 1024 * 1024)
    assert (tls.port, tls.framing, tls.tls.verify) == (6514, "octet", True)
    assert (udp.port, udp.max_message_bytes) == (514, 65_000)
    assert (tcp.facility, tcp.severity, tcp.app_name, tcp.header) == (1, 6, "netskopece", "rfc5424")


@settings(max_examples=150, deadline=None)
@given(
    framing=st.sampled_from(["octet", "lf"]),
    header=st.sampled_from(["rfc5424", "rfc3164", "none"]),
    records=st.lists(
        st.tuples(st.integers(0, 160), st.sampled_from([0, -5, 1, FIRST_TIMESTAMP, 253_402_300_799, 2**40])),
        min_size=1,
        max_size=8,
    ),
)
def test_a_batch_framed_at_once_matches_the_record_by_record_framing(
    framing: str, header: str, records: list[tuple[int, int]]
) -> None:
    """The whole-batch path (TCP, no record near the limit) writes what framing each record writes,
    timestamps out of range included; a batch with a record that may be too large goes record by record."""
    options = {"host": "127.0.0.1", "hostname": HOST, "framing": framing, "header": header}
    sink = SyslogSink(
        SyslogSinkOptions.model_validate({**options, "max_message_bytes": 200}),
        PluginContext(name="test-route", base_dir=Path("."), data_dir=Path(".")),
    )
    batch = [
        OutRecord(f"r{i}", stamp, b"\n=x" * (size // 3), "alerts", "dlp", "cef")
        for i, (size, stamp) in enumerate(records)
    ]
    with patch("ce_syslog.sink.time.time", return_value=FIRST_TIMESTAMP + 0.5):
        payload = sink._stream_payload(batch)
        frames, rejected = sink._frame(batch)
    if payload is None:
        assert max(len(r.data) for r in batch) + sink._framer.header_bound() > 200
    else:
        assert not rejected
        assert payload == b"".join(frame for _, frame in frames)


def test_facility_and_severity_accept_names_and_numbers() -> None:
    """``local4`` and ``warning`` mean 20 and 4; out-of-range numbers and unknown names are refused."""
    options = SyslogSinkOptions.model_validate({"host": "h", "facility": "local4", "severity": "warning"})
    assert (options.facility, options.severity) == (20, 4)
    assert SyslogSinkOptions.model_validate({"host": "h", "facility": 23}).facility == 23
    with pytest.raises(ValidationError, match="facility must be 0-23"):
        SyslogSinkOptions.model_validate({"host": "h", "facility": 24})
    with pytest.raises(ValidationError, match="unknown syslog severity"):
        SyslogSinkOptions.model_validate({"host": "h", "severity": "loud"})


def test_tls_settings_without_tls_are_refused() -> None:
    """``tls:`` on a tcp sink is a mistake worth reporting, not something to ignore."""
    with pytest.raises(ValidationError, match="only apply with protocol: tls"):
        SyslogSinkOptions.model_validate({"host": "h", "protocol": "tcp", "tls": {"ca_file": "ca.pem"}})


def test_bad_header_tokens_are_refused_at_validation() -> None:
    """A hostname with a space cannot go in a syslog header: refused when the file is checked."""
    with pytest.raises(ValidationError, match="hostname"):
        SyslogSinkOptions.model_validate({"host": "h", "hostname": "my host"})


def test_udp_message_limit_cannot_exceed_a_datagram() -> None:
    """A UDP max_message_bytes beyond one datagram's payload is refused."""
    with pytest.raises(ValidationError, match="65507"):
        SyslogSinkOptions.model_validate({"host": "h", "protocol": "udp", "max_message_bytes": 70_000})


# -- failures without a receiver -----------------------------------------------------------------------


async def test_health_is_false_and_send_transient_when_nothing_listens(tmp_path: Path) -> None:
    """A refused connection: health() says so, send() raises TransientError for the core to retry."""
    with closed_port() as port:
        async with opened(make_sink(tmp_path, port=port)) as sink:
            health = await sink.health()
            assert not health.ok and "cannot connect" in health.detail
            with pytest.raises(TransientError, match="cannot connect"):
                await sink.send(cef_records(3))


async def test_a_receiver_that_stops_reading_times_out_the_batch(tmp_path: Path) -> None:
    """A batch the receiver never takes fails with TransientError after write_timeout, not forever."""
    connected = asyncio.Event()
    release = asyncio.Event()

    async def stalled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        connected.set()
        await release.wait()
        writer.close()

    server = await asyncio.start_server(stalled, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with opened(make_sink(tmp_path, port=port, write_timeout=0.5)) as sink:
            big = cef_records(1, url="x" * 1000)
            # Far more than the kernel buffers of both ends together can hold.
            batch = big * 40_000
            with pytest.raises(TransientError, match="did not take the batch"):
                await sink.send(batch)
            assert connected.is_set()
    finally:
        release.set()
        server.close()
        await server.wait_closed()


# -- through rsyslog -----------------------------------------------------------------------------------


@pytest.mark.rsyslog
@needs_rsyslog
async def test_cef_over_tcp_octet_counting_arrives_intact(tmp_path: Path) -> None:
    """Every record arrives once, in order, byte for byte (RFC 5424 header + CEF), header fields parsed."""
    records = cef_records(200)
    async with RsyslogServer(tmp_path, tcp=True) as rsyslog:
        async with opened(make_sink(tmp_path, port=rsyslog.tcp_port)) as sink:
            assert (await sink.health()).ok
            result = await sink.send(records)
            assert not result.rejected
            received = await rsyslog.wait_for_lines(len(records))
    assert raws(received) == [rfc5424(r) for r in records]
    assert [m.msg for m in received] == [r.data.decode() for r in records]
    first = received[0]
    assert (first.input, first.version, first.facility, first.severity) == ("tcp", 1, 1, 6)
    assert (first.hostname, first.app_name, first.timestamp) == (
        HOST,
        "netskopece",
        "2024-05-01T10:00:00.000Z",
    )


@pytest.mark.rsyslog
@needs_rsyslog
@needs_tls
async def test_cef_over_tls_arrives_intact(tmp_path: Path) -> None:
    """Over TLS (verified against the test CA, name checked against the IP) every record arrives intact."""
    records = cef_records(200)
    async with RsyslogServer(tmp_path, tcp=False, tls=True) as rsyslog:
        assert rsyslog.certificates is not None
        sink = make_sink(tmp_path, port=rsyslog.tls_port, protocol="tls",
                         tls={"ca_file": str(rsyslog.certificates.ca_file)})  # fmt: skip
        async with opened(sink):
            health = await sink.health()
            assert health.ok and "TLSv1." in health.detail
            assert not (await sink.send(records)).rejected
            received = await rsyslog.wait_for_lines(len(records))
    assert raws(received) == [rfc5424(r) for r in records]
    assert {m.input for m in received} == {"tls"}


@pytest.mark.rsyslog
@needs_rsyslog
@needs_tls
async def test_tls_with_the_wrong_ca_fails_clearly(tmp_path: Path) -> None:
    """Verification is on by default: a receiver certificate from another CA is refused, transiently."""
    other = make_certificates(tmp_path / "other-ca")
    async with RsyslogServer(tmp_path, tcp=False, tls=True) as rsyslog:
        sink = make_sink(tmp_path, port=rsyslog.tls_port, protocol="tls", tls={"ca_file": str(other.ca_file)})
        async with opened(sink):
            health = await sink.health()
            assert not health.ok and "TLS certificate refused" in health.detail
            with pytest.raises(TransientError, match="TLS certificate refused"):
                await sink.send(cef_records(2))


@pytest.mark.rsyslog
@needs_rsyslog
@needs_tls
async def test_tls_checks_the_server_name(tmp_path: Path) -> None:
    """The certificate must name ``tls_server_name``: a name it lacks is refused, one it has is accepted."""
    async with RsyslogServer(tmp_path, tcp=False, tls=True) as rsyslog:
        assert rsyslog.certificates is not None
        tls = {"ca_file": str(rsyslog.certificates.ca_file)}
        wrong = make_sink(
            tmp_path, port=rsyslog.tls_port, protocol="tls", tls=tls, tls_server_name="siem.example"
        )
        async with opened(wrong):
            health = await wrong.health()
            assert not health.ok and "siem.example" in health.detail
        right = make_sink(
            tmp_path, port=rsyslog.tls_port, protocol="tls", tls=tls, tls_server_name="localhost"
        )
        async with opened(right):
            assert (await right.health()).ok


@pytest.mark.rsyslog
@needs_rsyslog
@needs_tls
async def test_tls_client_certificate_is_presented(tmp_path: Path) -> None:
    """A receiver that only takes clients with a certificate of its CA gets the records from ours."""
    files = make_certificates(tmp_path / "pki")
    async with RsyslogServer(tmp_path, tcp=False, tls=True, certificates=files,
                             require_client_certificate=True) as rsyslog:  # fmt: skip
        tls = {"ca_file": str(files.ca_file), "client_cert": str(files.client_cert),
               "client_key": str(files.client_key)}  # fmt: skip
        async with opened(make_sink(tmp_path, port=rsyslog.tls_port, protocol="tls", tls=tls)) as sink:
            records = cef_records(5)
            await sink.send(records)
            received = await rsyslog.wait_for_lines(len(records))
    assert raws(received) == [rfc5424(r) for r in records]


@pytest.mark.rsyslog
@needs_rsyslog
async def test_lf_framing(tmp_path: Path) -> None:
    """LF framing (what CE and legacy receivers use) delivers the same messages, one per line."""
    records = cef_records(50)
    async with RsyslogServer(tmp_path, tcp=True) as rsyslog:
        async with opened(make_sink(tmp_path, port=rsyslog.tcp_port, framing="lf")) as sink:
            await sink.send(records)
            received = await rsyslog.wait_for_lines(len(records))
    assert raws(received) == [rfc5424(r) for r in records]


@pytest.mark.rsyslog
@needs_rsyslog
async def test_udp_one_datagram_per_record(tmp_path: Path) -> None:
    """Over UDP each record is one datagram holding exactly one syslog message, without framing."""
    records = cef_records(40)
    async with RsyslogServer(tmp_path, tcp=False, udp=True) as rsyslog:
        async with opened(make_sink(tmp_path, port=rsyslog.udp_port, protocol="udp")) as sink:
            health = await sink.health()
            assert health.ok and str(rsyslog.udp_port) in health.detail
            assert not (await sink.send(records)).rejected
            received = await rsyslog.wait_for_lines(len(records))
    assert Counter(raws(received)) == Counter(rfc5424(r) for r in records)
    assert {m.input for m in received} == {"udp"}


@pytest.mark.rsyslog
@needs_rsyslog
async def test_rfc3164_header(tmp_path: Path) -> None:
    """``header: rfc3164`` sends ``<PRI>Mmm dd hh:mm:ss HOST TAG: MSG``, parsed as such by rsyslog."""
    records = cef_records(20)
    async with RsyslogServer(tmp_path, tcp=True) as rsyslog:
        sink = make_sink(
            tmp_path, port=rsyslog.tcp_port, header="rfc3164", facility="local0", severity="notice"
        )
        async with opened(sink):
            await sink.send(records)
            received = await rsyslog.wait_for_lines(len(records))
    assert raws(received) == [rfc3164(r, pri=16 * 8 + 5) for r in records]
    first = received[0]
    assert (first.version, first.hostname, first.app_name, first.facility, first.severity) == (
        0, HOST, "netskopece", 16, 5,
    )  # fmt: skip
    assert first.msg.lstrip(" ") == records[0].data.decode()  # rsyslog keeps the space after "TAG:"


@pytest.mark.rsyslog
@needs_rsyslog
async def test_oversize_record_is_rejected_alone(tmp_path: Path) -> None:
    """A record over max_message_bytes is refused with a reason; the others of the batch are delivered."""
    records = cef_records(5)
    records[2] = cef_records(1, start=2, url="x" * 5000)[0]
    async with RsyslogServer(tmp_path, tcp=True) as rsyslog:
        async with opened(make_sink(tmp_path, port=rsyslog.tcp_port, max_message_bytes=4096)) as sink:
            result = await sink.send(records)
            received = await rsyslog.wait_for_lines(4)
    assert [index for index, _ in result.rejected] == [2]
    assert "larger than max_message_bytes (4096)" in result.rejected[0][1]
    # TCP keeps order: had the big one been sent, it would have come before the last one.
    assert raws(received) == [rfc5424(r) for i, r in enumerate(records) if i != 2]


@pytest.mark.rsyslog
@needs_rsyslog
async def test_oversize_udp_record_is_rejected_alone(tmp_path: Path) -> None:
    """Over UDP a record beyond the 65,000-byte default never leaves as a truncated datagram."""
    records = cef_records(3)
    records[1] = cef_records(1, start=1, url="y" * 70_000)[0]
    async with RsyslogServer(tmp_path, tcp=False, udp=True) as rsyslog:
        async with opened(make_sink(tmp_path, port=rsyslog.udp_port, protocol="udp")) as sink:
            result = await sink.send(records)
            received = await rsyslog.wait_for_lines(2)
    assert [index for index, _ in result.rejected] == [1]
    assert "65000" in result.rejected[0][1]
    assert Counter(raws(received)) == Counter([rfc5424(records[0]), rfc5424(records[2])])


@pytest.mark.rsyslog
@needs_rsyslog
async def test_reconnects_after_the_receiver_restarted(tmp_path: Path) -> None:
    """A connection the receiver closed is noticed before the next batch: a new one is made, nothing lost."""
    first, second = cef_records(10), cef_records(10, start=10)
    async with RsyslogServer(tmp_path, tcp=True) as rsyslog:
        async with opened(make_sink(tmp_path, port=rsyslog.tcp_port)) as sink:
            await sink.send(first)
            await rsyslog.wait_for_lines(10)
            await rsyslog.restart()
            await sink.send(second)
            received = await rsyslog.wait_for_lines(20)
    assert raws(received) == [rfc5424(r) for r in first + second]


@pytest.mark.rsyslog
@needs_rsyslog
async def test_batch_retried_after_an_outage_is_delivered(tmp_path: Path) -> None:
    """While rsyslog is down send() raises TransientError; the same batch sent again once it is up arrives."""
    first, second = cef_records(10), cef_records(10, start=10)
    async with RsyslogServer(tmp_path, tcp=True) as rsyslog:
        async with opened(make_sink(tmp_path, port=rsyslog.tcp_port)) as sink:
            await sink.send(first)
            await rsyslog.wait_for_lines(10)
            await rsyslog.stop()
            with pytest.raises(TransientError):
                await sink.send(second)
            await rsyslog.start()
            health = await sink.health()
            assert health.ok, health.detail
            await sink.send(second)  # what the core's route does with a batch that failed transiently
            received = await rsyslog.wait_for_lines(20)
    assert raws(received) == [rfc5424(r) for r in first + second]


# -- end to end ----------------------------------------------------------------------------------------

TOKEN = "syslog-e2e-token-0123456789"
SUBTYPES = ("dlp", "malware")


@pytest.mark.rsyslog
@needs_rsyslog
async def test_pipeline_ships_every_record_to_rsyslog(tmp_path: Path) -> None:
    """Simulator → daemon → syslog sink (CEF over TCP, octet counting) → rsyslog: every ``_id`` arrives."""
    backlog = 500
    simulator = running_simulator(tokens={TOKEN: None}, backlog=backlog, arrival_rate=0, idle_wait_time=0.2)
    async with simulator as sim, RsyslogServer(tmp_path, tcp=True) as rsyslog:
        assert sim.url is not None
        config: dict[str, Any] = {
            "version": 1,
            "state": state_section(tmp_path / "state" / "db.sqlite"),
            "health": {"interval": "1h", "syslog": {"enabled": False}},
            "shutdown_grace": "5s",
            "tenants": [{"name": "sim", "url": sim.url, "token": {"$env": "SIM_TOKEN"}, "start": "2h"}],
            "logs": {"routes": [{
                "name": "siem", "tenant": "sim", "alerts": list(SUBTYPES), "format": "cef",
                "sink": {"type": "syslog", "host": "127.0.0.1", "port": rsyslog.tcp_port, "protocol": "tcp"},
            }]},
        }  # fmt: skip
        path = write_pipeline(tmp_path / "pipeline.yaml", config)
        async with DaemonProcess(path, env={"SIM_TOKEN": TOKEN}) as daemon:
            received = await rsyslog.wait_for_lines(backlog * len(SUBTYPES), timeout=50)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(30) == 0
    assert len(received) >= backlog * len(SUBTYPES)
    # Everything rsyslog got until it stopped: each record exactly once (a clean run has no retries).
    ids = Counter(_external_id(m.msg) for m in rsyslog.messages)
    expected = {record_id(sim.seed, "alerts", subtype, seq) for subtype in SUBTYPES for seq in range(backlog)}
    assert set(ids) == expected
    assert max(ids.values()) == 1
    assert all(m.app_name == "netskopece" and m.version == 1 and m.input == "tcp" for m in rsyslog.messages)


def _external_id(cef: str) -> str:
    match = re.search(r"(?:^|\s)externalId=([0-9a-f]{24})(?:\s|$)", cef)
    assert match, cef
    return match.group(1)
