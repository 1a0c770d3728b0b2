"""Options of the ``syslog`` log sink, with the per-protocol defaults resolved at validation time.

Defaults and why:

* ``protocol: tcp``: ordered, with back-pressure, no certificate needed; ``udp`` loses silently when
  the receiver is down or slow, ``tls`` needs the receiver's CA.
* ``port``: 514 for udp and tcp, 6514 for tls (RFC 5425).
* ``framing: octet`` for tcp and tls (RFC 6587 §3.4.1, the only framing RFC 5425 allows); ``lf`` is
  there for receivers that only split on newlines (what Netskope CE itself sends). UDP carries one
  message per datagram (RFC 5426) and takes no framing.
* ``facility: user`` and ``severity: info`` (PRI 14): the values Netskope CE's syslog plugin sends
  (Python's ``SysLogHandler`` defaults), so receivers and rules written for CE's feed keep matching.
* ``max_message_bytes`` (syslog header + record, framing not counted): 65,000 for udp (below the
  65,507-byte payload of one IPv4 datagram), 1 MiB for tcp and tls. Larger records are refused one by
  one (dead-lettered), never truncated.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import Field, field_validator, model_validator

from ce_daemon.http import TlsOptions
from ce_daemon.plugin import PluginOptions, SyslogFramer, Timeout

Protocol = Literal["udp", "tcp", "tls"]

FACILITIES: Final = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14,
    "solaris-cron": 15, "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20,
    "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
SEVERITIES: Final = {
    "emerg": 0, "emergency": 0, "alert": 1, "crit": 2, "critical": 2, "err": 3, "error": 3,
    "warning": 4, "warn": 4, "notice": 5, "info": 6, "informational": 6, "debug": 7,
}  # fmt: skip

UDP_MAX_MESSAGE_BYTES: Final = 65_000
UDP_PAYLOAD_LIMIT: Final = 65_507  # 65,535 - 8 (UDP header) - 20 (IPv4 header)
STREAM_MAX_MESSAGE_BYTES: Final = 1024 * 1024
_DEFAULT_PORTS: Final = {"udp": 514, "tcp": 514, "tls": 6514}


def _code(value: object, names: dict[str, int], what: str, highest: int) -> object:
    """A facility or severity given by name (``local0``) or by number, as its number."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            value = int(text)
        elif text in names:
            return names[text]
        else:
            raise ValueError(
                f"unknown syslog {what} {value!r}; use a number 0-{highest} or one of: "
                + ", ".join(sorted(names, key=names.__getitem__))
            )
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= highest:
        raise ValueError(f"syslog {what} must be 0-{highest}, not {value}")
    return value


class SyslogSinkOptions(PluginOptions):
    """Options of the ``syslog`` sink (see the module docstring for the defaults)."""

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 514
    protocol: Protocol = "tcp"
    framing: Literal["octet", "lf"] = "octet"
    """Stream framing for tcp and tls; ignored for udp."""
    header: Literal["rfc5424", "rfc3164", "none"] = "rfc5424"
    facility: int = FACILITIES["user"]
    severity: int = SEVERITIES["info"]
    hostname: str | None = None
    """HOSTNAME in the header; default: this machine's name."""
    app_name: str = "netskopece"
    """APP-NAME (RFC 5424) or TAG (RFC 3164): CE's log source identifier by default."""
    tls: TlsOptions = TlsOptions()
    tls_server_name: str | None = None
    """Name the receiver's certificate must carry (SNI too); default: ``host``."""
    connect_timeout: Timeout = 10.0
    write_timeout: Timeout = 60.0
    """How long a batch may wait for the receiver to take it before the connection is given up."""
    max_message_bytes: Annotated[int, Field(ge=64, le=64 * 1024 * 1024)] = STREAM_MAX_MESSAGE_BYTES

    @model_validator(mode="before")
    @classmethod
    def _protocol_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        protocol = data.get("protocol", "tcp")
        if not isinstance(protocol, str) or protocol not in _DEFAULT_PORTS:
            return data  # the field validator reports it
        filled = dict(data)
        filled.setdefault("port", _DEFAULT_PORTS[protocol])
        if protocol == "udp":
            filled.setdefault("max_message_bytes", UDP_MAX_MESSAGE_BYTES)
        return filled

    @field_validator("facility", mode="before")
    @classmethod
    def _facility(cls, value: object) -> object:
        return _code(value, FACILITIES, "facility", 23)

    @field_validator("severity", mode="before")
    @classmethod
    def _severity(cls, value: object) -> object:
        return _code(value, SEVERITIES, "severity", 7)

    @model_validator(mode="after")
    def _consistent(self) -> SyslogSinkOptions:
        if self.protocol != "tls":
            stray = sorted({"tls", "tls_server_name"} & self.model_fields_set)
            if stray:
                raise ValueError(f"{' and '.join(stray)} only apply with protocol: tls")
        if self.protocol == "udp" and self.max_message_bytes > UDP_PAYLOAD_LIMIT:
            raise ValueError(f"max_message_bytes over UDP cannot exceed {UDP_PAYLOAD_LIMIT} (one datagram)")
        self.framer()  # hostname and app_name must be valid header tokens: say so now, not at the first send
        return self

    def framer(self) -> SyslogFramer:
        """The framer these options describe (UDP frames octet-counted; the sink strips the count)."""
        return SyslogFramer(
            header=self.header,
            framing="octet" if self.protocol == "udp" else self.framing,
            facility=self.facility,
            severity=self.severity,
            hostname=self.hostname,
            app_name=self.app_name,
        )

    @property
    def target(self) -> str:
        """``tcp://host:port``, for messages (never contains a secret)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}"
