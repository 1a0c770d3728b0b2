"""The Netskope data-export streams: alert and event subtypes, their paths and their names.

Users write subtypes either as the path segment of the REST API v2 (``compromisedcredential``) or as
the display name Cloud Exchange shows (``Compromised Credential``); both are accepted everywhere.
"""

from __future__ import annotations

import difflib
from typing import Literal, get_args

DataKind = Literal["alerts", "events"]
"""The two families of the data-export iterator."""

DATA_KINDS: tuple[DataKind, ...] = get_args(DataKind)

ALERT_SUBTYPES: tuple[str, ...] = (
    "compromisedcredential",
    "ctep",
    "dlp",
    "malsite",
    "malware",
    "policy",
    "quarantine",
    "remediation",
    "securityassessment",
    "uba",
    "watchlist",
    "device",
    "content",
)

EVENT_SUBTYPES: tuple[str, ...] = (
    "alert",
    "application",
    "audit",
    "clientstatus",
    "connection",
    "endpoint",
    "incident",
    "infrastructure",
    "network",
    "page",
)

ALERT_DISPLAY_NAMES: dict[str, str] = {
    "compromisedcredential": "Compromised Credential",
    "ctep": "ctep",
    "dlp": "DLP",
    "malsite": "malsite",
    "malware": "Malware",
    "policy": "policy",
    "quarantine": "quarantine",
    "remediation": "Remediation",
    "securityassessment": "Security Assessment",
    "uba": "uba",
    "watchlist": "watchlist",
    "device": "Device",
    "content": "Content",
}
"""Cloud Exchange's name of each alert subtype; a real alert carries it in ``alert_type``."""

SUBTYPES: dict[DataKind, tuple[str, ...]] = {"alerts": ALERT_SUBTYPES, "events": EVENT_SUBTYPES}

# Every CE display name ("Security Assessment", "DLP") folds onto its path segment once case and
# separators are ignored, so folding is the whole name mapping.
_SEPARATORS = str.maketrans("", "", " _-")


def _fold(name: str) -> str:
    return name.strip().lower().translate(_SEPARATORS)


def dataexport_path(kind: DataKind, subtype: str) -> str:
    """The request path of one data-export stream, e.g. ``/api/v2/events/dataexport/alerts/dlp``."""
    return f"/api/v2/events/dataexport/{kind}/{subtype}"


def check_kind(kind: str) -> DataKind:
    """``kind`` as a `DataKind`; raises `ValueError` naming the two valid kinds otherwise."""
    folded = _fold(kind)
    for valid in DATA_KINDS:
        if folded == valid:
            return valid
    raise ValueError(f"unknown data kind {kind!r}: expected one of {', '.join(DATA_KINDS)}")


def normalise_subtype(kind: DataKind, name: str) -> str:
    """The path segment for ``name``, given as a path segment or a CE display name, any case.

    Raises `ValueError` listing the valid names of ``kind`` and suggesting the nearest one.
    """
    valid = SUBTYPES[kind]
    folded = _fold(name)
    if folded in valid:
        return folded
    message = f"unknown {kind} subtype {name!r}; valid subtypes: {', '.join(valid)}"
    nearest = difflib.get_close_matches(folded, valid, n=1, cutoff=0.5)
    if nearest:
        message += f". Did you mean {nearest[0]!r}?"
    raise ValueError(message)


def parse_stream(text: str) -> tuple[DataKind, str]:
    """``"alerts/dlp"`` (or ``"alerts/Compromised Credential"``) as ``(kind, subtype)``."""
    kind_text, sep, subtype_text = text.partition("/")
    if not sep:
        raise ValueError(f"expected KIND/SUBTYPE such as 'alerts/dlp', got {text!r}")
    kind = check_kind(kind_text)
    return kind, normalise_subtype(kind, subtype_text)


def all_streams() -> tuple[tuple[DataKind, str], ...]:
    """Every (kind, subtype) pair the data-export API serves."""
    return tuple((kind, subtype) for kind in DATA_KINDS for subtype in SUBTYPES[kind])
