"""False-positive guards: private ranges, test domains, empty-file hashes, broad entries; each switchable."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.threats.guards import Guards, guard, special_ipv4
from ce_daemon.threats.model import Indicator, IocType
from ce_daemon.threats.normalise import DOTTED_QUAD, normalise

GUARDED = [
    ("10.1.2.3", "private_ips", "private"),
    ("192.168.0.0/16", "private_ips", "private"),
    ("127.0.0.1", "private_ips", "private"),
    ("224.0.0.1", "private_ips", "private"),
    ("192.0.2.7", "private_ips", "private"),
    ("fe80::1", "private_ips", "private"),
    ("http://10.0.0.1/x", "private_ips", "private"),
    ("http://[::1]:8080/", "private_ips", "private"),
    ("example.com", "documentation_domains", "documentation"),
    ("www.example.org", "documentation_domains", "documentation"),
    ("evil.test", "documentation_domains", "documentation"),
    ("http://a.localhost/", "documentation_domains", "documentation"),
    (hashlib.md5(b"").hexdigest(), "empty_file_hashes", "empty file"),
    (hashlib.sha1(b"").hexdigest(), "empty_file_hashes", "empty file"),
    (hashlib.sha256(b"").hexdigest(), "empty_file_hashes", "empty file"),
    ("com", "broad_entries", "top-level"),
    ("*.com", "broad_entries", "top-level"),
    ("http://*/", "broad_entries", "top-level"),
    ("8.0.0.0/7", "broad_entries", "broader"),
    ("2a00::/16", "broad_entries", "broader"),
]


def indicator(raw: str) -> Indicator:
    result = normalise(raw)
    assert isinstance(result, Indicator), result
    return result


@pytest.mark.parametrize(("raw", "switch", "reason"), GUARDED)
def test_each_guard_stops_its_entries_with_a_reason(raw: str, switch: str, reason: str) -> None:
    """With the defaults every guard runs and says why it refused."""
    found = guard(indicator(raw), Guards())
    assert found is not None
    assert reason in found


@pytest.mark.parametrize(("raw", "switch", "reason"), GUARDED)
def test_each_guard_can_be_switched_off(raw: str, switch: str, reason: str) -> None:
    """Switching one guard off lets its entries through (when no other guard objects)."""
    assert guard(indicator(raw), Guards(**{switch: False})) is None


@pytest.mark.parametrize(
    "raw",
    ["evil.example.net.ru", "8.8.8.8", "8.0.0.0/8", "https://evil.biz/a", "http://[2a00::1]/", "ab" * 32],
)
def test_ordinary_indicators_pass(raw: str) -> None:
    """Public addresses, real-looking names and hashes are not touched."""
    assert guard(indicator(raw), Guards()) is None


def test_the_minimum_prefix_is_configurable() -> None:
    """A stricter minimum refuses a /8; a looser one lets a /7 through."""
    assert guard(Indicator(IocType.IPV4, "8.0.0.0/8"), Guards(min_ipv4_prefix=16)) is not None
    assert guard(Indicator(IocType.IPV4, "8.0.0.0/7"), Guards(min_ipv4_prefix=7)) is None


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_the_fast_ipv4_check_answers_as_ipaddress_does(number: int) -> None:
    """The dotted-quad fast path (int ranges from ipaddress's own tables) agrees with parsing the address."""
    address = str(ipaddress.IPv4Address(number))
    network = ipaddress.ip_network(address)
    expected = not network.is_global or network.is_multicast
    assert special_ipv4(address) in (expected, None)
    assert DOTTED_QUAD.fullmatch(address)
    on = guard(Indicator(IocType.IPV4, address), Guards())
    assert (on is not None) == expected


@pytest.mark.parametrize("edge", ["0.0.0.0", "9.255.255.255", "10.0.0.0", "100.63.255.255", "100.64.0.0",
                                  "100.127.255.255", "100.128.0.0", "192.0.0.7", "192.0.0.8", "192.0.0.9",
                                  "192.0.0.170", "192.0.0.171", "192.0.0.172", "223.255.255.255", "224.0.0.0",
                                  "255.255.255.254", "255.255.255.255"])  # fmt: skip
def test_the_fast_ipv4_check_at_range_edges(edge: str) -> None:
    network = ipaddress.ip_network(edge)
    assert special_ipv4(edge) in (not network.is_global or network.is_multicast, None)
