"""From raw values to sightings: normalised, guarded, and what was refused counted by reason.

Every source goes through here (a plain-text list today, the source plugins next), so a value is
refused the same way whichever feed sent it, and a bad line never costs the good ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ce_daemon.plugin import IocRecord
from ce_daemon.threats.guards import Guards, guard
from ce_daemon.threats.model import HASH_LENGTHS, Indicator, IocType, Severity, Sighting, Verdict
from ce_daemon.threats.normalise import normalise

__all__ = ["Intake"]


@dataclass
class Intake:
    """Normalise and guard one poll's values; :attr:`refused` counts each reason."""

    guards: Guards
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def rejected(self) -> int:
        """How many values were refused."""
        return sum(self.refused.values())

    def values(self, raws: Iterable[str], seen: float, kind: IocType | None = None) -> Iterator[Sighting]:
        """A sighting of each raw value that normalises and passes the guards."""
        for raw in raws:
            result = normalise(raw, kind)
            if not isinstance(result, Indicator):
                self.refused[result.cause] += 1
                continue
            objection = guard(result, self.guards)
            if objection is not None:
                self.refused["guarded"] += 1
                continue
            yield Sighting(result, seen)

    def record(self, record: IocRecord, now: float) -> Sighting | None:
        """The sighting a source plugin's record makes, or None (the refusal counted by its cause)."""
        try:
            kind = IocType(record.type) if record.type is not None else None
            verdict, severity = Verdict(record.verdict), Severity(record.severity)
        except ValueError:
            self.refused["unknown_field"] += 1
            return None
        if not isinstance(record.value, str):
            self.refused["not_text"] += 1
            return None
        result = normalise(record.value, kind)
        if not isinstance(result, Indicator):
            self.refused[result.cause] += 1
            return None
        if record.dlp and result.type in HASH_LENGTHS:
            result = Indicator(result.type, result.value, dlp=True)
        if guard(result, self.guards) is not None:
            self.refused["guarded"] += 1
            return None
        seen = (
            record.seen if isinstance(record.seen, int | float) and 0 < record.seen <= now + 86_400 else now
        )
        return Sighting(
            result,
            float(seen),
            verdict,
            severity,
            reputation=min(10, max(1, int(record.reputation))),
            confidence=min(100, max(0, int(record.confidence))),
            tags=tuple(str(tag)[:128] for tag in record.tags[:64]),
            comment=str(record.comment)[:1000],
        )

    def lines(self, lines: Iterable[str], seen: float) -> Iterator[Sighting]:
        """A plain-text list: one value a line, blank lines and ``#`` comments skipped, types guessed."""
        return self.values((s for line in lines if (s := line.strip()) and not s.startswith("#")), seen)
