"""STIX patterns: the observables an indicator's pattern names, and the pattern for one indicator.

Patterns are parsed by the OASIS pattern validator (``stix2-patterns``, the STIX 2.0 or 2.1 grammar
by the object's ``spec_version``), never by regular expressions. Only ``=`` comparisons of a string
literal on these paths are read (STIX 2.1 §9, the spec's own examples)::

    url:value                    → url
    domain-name:value            → domain
    ipv4-addr:value              → ipv4
    ipv6-addr:value              → ipv6
    file:hashes.MD5              → md5      (quoted 'MD5' too)
    file:hashes.'SHA-1' / SHA1   → sha1
    file:hashes.'SHA-256' / SHA256 → sha256

Other comparisons (``LIKE``, ``MATCHES``, ``!=``, other objects or paths) are not indicators we can
block on; they are passed over, and a pattern with none of the above is refused. A pattern whose
observables must hold *together* (``AND`` between comparisons or observations, ``FOLLOWEDBY``, or a
qualifier such as ``WITHIN``) is *compound*: each of its observables is still returned, and the
source tags them ``stix-compound`` so that a rule can keep them apart from plain indicators.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from stix2patterns.exceptions import ParseException
from stix2patterns.v20.inspector import InspectionListener as InspectionListener20
from stix2patterns.v20.pattern import Pattern as Pattern20
from stix2patterns.v21.inspector import InspectionListener as InspectionListener21
from stix2patterns.v21.pattern import Pattern as Pattern21

MAX_PATTERN = 16 * 1024
"""The longest pattern parsed (the grammar's parser is slow on huge inputs)."""
MAX_OBSERVABLES = 100
"""The most observables taken from one pattern."""

_PATHS: dict[tuple[str, str], str] = {
    ("url", "value"): "url",
    ("domain-name", "value"): "domain",
    ("ipv4-addr", "value"): "ipv4",
    ("ipv6-addr", "value"): "ipv6",
}
_HASHES = {"MD5": "md5", "SHA-1": "sha1", "SHA1": "sha1", "SHA-256": "sha256", "SHA256": "sha256"}
_WRITTEN = {
    "url": "url:value",
    "domain": "domain-name:value",
    "hostname": "domain-name:value",
    "ipv4": "ipv4-addr:value",
    "ipv6": "ipv6-addr:value",
    "md5": "file:hashes.MD5",
    "sha1": "file:hashes.'SHA-1'",
    "sha256": "file:hashes.'SHA-256'",
}
"""How the sink writes each of our types (hostnames are STIX domain names)."""
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


class PatternError(ValueError):
    """A pattern that cannot be read (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class Observables:
    """What a pattern names: ``(type, value)`` pairs in pattern order, and whether they hold together."""

    values: tuple[tuple[str, str], ...]
    compound: bool
    passed_over: int
    """Comparisons that are not ``=`` on a path we read."""


class _Conjunctions:
    """Notes an ``AND`` between comparisons inside one observation (the stock inspector does not)."""

    anded = False

    def exitComparisonExpressionAnd(self, ctx: Any) -> None:  # noqa: N802  (the ANTLR listener's name)
        if ctx.AND():
            self.anded = True


class _Inspector21(_Conjunctions, InspectionListener21):  # type: ignore[misc]
    pass


class _Inspector20(_Conjunctions, InspectionListener20):  # type: ignore[misc]
    pass


def string_literal(literal: str) -> str | None:
    """The text of a STIX string literal (``'a\\'b'`` → ``a'b``); None for any other literal."""
    if len(literal) < 2 or literal[0] != "'" or literal[-1] != "'":
        return None
    return _ESCAPED.sub(r"\1", literal[1:-1])


def _kind(object_type: str, path: list[Any]) -> str | None:
    if len(path) == 1 and isinstance(path[0], str):
        return _PATHS.get((object_type, path[0]))
    if object_type == "file" and len(path) == 2 and path[0] == "hashes" and isinstance(path[1], str):
        return _HASHES.get(path[1].upper())
    return None


def observables(pattern: str, spec_version: str = "2.1") -> Observables:
    """The observables ``pattern`` names, by the grammar of ``spec_version`` (``2.1``, else 2.0)."""
    if len(pattern) > MAX_PATTERN:
        raise PatternError(f"pattern of {len(pattern):,} characters (at most {MAX_PATTERN:,} are read)")
    inspector: _Inspector21 | _Inspector20
    try:
        if spec_version == "2.1":
            inspector = _Inspector21()
            Pattern21(pattern).walk(inspector)
        else:
            inspector = _Inspector20()
            Pattern20(pattern).walk(inspector)
    except ParseException as exc:
        raise PatternError(f"pattern does not parse: {str(exc)[:200]}") from exc
    except RecursionError as exc:
        raise PatternError("pattern nested too deeply") from exc
    data = inspector.pattern_data()
    found: dict[tuple[str, str], None] = {}
    passed_over = 0
    for object_type, comparisons in data.comparisons.items():
        for path, operator, literal in comparisons:
            kind = _kind(object_type, path)
            value = string_literal(literal) if kind is not None and operator == "=" else None
            if kind is None or value is None or len(found) >= MAX_OBSERVABLES:
                passed_over += 1
                continue
            found[(kind, value)] = None
    compound = inspector.anded or bool(data.qualifiers) or bool(data.observation_ops & {"AND", "FOLLOWEDBY"})
    return Observables(tuple(found), compound, passed_over)


def escape(value: str) -> str:
    """``value`` as the inside of a STIX string literal: ``\\`` and ``'`` escaped with a backslash."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def pattern_for(ioc_type: str, value: str) -> str:
    """The STIX pattern of one indicator (``[url:value = 'http://…']``)."""
    return f"[{_WRITTEN[ioc_type]} = '{escape(value)}']"


def object_path(ioc_type: str) -> str:
    """The STIX object path our type is written as (``domain-name:value`` for domains and hostnames)."""
    return _WRITTEN[ioc_type]


SUPPORTED_TYPES = frozenset(_WRITTEN)
