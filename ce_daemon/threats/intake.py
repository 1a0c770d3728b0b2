"""From raw values to sightings: normalised, guarded, and what was refused counted by reason.

Every source goes through here (a plain-text list today, the source plugins next), so a value is
refused the same way whichever feed sent it, and a bad line never costs the good ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ce_daemon.threats.guards import Guards, guard
from ce_daemon.threats.model import Indicator, IocType, Sighting
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

    def lines(self, lines: Iterable[str], seen: float) -> Iterator[Sighting]:
        """A plain-text list: one value a line, blank lines and ``#`` comments skipped, types guessed."""
        return self.values((s for line in lines if (s := line.strip()) and not s.startswith("#")), seen)
