"""Syslog headers (RFC 5424, RFC 3164, none) and framing (octet counting, LF), byte for byte."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon import framing as framing_module
from ce_daemon.framing import LATEST_TIMESTAMP, SyslogFramer

MESSAGE = b"CEF:0|Netskope|acme|NULL|DLP|n|High|suser=z\xc3\xab"  # ends in a two-byte UTF-8 character
WHEN = 1700000000.123  # 2023-11-14 22:13:20.123 UTC


@pytest.mark.parametrize(
    ("header", "framing", "expected"),
    [
        ("rfc5424", "octet", b"99 <134>1 2023-11-14T22:13:20.123Z host1 ce-daemon - - - " + MESSAGE),
        ("rfc5424", "lf", b"<134>1 2023-11-14T22:13:20.123Z host1 ce-daemon - - - " + MESSAGE + b"\n"),
        ("rfc3164", "octet", b"83 <134>Nov 14 22:13:20 host1 ce-daemon: " + MESSAGE),
        ("rfc3164", "lf", b"<134>Nov 14 22:13:20 host1 ce-daemon: " + MESSAGE + b"\n"),
        ("none", "octet", b"45 " + MESSAGE),
        ("none", "lf", MESSAGE + b"\n"),
    ],
)
def test_header_and_framing(header: str, framing: str, expected: bytes) -> None:
    """Each header style under each framing, exactly; octet counts are bytes, not characters."""
    framer = SyslogFramer(header, framing, hostname="host1")  # type: ignore[arg-type]
    assert framer.frame(MESSAGE, WHEN) == expected


def test_octet_count_matches_the_frame() -> None:
    """The length prefix is the exact size of what follows the space."""
    framed = SyslogFramer("rfc5424", "octet", hostname="h").frame("é|ü".encode() * 40, WHEN)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest)


def test_priority_from_facility_and_severity() -> None:
    """PRI is facility * 8 + severity; a per-message severity overrides the default."""
    framer = SyslogFramer("rfc5424", "lf", facility=1, severity=5, hostname="h")
    assert framer.frame(b"m", WHEN).startswith(b"<13>1 ")
    assert framer.frame(b"m", WHEN, severity=2).startswith(b"<10>1 ")


def test_rfc5424_optional_fields_and_bom() -> None:
    """PROCID and MSGID replace the NILVALUE; bom=True puts the UTF-8 BOM before the message."""
    framer = SyslogFramer(
        "rfc5424", "lf", hostname="h", app_name="netskopece", procid="4242", msgid="CEF", bom=True
    )
    assert (
        framer.frame(b"m", WHEN) == b"<134>1 2023-11-14T22:13:20.123Z h netskopece 4242 CEF - \xef\xbb\xbfm\n"
    )


def test_rfc3164_tag_with_procid_and_padded_day() -> None:
    """A procid goes in brackets after the tag; single-digit days are space-padded."""
    framer = SyslogFramer("rfc3164", "lf", hostname="h", app_name="netskopece", procid="7")
    march_first = dt.datetime(2024, 3, 1, 9, 5, 7, tzinfo=dt.UTC).timestamp()
    assert framer.frame(b"m", march_first) == b"<134>Mar  1 09:05:07 h netskopece[7]: m\n"


def test_timestamps_in_another_zone() -> None:
    """With a tz, RFC 5424 writes the numeric offset and RFC 3164 the local wall-clock time."""
    zone = dt.timezone(dt.timedelta(hours=-4, minutes=-30))
    assert (
        SyslogFramer("rfc5424", "lf", hostname="h", tz=zone)
        .frame(b"m", WHEN)
        .startswith(b"<134>1 2023-11-14T17:43:20.123-04:30 h ")
    )
    assert (
        SyslogFramer("rfc3164", "lf", hostname="h", tz=zone)
        .frame(b"m", WHEN)
        .startswith(b"<134>Nov 14 17:43:20 h ")
    )


def test_milliseconds_round_and_carry() -> None:
    """Milliseconds are rounded, carrying into the next second when needed."""
    framer = SyslogFramer("rfc5424", "lf", hostname="h")
    assert b" 2023-11-14T22:13:21.000Z " in framer.frame(b"m", 1700000000.9996)
    assert b" 2023-11-14T22:13:20.000Z " in framer.frame(b"m", 1700000000)


def test_cached_second_does_not_leak_between_times() -> None:
    """Consecutive messages in different seconds each get their own timestamp."""
    framer = SyslogFramer("rfc3164", "lf", hostname="h")
    first = framer.frame(b"m", WHEN)
    second = framer.frame(b"m", WHEN + 61)
    assert first.startswith(b"<134>Nov 14 22:13:20 ")
    assert second.startswith(b"<134>Nov 14 22:14:21 ")


@given(
    header=st.sampled_from(["rfc5424", "rfc3164", "none"]),
    bom=st.booleans(),
    frames=st.lists(
        st.tuples(st.integers(-(2**33), 2**34), st.one_of(st.none(), st.integers(0, 7))), max_size=12
    ),
)
def test_whole_second_headers_kept_between_frames_are_the_headers_of_those_seconds(
    header: str, bom: bool, frames: list[tuple[int, int | None]]
) -> None:
    """The header of a whole-second timestamp is kept for the next frame: any sequence of seconds and
    severities frames exactly as each timestamp does on its own, given as a float (never cached)."""
    framer = SyslogFramer(header, "octet", hostname="h", tz=dt.timezone(dt.timedelta(hours=-5)), bom=bom)  # type: ignore[arg-type]
    alone = SyslogFramer(header, "octet", hostname="h", tz=dt.timezone(dt.timedelta(hours=-5)), bom=bom)  # type: ignore[arg-type]
    for second, severity in frames:
        assert framer.frame(b"m", second, severity) == alone.frame(b"m", float(second), severity)


def test_lf_framing_never_lets_a_message_span_two_lines() -> None:
    """A stray LF inside an LF-framed message becomes a space."""
    assert SyslogFramer("none", "lf").frame(b"a\nb", WHEN) == b"a b\n"


def test_default_hostname_is_this_host() -> None:
    """Without a hostname the machine's name is used."""
    import socket

    framed = SyslogFramer("rfc5424", "lf").frame(b"m", WHEN)
    assert framed.split(b" ")[2] == socket.gethostname().encode()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"header": "rfc9999"}, "syslog header"),
        ({"framing": "nul"}, "syslog framing"),
        ({"facility": 24}, "facility"),
        ({"severity": 8}, "severity"),
        ({"hostname": "my host"}, "hostname"),
        ({"app_name": "a" * 49}, "app_name"),
        ({"msgid": "x" * 33}, "msgid"),
        ({"header": "rfc3164", "app_name": "a" * 33}, "app_name"),
        ({"header": "rfc3164", "app_name": "tag:x"}, "3164 tag"),
    ],
)
def test_invalid_options_are_refused(options: dict[str, object], message: str) -> None:
    """Header fields that would make an invalid syslog message are refused up front."""
    with pytest.raises(ValueError, match=message):
        SyslogFramer(**{"hostname": "h", **options})  # type: ignore[arg-type]


