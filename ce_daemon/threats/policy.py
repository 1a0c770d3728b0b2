"""Trust and conflicts: which source's word counts for an indicator, and the local allowlist that vetoes all.

Sources disagree (one calls a URL safe, another malicious). The merged view keeps every source's
row; :class:`Policy` picks the row that decides, by the section's ``conflict.policy``:

- ``priority``: the source with the highest trust rank (``threats.trust``), then the most recent;
- ``max_confidence``: the row with the highest confidence, then the highest rank;
- ``most_recent``: the latest sighting, then the highest rank.

Only active rows take part (an expired or delisted row has no say). The local allowlist always
wins: an allowlisted indicator is safe whatever any source says, and one already shared is marked
for retraction (CE applies the allowlist on the way out too, netskope-ce.md §3). A domain on the
allowlist covers its subdomains and the URLs on them; a network covers its addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ce_daemon.threats.model import Indicator, IocType, Verdict
from ce_daemon.threats.normalise import normalise
from ce_daemon.threats.settings import Threats
from ce_daemon.threats.store import Merged, StoredIoc

__all__ = ["DEFAULT_RANK", "Decision", "Policy"]

DEFAULT_RANK: Final = 50
"""The trust rank of a source ``threats.trust`` does not list."""
_HOSTS: Final = (IocType.DOMAIN, IocType.HOSTNAME)
_IPS: Final = (IocType.IPV4, IocType.IPV6)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy makes of one merged indicator."""

    indicator: Indicator
    verdict: Verdict
    decided_by: StoredIoc | None
    """The row whose word counts; None when the allowlist decided or no source lists it any more."""
    allowlisted: bool = False
    retract: bool = False
    """Shared before, and now allowlisted or inactive: destinations that can should drop it."""

    @property
    def shareable(self) -> bool:
        """Malicious by the deciding row, and not allowlisted."""
        return self.verdict is Verdict.MALICIOUS and not self.allowlisted and self.decided_by is not None


class Policy:
    """The ``threats:`` section's trust ranks, conflict policy and allowlist, applied to merged indicators."""

    def __init__(self, settings: Threats) -> None:
        self.ranks = {trust.name: trust.rank for trust in settings.trust}
        self.order: Callable[[StoredIoc], tuple[float, ...]] = {
            "priority": lambda r: (self.rank(r.source), r.last_seen),
            "max_confidence": lambda r: (r.confidence, self.rank(r.source)),
            "most_recent": lambda r: (r.last_seen, self.rank(r.source)),
        }[settings.conflict.policy]
        self.allowed: set[Indicator] = set()
        self.allowed_hosts: set[str] = set()
        self.allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in settings.allowlist:
            self._allow(raw)

    @property
    def has_allowlist(self) -> bool:
        """False when nothing is allowlisted (the check can be skipped)."""
        return bool(self.allowed)

    def rank(self, source: str) -> int:
        """The trust rank of ``source``."""
        return self.ranks.get(source, DEFAULT_RANK)

    def allowlisted(self, indicator: Indicator) -> bool:
        """True when the local allowlist covers ``indicator``."""
        if Indicator(indicator.type, indicator.value) in self.allowed:
            return True
        if indicator.type in _HOSTS or indicator.type is IocType.URL:
            host = indicator.value
            if indicator.type is IocType.URL:
                host = host.partition("://")[2].partition("/")[0].rpartition("@")[2].partition(":")[0]
            labels = host.split(".")
            return any(".".join(labels[i:]) in self.allowed_hosts for i in range(len(labels)))
        if indicator.type in _IPS:
            network = ipaddress.ip_network(indicator.value)
            return any(
                network.version == allowed.version and network.subnet_of(allowed)  # type: ignore[arg-type]
                for allowed in self.allowed_networks
            )
        return False

    def decide(self, merged: Merged, *, shared: bool = False) -> Decision:
        """The verdict on ``merged``; ``shared`` says whether it was pushed to a destination before."""
        if self.allowlisted(merged.indicator):
            return Decision(merged.indicator, Verdict.SAFE, None, allowlisted=True, retract=shared)
        active = [row for row in merged.rows if row.active]
        if not active:
            return Decision(merged.indicator, Verdict.SAFE, None, retract=shared)
        winner = max(active, key=self.order)
        return Decision(
            merged.indicator, winner.verdict, winner, retract=shared and winner.verdict is Verdict.SAFE
        )

    def retractions(self, shared: Iterable[Indicator]) -> list[Indicator]:
        """Of the indicators already shared, those the allowlist now vetoes."""
        return [indicator for indicator in shared if self.allowlisted(indicator)]

    def _allow(self, raw: str) -> None:
        result = normalise(raw)
        if not isinstance(result, Indicator):
            return  # the section's validation reports it (Threats.allowlist)
        self.allowed.add(result)
        if result.type in _HOSTS:
            self.allowed_hosts.add(result.value)
        elif result.type in _IPS:
            self.allowed_networks.append(ipaddress.ip_network(result.value))
