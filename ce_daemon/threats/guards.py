"""False-positive guards: indicators that would block half the internet, or nothing real, kept out.

A feed that lists ``10.0.0.0/8``, ``example.com`` or the hash of the empty file would, once shared
to a firewall or Netskope, block a tenant's own network, a test domain every tool uses, or every empty
attachment. MineMeld and CE ship the same guards (threat-intel.md, "false-positive guards"); each is
switchable here, since a lab may want its private ranges listed. A guarded indicator is counted as
rejected with the guard's reason, like a malformed one.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
from typing import Annotated, Final

from pydantic import Field

from ce_daemon.config.values import Strict
from ce_daemon.threats.model import Indicator, IocType
from ce_daemon.threats.normalise import could_be_ip

__all__ = ["DOCUMENTATION_DOMAINS", "EMPTY_FILE_HASHES", "Guards", "guard"]

DOCUMENTATION_DOMAINS: Final = frozenset(
    {"test", "example", "invalid", "localhost", "local", "example.com", "example.net", "example.org"}
)
"""RFC 2606 and RFC 6761 reserved names (and RFC 6762's ``local``), with every name below them."""
EMPTY_FILE_HASHES: Final = frozenset(hashlib.new(name, b"").hexdigest() for name in ("md5", "sha1", "sha256"))
"""The digests of the empty file: listed by sandboxes, matching every empty attachment."""

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Guards(Strict):
    """Which guards run (all by default), and where a network becomes too broad to share."""

    private_ips: bool = True
    """Private, loopback, link-local, multicast, documentation and other non-global IP ranges."""
    documentation_domains: bool = True
    """RFC 2606/6761 test and documentation names (``example.com``, ``*.test`` …)."""
    empty_file_hashes: bool = True
    broad_entries: bool = True
    """Top-level domains alone, wildcard-only URLs, networks shorter than the minimum prefixes."""
    min_ipv4_prefix: Annotated[int, Field(ge=0, le=32)] = 8
    min_ipv6_prefix: Annotated[int, Field(ge=0, le=128)] = 32


def _special_ipv4() -> tuple[list[int], list[int]] | None:
    """The IPv4 ranges ``ipaddress`` calls not global or multicast, as sorted (starts, ends) of ints.

    Built from the module's own tables so that the fast path answers exactly as ``ipaddress`` does
    (a test compares them on random addresses); None, and every address parsed, on a Python whose
    tables are not laid out this way (or that carves exceptions out of the private ranges).
    """
    constants = getattr(ipaddress, "_IPv4Constants", None)
    private = getattr(constants, "_private_networks", None)
    if not isinstance(private, list) or getattr(constants, "_private_networks_exceptions", None):
        return None
    extra = [ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("224.0.0.0/4")]
    spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in [*private, *extra])
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [start for start, _ in merged], [end for _, end in merged]


_SPECIAL_IPV4: Final = _special_ipv4()


def special_ipv4(address: str) -> bool | None:
    """Whether a dotted-quad ``address`` is private or special-purpose (None: ask ``ipaddress``)."""
    if _SPECIAL_IPV4 is None:
        return None
    a, b, c, d = address.split(".")
    number = int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)
    starts, ends = _SPECIAL_IPV4
    at = bisect.bisect_right(starts, number) - 1
    return at >= 0 and number <= ends[at]


def guard(indicator: Indicator, guards: Guards) -> str | None:
    """Why ``indicator`` must not be stored or shared, or None when no enabled guard objects."""
    kind, value = indicator.type, indicator.value
    if kind is IocType.IPV4 and "/" not in value and (special := special_ipv4(value)) is not None:
        # an address (a /32: never broader than any minimum prefix), checked without parsing it again
        return f"{value} is a private or special-purpose range" if guards.private_ips and special else None
    if kind in (IocType.IPV4, IocType.IPV6):
        return _network(ipaddress.ip_network(value), guards)
    if kind in (IocType.DOMAIN, IocType.HOSTNAME):
        return _host(value, guards)
    if kind is IocType.URL:
        return _url(value, guards)
    if guards.empty_file_hashes and value in EMPTY_FILE_HASHES:
        return f"the {kind} of the empty file"
    return None


def _network(network: IpNetwork, guards: Guards) -> str | None:
    if guards.private_ips and (not network.is_global or network.is_multicast):
        return f"{network} is a private or special-purpose range"
    least = guards.min_ipv4_prefix if network.version == 4 else guards.min_ipv6_prefix
    if guards.broad_entries and network.prefixlen < least:
        return f"{network} is broader than /{least}"
    return None


def _host(name: str, guards: Guards) -> str | None:
    labels = name.split(".")
    if guards.documentation_domains:
        for start in range(len(labels)):
            if ".".join(labels[start:]) in DOCUMENTATION_DOMAINS:
                return f"{name} is a reserved documentation or test name"
    if guards.broad_entries and len([label for label in labels if label != "*"]) <= 1:
        return f"{name} covers a whole top-level domain"
    return None


def _url(url: str, guards: Guards) -> str | None:
    host = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
    if host.startswith("["):
        return _network(ipaddress.ip_network(host[1 : host.index("]")]), guards)
    host = host.partition(":")[0]
    if could_be_ip(host):  # normalised: an IPv4 address, or a name
        return _network(ipaddress.ip_network(host), guards)
    return _host(host, guards)