_LATEST_IN_ANY_ZONE = 253_402_300_799 - 14 * 3600  # 9999-12-31T23:59:59 wherever the clock is ±14 h


@given(
    header=st.sampled_from(["rfc5424", "rfc3164", "none"]),
    framing=st.sampled_from(["octet", "lf"]),
    bom=st.booleans(),
    hours=st.integers(-14, 14),
    records=st.lists(
        st.tuples(
            st.binary(max_size=40) | st.sampled_from([b"a\nb", b"\n", b""]),
            st.integers(1, _LATEST_IN_ANY_ZONE),
        ),
        max_size=12,
    ),
)
def test_a_batch_framed_at_once_is_each_record_framed_alone(
    header: str, framing: str, bom: bool, hours: int, records: list[tuple[bytes, int]]
) -> None:
    """``frame_all`` writes the bytes of ``frame`` on each record, one after the other, and no header is
    longer than ``header_bound`` says (the syslog sink relies on it to skip checking each record)."""
    zone = dt.timezone(dt.timedelta(hours=hours))
    batch, in_python, alone = (
        SyslogFramer(header, framing, hostname="h", tz=zone, bom=bom, procid="7")  # type: ignore[arg-type]
        for _ in range(3)
    )
    messages, stamps = [m for m, _ in records], [s for _, s in records]
    half = len(records) // 2  # two batches: the header kept from the first serves the second
    expected = b"".join(alone.frame(m, s) for m, s in records)
    assert (
        batch.frame_all(messages[:half], stamps[:half]) + batch.frame_all(messages[half:], stamps[half:])
        == expected
    )
    python = in_python._frame_all(messages[:half], stamps[:half]) + in_python._frame_all(
        messages[half:], stamps[half:]
    )
    assert python == expected
    for stamp in stamps:
        framed = alone.frame(b"", stamp)
        head = framed[framed.index(b" ") + 1 :] if framing == "octet" else framed[:-1]
        assert len(head) <= alone.header_bound()


