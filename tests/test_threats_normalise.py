"""IOC normalisation: one spelling per indicator, bad input rejected with the reason, never raised."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.threats.guards import Guards
from ce_daemon.threats.intake import Intake
from ce_daemon.threats.model import MAX_VALUE_LENGTH, Indicator, IocType, Rejected
from ce_daemon.threats.normalise import normalise, refang

SAME = [
    ("hxxps://Evil[.]Example.:443/a?b#frag", IocType.URL, "https://evil.example/a?b"),
    ("HTTP://EVIL.example:80", IocType.URL, "http://evil.example/"),
    ("evil(.)example/x", IocType.URL, "http://evil.example/x"),
    ("ftp://files.example:21/f", IocType.URL, "ftp://files.example/f"),
    ("http://evil.example:8080/P", IocType.URL, "http://evil.example:8080/P"),
    ("http://[2001:DB8::1]:80/", IocType.URL, "http://[2001:db8::1]/"),
    ("EVIL.example.", IocType.DOMAIN, "evil.example"),
    ("bücher.example", IocType.DOMAIN, "xn--bcher-kva.example"),
    ("WWW.Evil[.]example", IocType.HOSTNAME, "www.evil.example"),
    ("10.0.0.1/32", IocType.IPV4, "10.0.0.1"),
    ("10.1.2.3/8", IocType.IPV4, "10.0.0.0/8"),
    ("198[.]51[.]100[.]7", IocType.IPV4, "198.51.100.7"),
    ("2001:DB8:0:0::1", IocType.IPV6, "2001:db8::1"),
    ("D41D8CD98F00B204E9800998ECF8427F", IocType.MD5, "d41d8cd98f00b204e9800998ecf8427f"),
    ("A" * 40, IocType.SHA1, "a" * 40),
    ("0F" * 32, IocType.SHA256, "0f" * 32),
]


@pytest.mark.parametrize(("raw", "kind", "value"), SAME)
def test_each_form_normalises_to_its_one_spelling(raw: str, kind: IocType, value: str) -> None:
    """The documented rules: case, IDNA, refanging, default ports, trailing dots, hex case, IP forms."""
    assert normalise(raw, kind) == Indicator(kind, value)


@pytest.mark.parametrize(("raw", "kind", "value"), SAME)
def test_the_type_of_an_untyped_value_is_guessed(raw: str, kind: IocType, value: str) -> None:
    """An untyped value: URLs, IPs, hashes and names are told apart (a hostname reads as a domain)."""
    guessed = IocType.DOMAIN if kind is IocType.HOSTNAME else kind
    assert normalise(raw) == Indicator(guessed, value)


@pytest.mark.parametrize(
    ("raw", "kind", "reason"),
    [
        ("", None, "empty"),
        ("a b.example", None, "whitespace"),
        ("x" * (MAX_VALUE_LENGTH + 1), None, "longer than"),
        ("gopher://evil.example/", IocType.URL, "scheme"),
        ("http://evil.example:99999/", IocType.URL, "port"),
        ("http://[::1/", IocType.URL, "IPv6"),
        ("evil..example", IocType.DOMAIN, "label"),
        ("ev!l.example", IocType.DOMAIN, "label"),
        ("a.*.example", IocType.DOMAIN, "wildcard"),
        ("10.0.0.1", IocType.DOMAIN, "IP address"),
        ("10.0.0.256", IocType.IPV4, "not an IP"),
        ("2001:db8::1", IocType.IPV4, "IPv6"),
        ("abc", IocType.MD5, "hex digits"),
        ("g" * 32, IocType.MD5, "hexadecimal"),
        ("evil.example", IocType.URL, None),
    ],
)
def test_bad_values_are_rejected_with_the_reason(raw: str, kind: IocType | None, reason: str | None) -> None:
    """Each malformed value becomes a Rejected that says why (the last row shows a bare host is a URL)."""
    result = normalise(raw, kind)
    if reason is None:
        assert isinstance(result, Indicator)
    else:
        assert isinstance(result, Rejected)
        assert reason in result.reason


def test_only_hashes_are_dlp_fingerprints() -> None:
    """The DLP flag marks file hashes; on any other type it is a rejection."""
    assert normalise("a" * 64, IocType.SHA256, dlp=True) == Indicator(IocType.SHA256, "a" * 64, dlp=True)
    rejected = normalise("evil.example", IocType.DOMAIN, dlp=True)
    assert isinstance(rejected, Rejected)
    assert "DLP" in rejected.reason


def test_non_text_is_rejected() -> None:
    """A feed that hands over a number or None gets a rejection, not a TypeError."""
    assert isinstance(normalise(42), Rejected)
    assert isinstance(normalise(None), Rejected)


kinds = st.sampled_from([None, *IocType])
texts = st.text(max_size=120)
urlish = st.builds(
    "{}://{}{}/{}".format,
    st.sampled_from(["http", "HTTPS", "hxxp", "ftp"]),
    st.from_regex(r"[A-Za-z0-9-]{1,10}(\.[A-Za-z0-9-]{1,10}){1,3}", fullmatch=True),
    st.sampled_from(["", ":80", ":443", ":8080"]),
    st.text(alphabet="abc/?=&.-_%", max_size=20),
)


@given(raw=st.one_of(texts, urlish), kind=kinds)
def test_normalise_never_raises_and_is_idempotent(raw: str, kind: IocType | None) -> None:
    """Any text gives an Indicator or a Rejected; an Indicator's value normalises to itself."""
    result = normalise(raw, kind)
    assert isinstance(result, Indicator | Rejected)
    if isinstance(result, Indicator):
        assert normalise(result.value, result.type) == result


@given(raw=urlish)
def test_the_defanged_form_equals_the_fanged_one(raw: str) -> None:
    """Defanging a URL's dots and scheme changes nothing once normalised (a bad one stays rejected)."""
    defanged = raw.replace(".", "[.]").replace("http", "hxxp", 1)
    fanged, refanged = normalise(raw, IocType.URL), normalise(defanged, IocType.URL)
    if isinstance(fanged, Indicator):
        assert refanged == fanged
    else:
        assert isinstance(refanged, Rejected)


def test_refang_reaches_a_fixed_point() -> None:
    """Nested defanging is undone fully, so normalising twice changes nothing."""
    assert refang("evil[(.)]example") == "evil.example"


def test_a_garbage_feed_is_counted_by_a_few_causes_and_the_good_lines_kept() -> None:
    """Thousands of distinct bad values make a handful of counters, not one per value; good lines pass."""
    lines = [f"ev!l{i}.example" for i in range(1000)] + [f"http://h{i}.biz:{70000 + i}/" for i in range(1000)]
    intake = Intake(Guards())
    kept = list(intake.lines([*lines, "good.biz", "# comment", ""], 0.0))
    assert [s.indicator.value for s in kept] == ["good.biz"]
    assert intake.refused == {"bad host name": 1000, "bad URL": 1000}
