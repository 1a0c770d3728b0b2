"""Netskope threat sinks (a URL list, deployed once a push; a file-hash list) and risk actions on users
(UCI impact and reset, SCIM group membership)."""

from __future__ import annotations

from ce_netskope.filehash import FileHashListOptions, NetskopeFileHashSink
from ce_netskope.risk import (
    NetskopeScimGroupAction,
    NetskopeUciImpactAction,
    NetskopeUciResetAction,
    ScimGroupOptions,
    UciImpactOptions,
    UciResetOptions,
)
from ce_netskope.urllist import NetskopeUrlListSink, UrlListOptions

__all__ = [
    "FileHashListOptions",
    "NetskopeFileHashSink",
    "NetskopeScimGroupAction",
    "NetskopeUciImpactAction",
    "NetskopeUciResetAction",
    "NetskopeUrlListSink",
    "ScimGroupOptions",
    "UciImpactOptions",
    "UciResetOptions",
    "UrlListOptions",
]
