"""Normalising indicators before they are compared: one spelling per indicator, or the reason there is none.

Feeds write the same indicator many ways (``hxxp://Evil[.]example:80/``, ``EVIL.example.``,
``D41D8CD9…``); deduplication, allowlists and set differences only work on one spelling. The rules
(issue 9, threat-intel.md): lower-case scheme and host, IDNA for international names (UTS #46 via
the ``idna`` package), refang ``hxxp``/``[.]``/``(.)``, strip default ports and trailing dots, hex
hashes lower-case with their length checked, IP addresses and networks through :mod:`ipaddress`.

Bad input is a :class:`~ce_daemon.threats.model.Rejected` with the reason, never an exception:
one malformed line of a feed must not cost the rest of it. :func:`normalise` is idempotent: its
output normalises to itself.
"""

from __future__ import annotations

import ipaddress
import re
import string
from typing import Final

import idna

from ce_daemon.threats.model import HASH_LENGTHS, MAX_VALUE_LENGTH, Indicator, IocType, Rejected

__all__ = ["could_be_ip", "guess_type", "normalise", "normalise_host", "refang"]

_DEFANGS: Final = (
    ("[.]", "."),
    ("(.)", "."),
    ("{.}", "."),
    ("[dot]", "."),
    ("[:]", ":"),
    ("[://]", "://"),
)
_PATH_START: Final = re.compile(r"[/?#]")
_UNSAFE: Final = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029\ufeff]")
_LABEL: Final = re.compile(r"^(?:\*|[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)$")
_HOST: Final = re.compile(
    r"(?:\*|[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*"
)
"""A whole lower-case ASCII host name whose labels :data:`_LABEL` takes, a wildcard first only."""
_DOTS: Final = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_HEX: Final = frozenset(string.hexdigits)
_IP_CHARS: Final = frozenset(string.hexdigits + ".:/")
DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ftp": 21}
"""The URL schemes accepted, with the port each implies (stripped when written)."""
_MAX_HOST: Final = 253


def refang(raw: str) -> str:
    """``raw`` with the usual defanging undone (``hxxp``, ``[.]``, ``(.)``, ``[:]`` …), to a fixed point."""
    value = raw.strip()
    if value[:4].lower() == "hxxp":
        after = 5 if value[4:5] in ("s", "S") else 4
        if value[after : after + 1] == ":" or value[after : after + 2] == "[:":
            value = "http" + value[4:]
    while "[" in value or "(" in value or "{" in value:
        undone = value
        for fanged, plain in _DEFANGS:
            undone = undone.replace(fanged, plain)
        if undone == value:
            break
        value = undone
    return value


def guess_type(value: str) -> IocType:
    """The likeliest type of a refanged value whose source named none (a plain-text feed)."""
    if "://" in value:
        return IocType.URL
    if DOTTED_QUAD.fullmatch(value):
        return IocType.IPV4
    if could_be_ip(value):
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            pass
        else:
            return IocType.IPV4 if network.version == 4 else IocType.IPV6
    if set(value) <= _HEX:
        for kind, length in HASH_LENGTHS.items():
            if len(value) == length:
                return kind
    return IocType.URL if "/" in value else IocType.DOMAIN


def normalise(raw: object, kind: IocType | None = None, *, dlp: bool = False) -> Indicator | Rejected:
    """The one spelling of ``raw`` as an indicator of ``kind`` (guessed when None), or why it is none."""
    if not isinstance(raw, str):
        return Rejected(repr(raw)[:80], f"not text but {type(raw).__name__}", "not text")
    value = refang(raw[: MAX_VALUE_LENGTH + 1])
    problem = _unfit(raw, value)
    if problem is not None:
        return Rejected(raw[:80], problem, problem.split(" (")[0])
    kind = guess_type(value) if kind is None else kind
    if dlp and kind not in HASH_LENGTHS:
        reason = f"only file hashes can be DLP fingerprints, not a {kind}"
        return Rejected(raw, reason, "DLP flag on a non-hash")
    result = _BY_TYPE[kind](value, kind)
    if isinstance(result, str):
        return Indicator(kind, result, dlp)
    return Rejected(raw, result.reason, result.cause)


def _unfit(raw: str, value: str) -> str | None:
    """Why ``raw`` (refanged: ``value``) cannot be any indicator, or None."""
    if len(raw) > MAX_VALUE_LENGTH:
        return f"longer than {MAX_VALUE_LENGTH} characters ({len(raw)})"
    if not value:
        return "empty"
    if _UNSAFE.search(value):
        return "contains whitespace or control characters"
    return None


def _plain_host(host: str) -> str | None:
    """Most names, in one match instead of a check per label: an ASCII name that is valid as it is."""
    if not host.isascii():
        return None
    name = host.rstrip(".").lower()
    return name if len(name) <= _MAX_HOST and _HOST.fullmatch(name) else None


