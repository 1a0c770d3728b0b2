"""Netskope threat sinks (a URL list, deployed once a push; a file-hash list), risk actions on users
(UCI impact and reset, SCIM group membership) and the users' UCI as a risk source."""

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
from ce_netskope.uci import NetskopeUciSource, UciSourceOptions
from ce_netskope.urllist import NetskopeUrlListSink, UrlListOptions

__all__ = [
    "FileHashListOptions",
    "NetskopeFileHashSink",
    "NetskopeScimGroupAction",
    "NetskopeUciImpactAction",
    "NetskopeUciResetAction",
    "NetskopeUciSource",
    "NetskopeUrlListSink",
    "ScimGroupOptions",
    "UciImpactOptions",
    "UciResetOptions",
    "UciSourceOptions",
    "UrlListOptions",
]
