"""What an indicator of compromise is here: its type, its normalised value, and what a source says of it.

The types are CE's (netskope-ce.md §3) with hostname kept apart from domain, as STIX and MISP keep
them: a ``domain`` entry covers a zone, a ``hostname`` one name in it. IPv4 and IPv6 values are an
address or a network in CIDR form (a host prefix, /32 or /128, is the address itself). Hashes of a
file flagged ``dlp`` are DLP file fingerprints (Netskope's file-hash list), not malware verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

MAX_VALUE_LENGTH: Final = 2048
"""Longest raw value accepted (a URL longer than this is rejected, never truncated into another one)."""


class IocType(StrEnum):
    """The kind of an indicator."""

    URL = "url"
    DOMAIN = "domain"
    HOSTNAME = "hostname"
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"


HASH_LENGTHS: Final = {IocType.MD5: 32, IocType.SHA1: 40, IocType.SHA256: 64}
"""Hex digits of each hash type."""


class Severity(StrEnum):
    """CE's severity scale."""

    UNKNOWN = "unknown"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Verdict(StrEnum):
    """What a source says an indicator is: the sides a conflict is between."""

    MALICIOUS = "malicious"
    SAFE = "safe"


@dataclass(frozen=True, slots=True)
class Indicator:
    """A normalised indicator: equal values are the same indicator, whichever form a source wrote."""

    type: IocType
    value: str
    dlp: bool = False
    """A DLP file fingerprint (hash types only)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A raw value that is not an indicator, with why (counted per source, never stored)."""

    raw: str
    reason: str
    """What is wrong, in detail (may quote the value)."""
    cause: str
    """The kind of problem, from a short fixed set: what refusals are counted by (bounded however bad
    the feed)."""


@dataclass(frozen=True, slots=True)
class Sighting:
    """One source's word on one indicator in one poll."""

    indicator: Indicator
    seen: float
    """When the source saw it (epoch seconds)."""
    verdict: Verdict = Verdict.MALICIOUS
    severity: Severity = Severity.UNKNOWN
    reputation: int = 5
    """CE's reputation, 1 (benign) to 10 (malicious)."""
    confidence: int = 50
    """0 to 100: how sure the source is."""
    tags: tuple[str, ...] = field(default=())
    comment: str = ""