def normalise_host(host: str) -> str | Rejected:
    """A host name lower-cased, without trailing dots, international labels in their ``xn--`` form."""
    return _plain_host(host) or _checked_host(host)


def _checked_host(host: str) -> str | Rejected:
    """:func:`normalise_host` label by label: international names, and why a name is refused."""
    name = host.translate(_DOTS).rstrip(".")
    if not name:
        return Rejected(host, "empty host name", "bad host name")
    labels: list[str] = []
    for label in name.split("."):
        if not label.isascii():
            try:
                label = idna.encode(label, uts46=True).decode("ascii")  # noqa: PLW2901 - the label, encoded
            except (idna.IDNAError, UnicodeError) as exc:
                return Rejected(host, f"not a valid international name: {exc}", "bad international name")
        label = label.lower()  # noqa: PLW2901 - the label, lower-cased
        if not _LABEL.match(label):
            return Rejected(host, f"label {label!r} is not a valid host name label", "bad host name")
        labels.append(label)
    if "*" in labels[1:]:
        return Rejected(host, "a wildcard is only allowed as the first label", "bad host name")
    result = ".".join(labels)
    if len(result) > _MAX_HOST:
        return Rejected(host, f"host name longer than {_MAX_HOST} characters", "bad host name")
    return result


def _hostname(value: str, kind: IocType) -> str | Rejected:
    if _is_ip(value):
        return Rejected(value, f"an IP address, not a {kind}", "wrong type")
    return normalise_host(value)


def _ip(value: str, kind: IocType) -> str | Rejected:
    if kind is IocType.IPV4 and DOTTED_QUAD.fullmatch(value):
        return value  # already canonical: most of a feed's addresses
    want = 4 if kind is IocType.IPV4 else 6
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        return Rejected(value, f"not an IP address or network: {exc}", "bad IP address")
    if network.version != want:
        return Rejected(value, f"an IPv{network.version} value, not {kind}", "wrong type")
    if network.prefixlen < network.max_prefixlen:
        return str(network)
    return str(network.network_address)


def _hash(value: str, kind: IocType) -> str | Rejected:
    length = HASH_LENGTHS[kind]
    if not set(value) <= _HEX:
        return Rejected(value, f"not hexadecimal, as a {kind} must be", "bad hash")
    if len(value) != length:
        return Rejected(value, f"{len(value)} hex digits, a {kind} has {length}", "bad hash")
    return value.lower()


def _url(value: str, kind: IocType) -> str | Rejected:
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "http", value
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        return Rejected(value, f"scheme {scheme!r} is not one of {', '.join(DEFAULT_PORTS)}", "bad URL")
    end = _PATH_START.search(rest)
    cut = end.start() if end else len(rest)
    netloc, tail = rest[:cut], rest[cut:]
    tail = tail.partition("#")[0]  # a fragment never reaches the server
    if not tail.startswith("/"):
        tail = "/" + tail
    userinfo, at, hostport = netloc.rpartition("@")
    host, port = _split_port(hostport)
    if isinstance(port, Rejected):
        return Rejected(value, port.reason, port.cause)
    if host.startswith("["):
        address = _ip(host[1:-1], IocType.IPV6)
        if not host.endswith("]") or isinstance(address, Rejected) or "/" in address:
            return Rejected(value, f"host {host!r} is not an IPv6 address", "bad URL")
        name: str | Rejected = f"[{address}]"
    elif _is_ip(host):
        name = _ip(host, IocType.IPV4)
    else:
        name = normalise_host(host)
    if isinstance(name, Rejected):
        return Rejected(value, name.reason, name.cause)
    shown_port = "" if port in (None, DEFAULT_PORTS[scheme]) else f":{port}"
    return f"{scheme}://{userinfo}{at}{name}{shown_port}{tail}"


def _split_port(hostport: str) -> tuple[str, int | Rejected | None]:
    host, colon, digits = hostport.rpartition(":")
    if not colon or (hostport.startswith("[") and not host.endswith("]")):
        return hostport, None
    if not digits:
        return host, None
    if not digits.isascii() or not digits.isdigit() or int(digits) > 65535:
        return host, Rejected(hostport, f"port {digits!r} is not a number from 0 to 65535", "bad URL")
    return host, int(digits)


_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
DOTTED_QUAD: Final = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
"""An IPv4 address in its one canonical spelling (what ``ipaddress`` writes): matched, it needs no parse."""


def could_be_ip(value: str) -> bool:
    """False when ``value`` surely is no IP address or network (parsing one is slow, and most are not)."""
    return ("." in value or ":" in value) and set(value) <= _IP_CHARS


def _is_ip(value: str) -> bool:
    if not could_be_ip(value):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


_BY_TYPE: Final = {
    IocType.URL: _url,
    IocType.DOMAIN: _hostname,
    IocType.HOSTNAME: _hostname,
    IocType.IPV4: _ip,
    IocType.IPV6: _ip,
    IocType.MD5: _hash,
    IocType.SHA1: _hash,
    IocType.SHA256: _hash,
}
