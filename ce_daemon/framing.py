"""Syslog headers and stream framing for formatted log lines.

Header (``header=``):

* ``rfc5424``: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`` — RFC 3339 timestamp with
  milliseconds (``Z`` in UTC, ``+hh:mm`` otherwise), NILVALUE ``-`` for absent PROCID/MSGID and for the
  structured data; no BOM unless ``bom=True`` (several receivers keep a BOM as message text).
* ``rfc3164``: ``<PRI>Mmm dd hh:mm:ss HOSTNAME TAG: MSG`` (``TAG[PROCID]:`` when a procid is given),
  English month names, space-padded day, no year; CE writes this shape with the tag ``netskopece``.
* ``none``: the message alone (CE's ``skip`` options, or a sink that frames by itself).

Framing (``framing=``): ``octet`` is octet counting, ``LEN SP MSG`` (RFC 6587 §3.4.1, the only framing
RFC 5425 allows over TLS); ``lf`` ends each message with a newline (RFC 6587 non-transparent framing,
what CE sends over TCP/TLS). CEF and LEEF lines never contain a newline and orjson escapes them in
JSON, but an LF-framed message still has any stray LF replaced by a space so one record can never be
read as two.

PRI = facility * 8 + severity; the defaults are local0 (16) and informational (6), giving ``<134>``.
Everything that does not change per record is rendered once; the timestamp text is cached per second.
A whole batch is framed by ``_framing.c`` when it was built (``hatch_build.py``), by a Python loop
otherwise or with ``CE_DAEMON_NATIVE=0``: the same bytes.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Sequence
from typing import Final, Literal

from ce_daemon.accelerators import load

SyslogHeader = Literal["rfc5424", "rfc3164", "none"]
Framing = Literal["octet", "lf"]

LOCAL0: Final = 16
INFORMATIONAL: Final = 6
NILVALUE: Final = "-"
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_BOM: Final = b"\xef\xbb\xbf"
# RFC 5424 §6: HOSTNAME ≤ 255, APP-NAME ≤ 48, PROCID ≤ 128, MSGID ≤ 32 printable US-ASCII characters.
_LIMITS: Final = {"hostname": 255, "app_name": 48, "procid": 128, "msgid": 32}
_TAG_LIMIT: Final = 32  # RFC 3164 §4.1.3


LATEST_TIMESTAMP: Final = 253_402_300_799
"""9999-12-31T23:59:59Z, the last epoch second a header can be written for (datetime's range)."""


def stamp_or_now(timestamp: int, now: int) -> int:
    """``timestamp`` when a header can be written for it (1..:data:`LATEST_TIMESTAMP`), else ``now``: a
    record whose time is missing (0) or absurd is framed with the time it is sent."""
    return timestamp if 0 < timestamp <= LATEST_TIMESTAMP else now


_FRAMING_ABI: Final = 3
"""The ``FRAMING_ABI`` of the ``_framing.c`` this module is written for."""


_FRAMING, FRAMING_STATE = load("ce_daemon._framing", _FRAMING_ABI)
NATIVE_FRAMING: Final = _FRAMING is not None
"""True when batches are framed in C (``_framing.c``); ``FRAMING_STATE`` says why not otherwise."""


def _check_token(name: str, value: str, limit: int) -> str:
    if not value or len(value) > limit or any(not 33 <= ord(ch) <= 126 for ch in value):
        raise ValueError(
            f"syslog {name} must be 1-{limit} printable ASCII characters without spaces, not {value!r}"
        )
    return value


class SyslogFramer:
    """Turns one formatted message into the bytes a syslog stream carries.

    ``frame(message, timestamp)``: ``timestamp`` is epoch seconds (the record's time, or now) and must
    be finite and within datetime's range; ``severity`` overrides the framer's severity for one message.
    """

    __slots__ = (
        "_bom",
        "_cached_base",
        "_cached_second",
        "_cached_zone",
        "_head",
        "_head_second",
        "_header",
        "_lf",
        "_pri",
        "_rest",
        "_severity",
        "_tz",
    )

    def __init__(
        self,
        header: SyslogHeader = "rfc5424",
        framing: Framing = "octet",
        *,
        facility: int = LOCAL0,
        severity: int = INFORMATIONAL,
        hostname: str | None = None,
        app_name: str = "ce-daemon",
        procid: str | None = None,
        msgid: str | None = None,
        tz: dt.tzinfo = dt.UTC,
        bom: bool = False,
    ) -> None:
        if header not in ("rfc5424", "rfc3164", "none"):
            raise ValueError(f"syslog header must be rfc5424, rfc3164 or none, not {header!r}")
        if framing not in ("octet", "lf"):
            raise ValueError(f"syslog framing must be octet or lf, not {framing!r}")
        if not 0 <= facility <= 23:
            raise ValueError(f"syslog facility must be 0-23, not {facility}")
        if not 0 <= severity <= 7:
            raise ValueError(f"syslog severity must be 0-7, not {severity}")
        self._header = header
        self._lf = framing == "lf"
        self._severity = severity
        self._tz = tz
        self._bom = bom and header == "rfc5424"
        self._cached_second: int | None = None
        self._cached_base = b""
        self._cached_zone = b""
        # The whole header of the last whole-second timestamp at the default severity: Netskope's
        # timestamps are whole seconds, and a page's records share a few dozen of them.
        self._head_second: int | None = None
        self._head = b""
        host = _check_token("hostname", hostname or socket.gethostname() or NILVALUE, _LIMITS["hostname"])
        if header == "rfc5424":
            self._pri = tuple(f"<{facility * 8 + level}>1 ".encode("ascii") for level in range(8))
            fields = [host, _check_token("app_name", app_name, _LIMITS["app_name"])]
            fields.append(NILVALUE if procid is None else _check_token("procid", procid, _LIMITS["procid"]))
            fields.append(NILVALUE if msgid is None else _check_token("msgid", msgid, _LIMITS["msgid"]))
            self._rest = (" " + " ".join(fields) + " " + NILVALUE + " ").encode("ascii")
        elif header == "rfc3164":
            self._pri = tuple(f"<{facility * 8 + level}>".encode("ascii") for level in range(8))
            tag = _check_token("app_name", app_name, _TAG_LIMIT)
            if ":" in tag or "[" in tag or "]" in tag:
                raise ValueError(f"RFC 3164 tag must not contain ':', '[' or ']': {tag!r}")
            if procid is not None:
                tag += f"[{_check_token('procid', procid, _LIMITS['procid'])}]"
            self._rest = f" {host} {tag}: ".encode("ascii")
        else:
            self._pri = ()
            self._rest = b""

    def frame(self, message: bytes, timestamp: float, severity: int | None = None) -> bytes:
        """``message`` with the syslog header and the framing; ``timestamp`` in epoch seconds."""
        if timestamp.__class__ is int and severity is None:
            if timestamp != self._head_second:
                self._head = self._header_of(timestamp, self._severity)
                self._head_second = timestamp
            head = self._head
        else:
            head = self._header_of(timestamp, self._severity if severity is None else severity)
        # The message (often a kilobyte) is copied once, into the frame itself.
        if self._lf:
            if b"\n" in message:
                message = message.replace(b"\n", b" ")
            return b"".join((head, message, b"\n"))
        return b"%d %b%b" % (len(head) + len(message), head, message)

    def frame_all(
        self,
        messages: Sequence[bytes],
        timestamps: Sequence[int],
        *,
        limit: int | None = None,
        now: int | None = None,
    ) -> bytes | None:
        """The frames of ``messages`` one after the other, as a stream carries them: the bytes of
        ``b"".join(self.frame(m, t) for m, t in zip(messages, timestamps))``, each message copied once.

        ``timestamps`` are whole epoch seconds; the framer's severity applies to each message. With
        ``now``, each timestamp is framed as :func:`stamp_or_now` gives it (``_framing.c`` applies the
        same rule).
        None, with nothing framed, when a message is longer than ``limit`` bytes: the caller then
        decides record by record.
        """
        if _FRAMING is not None:
            severity = self._severity
            header_of = self._header_of
            framed = _FRAMING.frame_all(
                messages,
                timestamps,
                lambda stamp: header_of(stamp, severity),
                self._lf,
                self._head_second,
                self._head,
                limit,
                now,
                LATEST_TIMESTAMP,
            )
            if framed is not None:
                frames: bytes
                frames, self._head_second, self._head = framed
                return frames
        # In Python: without _framing.c, for messages that are not bytes, and for a message over the limit.
        if limit is not None and messages and max(map(len, messages)) > limit:
            return None
        if now is not None:
            timestamps = [stamp_or_now(stamp, now) for stamp in timestamps]
        return self._frame_all(messages, timestamps)

    def _frame_all(self, messages: Sequence[bytes], timestamps: Sequence[int]) -> bytes:
        """The loop of :meth:`frame_all` in Python, on timestamps it can render."""
        parts: list[bytes] = []
        append = parts.append
        second, head = self._head_second, self._head
        header_of, severity = self._header_of, self._severity
        lf = self._lf
        for message, stamp in zip(messages, timestamps, strict=True):
            if stamp != second:
                head, second = header_of(stamp, severity), stamp
            if lf:
                append(head)
                append(message.replace(b"\n", b" ") if b"\n" in message else message)
                append(b"\n")
            else:
                append(b"%d %b" % (len(head) + len(message), head))
                append(message)
        self._head_second, self._head = second, head
        return b"".join(parts)

    def header_bound(self) -> int:
        """No header this framer writes at its own severity is longer (its timestamp at its widest)."""
        if not self._pri:
            return 0
        widest = 15 if self._header == "rfc3164" else len("9999-12-31T23:59:59.999+23:59")
        return len(self._pri[self._severity]) + widest + len(self._rest) + (len(_BOM) if self._bom else 0)

    def _header_of(self, timestamp: float, severity: int) -> bytes:
        """The syslog header (PRI, version, timestamp, hostname, ...), empty for ``header: none``."""
        if not self._pri:
            return b""
        head = self._pri[severity] + self._stamp(timestamp) + self._rest
        return head + _BOM if self._bom else head

    def _stamp(self, timestamp: float) -> bytes:
        # Round to the millisecond first so that .9996 carries into the next second instead of reading .999.
        second, millis = divmod(round(timestamp * 1000), 1000)
        if second != self._cached_second:
            self._cached_base, self._cached_zone = self._render_second(second)
            self._cached_second = second
        if self._header == "rfc3164":
            return self._cached_base
        return b"%b.%03d%b" % (self._cached_base, millis, self._cached_zone)

    def _render_second(self, second: int) -> tuple[bytes, bytes]:
        """(the timestamp text up to the seconds, the zone suffix) for one epoch second."""
        moment = dt.datetime.fromtimestamp(second, self._tz)
        if self._header == "rfc3164":
            return f"{_MONTHS[moment.month - 1]} {moment.day:2d} {moment:%H:%M:%S}".encode("ascii"), b""
        offset = moment.utcoffset()
        if not offset:
            zone = "Z"
        else:
            minutes = int(offset.total_seconds()) // 60
            sign = "+" if minutes >= 0 else "-"
            zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        return f"{moment:%Y-%m-%dT%H:%M:%S}".encode("ascii"), zone.encode("ascii")
