"""Netskope threat sinks: a URL list (REST API v2, deployed once a push) and a file-hash list (v1)."""

from __future__ import annotations

from ce_netskope.filehash import FileHashListOptions, NetskopeFileHashSink
from ce_netskope.urllist import NetskopeUrlListSink, UrlListOptions

__all__ = ["FileHashListOptions", "NetskopeFileHashSink", "NetskopeUrlListSink", "UrlListOptions"]
