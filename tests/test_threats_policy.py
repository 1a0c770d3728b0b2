"""Trust and conflicts: priority, max confidence, most recent; the allowlist always wins and retracts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ce_daemon.threats.model import Indicator, IocType, Severity, Verdict
from ce_daemon.threats.policy import Policy
from ce_daemon.threats.settings import Threats
from ce_daemon.threats.store import Merged, StoredIoc

EVIL = Indicator(IocType.DOMAIN, "www.evil.biz")


def row(
    source: str, verdict: Verdict, *, confidence: int = 50, last: float = 0.0, active: bool = True
) -> StoredIoc:
    return StoredIoc(EVIL, source, 0.0, last, 1, verdict, Severity.HIGH, 5, confidence, (), "", 1e12, active)


def policy(conflict: str = "priority", allowlist: tuple[str, ...] = ()) -> Policy:
    return Policy(
        Threats.model_validate(
            {
                "conflict": {"policy": conflict},
                "trust": [{"name": "vendor", "rank": 90}, {"name": "community", "rank": 10}],
                "allowlist": list(allowlist),
            }
        )
    )


DISPUTE = Merged(
    EVIL,
    (
        row("vendor", Verdict.SAFE, confidence=40, last=10.0),
        row("community", Verdict.MALICIOUS, confidence=90, last=20.0),
        row("unranked", Verdict.MALICIOUS, confidence=10, last=5.0),
    ),
)


@pytest.mark.parametrize(
    ("conflict", "source", "verdict"),
    [
        ("priority", "vendor", Verdict.SAFE),
        ("max_confidence", "community", Verdict.MALICIOUS),
        ("most_recent", "community", Verdict.MALICIOUS),
    ],
)
def test_each_conflict_policy_picks_its_source(conflict: str, source: str, verdict: Verdict) -> None:
    """Safe vs malicious is settled by rank, by confidence or by recency, as configured."""
    decision = policy(conflict).decide(DISPUTE)
    assert decision.decided_by is not None
    assert (decision.decided_by.source, decision.verdict) == (source, verdict)


def test_inactive_rows_have_no_say() -> None:
    """An expired or delisted row of a trusted source does not outvote an active one."""
    merged = Merged(EVIL, (row("vendor", Verdict.SAFE, active=False), row("community", Verdict.MALICIOUS)))
    decision = policy().decide(merged)
    assert decision.verdict is Verdict.MALICIOUS
    assert decision.shareable


@pytest.mark.parametrize("entry", ["www.evil.biz", "evil.biz", "WWW.EVIL[.]BIZ."])
def test_the_allowlist_always_wins_and_retracts_what_was_shared(entry: str) -> None:
    """Allowlisted (itself or its parent domain): safe whatever the sources say; shared before: retract."""
    merged = Merged(EVIL, (row("vendor", Verdict.MALICIOUS, confidence=100),))
    decision = policy(allowlist=(entry,)).decide(merged, shared=True)
    assert (decision.verdict, decision.allowlisted, decision.retract, decision.shareable) == (
        Verdict.SAFE,
        True,
        True,
        False,
    )


def test_allowlisted_networks_and_hosts_cover_what_is_under_them() -> None:
    """A network covers its addresses, a domain the URLs on its hosts; others are untouched."""
    allow = policy(allowlist=("203.0.113.0/24", "corp.example"))
    assert allow.retractions(
        [
            Indicator(IocType.IPV4, "203.0.113.9"),
            Indicator(IocType.URL, "https://mail.corp.example/x"),
            Indicator(IocType.IPV4, "198.51.100.1"),
            Indicator(IocType.URL, "https://corp.example.evil.biz/"),
        ]
    ) == [Indicator(IocType.IPV4, "203.0.113.9"), Indicator(IocType.URL, "https://mail.corp.example/x")]


def test_a_malformed_allowlist_entry_is_refused_with_the_reason() -> None:
    """The section says which entry does not normalise, and why."""
    with pytest.raises(ValidationError, match="allowlist entry 'http://bad:port/'"):
        Threats.model_validate({"allowlist": ["http://bad:port/"]})