def test_batches_are_framed_in_c() -> None:
    """The install built ``_framing.c`` (a C compiler is on this machine): the tests here exercise it."""
    assert framing_module.NATIVE_FRAMING


def test_a_batch_with_other_buffers_than_bytes_is_framed_all_the_same() -> None:
    """A sink may hand bytearrays or memoryviews: the C loop leaves such a batch to the Python one."""
    messages = [b"one", bytearray(b"two\nlines"), memoryview(b"three")]
    stamps = [1_700_000_000, 1_700_000_000, 1_700_000_001]
    for framing in ("octet", "lf"):
        alone = SyslogFramer("rfc5424", framing, hostname="h")  # type: ignore[arg-type]
        expected = b"".join(alone.frame(bytes(m), s) for m, s in zip(messages, stamps, strict=True))
        assert SyslogFramer("rfc5424", framing, hostname="h").frame_all(messages, stamps) == expected  # type: ignore[arg-type]


def test_a_batch_needs_one_timestamp_per_message() -> None:
    framer = SyslogFramer(hostname="h")
    with pytest.raises(ValueError, match="timestamp"):
        framer.frame_all([b"a", b"b"], [1_700_000_000])
    with pytest.raises(ValueError, match="shorter"):
        framer._frame_all([b"a", b"b"], [1_700_000_000])


def test_a_timestamp_past_datetimes_range_fails_the_batch_in_either_loop() -> None:
    """The header of a timestamp that cannot be rendered raises as ``frame`` would: no frame is half made."""
    framer = SyslogFramer(hostname="h")
    for frame_all in (framer.frame_all, framer._frame_all):
        with pytest.raises((OverflowError, ValueError, OSError)):
            frame_all([b"a", b"b"], [1_700_000_000, 10**15])


@given(
    framing=st.sampled_from(["octet", "lf"]),
    records=st.lists(
        st.tuples(
            st.binary(max_size=30),
            st.integers(1, _LATEST_IN_ANY_ZONE)
            | st.sampled_from([0, -1, -(2**70), LATEST_TIMESTAMP, LATEST_TIMESTAMP + 1, 2**64, 10**30]),
        ),
        max_size=10,
    ),
    limit=st.none() | st.integers(-2, 35) | st.sampled_from([2**63, 10**30, -(10**30)]),
)
def test_a_batch_is_framed_only_within_its_limit_and_out_of_range_stamps_as_now(
    framing: str, records: list[tuple[bytes, int]], limit: int | None
) -> None:
    """The syslog sink hands ``limit`` (its largest message less the widest header) and ``now``: the
    batch is None when a message is longer than the limit, else each timestamp outside
    1..LATEST_TIMESTAMP is framed as ``now``, in C and in Python alike, over two batches."""
    now = 1_700_000_123
    batch, in_python, alone = (SyslogFramer("rfc5424", framing, hostname="h") for _ in range(3))  # type: ignore[arg-type]
    messages, stamps = [m for m, _ in records], [s for _, s in records]
    half = len(records) // 2
    expected = [alone.frame(m, s if 0 < s <= LATEST_TIMESTAMP else now) for m, s in records]
    for framer, built in ((batch, framing_module._FRAMING), (in_python, None)):
        assert framer is in_python or built is not None  # the C loop is tested, not skipped
        with mock.patch.object(framing_module, "_FRAMING", built):  # None: as without _framing.c
            for part in (slice(None, half), slice(half, None)):
                framed = framer.frame_all(messages[part], stamps[part], limit=limit, now=now)
                if limit is not None and any(len(m) > limit for m in messages[part]):
                    assert framed is None
                else:
                    assert framed == b"".join(expected[part])
