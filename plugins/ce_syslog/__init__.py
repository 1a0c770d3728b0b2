"""The ``syslog`` log sink: RFC 5424 / RFC 3164 messages over TCP, TLS (RFC 5425) or UDP (RFC 5426)."""

from __future__ import annotations

from ce_syslog.options import SyslogSinkOptions
from ce_syslog.sink import SyslogSink

__all__ = ["SyslogSink", "SyslogSinkOptions"]
