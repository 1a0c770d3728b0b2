"""From raw values to sightings: normalised, guarded, and what was refused counted by reason.

Every source goes through here (the source plugins, ``iocs import``), so a value is refused the same
way whichever feed sent it, and a bad line never costs the good ones.

A full-list source sends mostly the same values every poll: :class:`Remembered` keeps what the last
poll's raw values became (an indicator, or the cause of their refusal), so a value listed again is
not normalised and guarded again. It holds one poll's values, never more: what the next poll does not
list is forgotten.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ce_daemon.plugin import IocRecord
from ce_daemon.threats.guards import Guards, guard
from ce_daemon.threats.model import HASH_LENGTHS, Indicator, IocType, Severity, Sighting, Verdict
from ce_daemon.threats.normalise import normalise

__all__ = ["Intake", "Remembered"]

Outcome = Indicator | str
"""What a raw value became: an indicator that passed the guards, or the cause of its refusal."""


class Remembered:
    """What the raw values of a full list's last whole poll became (see the module's docstring)."""

    def __init__(self) -> None:
        self.last: dict[object, Outcome] = {}
        self.next: dict[object, Outcome] = {}

    def finish(self) -> None:
        """The poll went through: remember its values (and only those)."""
        self.last, self.next = self.next, {}

    def abandon(self) -> None:
        """The poll failed: keep what the last whole poll listed (and what this one had taken of it)."""
        self.last.update(self.next)
        self.next = {}


@dataclass
class Intake:
    """Normalise and guard one poll's values; :attr:`refused` counts each reason."""

    guards: Guards
    refused: Counter[str] = field(default_factory=Counter)
    memo: Remembered | None = None

    def outcome(self, raw: str, kind: IocType | None = None, *, dlp: bool = False) -> Outcome:
        """What ``raw`` becomes: an indicator that passes the guards, or the cause it is refused for."""
        memo = self.memo
        key: object = raw if kind is None and not dlp else (raw, kind, dlp)
        if memo is not None:
            known = memo.last.pop(key, None)  # moved, not copied: one poll's values held once
            if known is not None:
                memo.next[key] = known
                return known
        result = normalise(raw, kind)
        outcome: Outcome
        if not isinstance(result, Indicator):
            outcome = result.cause
        else:
            if dlp and result.type in HASH_LENGTHS:
                result = Indicator(result.type, result.value, dlp=True)
            outcome = "guarded" if guard(result, self.guards) is not None else result
        if memo is not None:
            memo.next[key] = outcome
        return outcome

    @property
    def rejected(self) -> int:
        """How many values were refused."""
        return sum(self.refused.values())

    def values(self, raws: Iterable[str], seen: float, kind: IocType | None = None) -> Iterator[Sighting]:
        """A sighting of each raw value that normalises and passes the guards."""
        for raw in raws:
            outcome = self.outcome(raw, kind)
            if isinstance(outcome, str):
                self.refused[outcome] += 1
                continue
            yield Sighting(outcome, seen)

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
        outcome = self.outcome(record.value, kind, dlp=bool(record.dlp))
        if isinstance(outcome, str):
            self.refused[outcome] += 1
            return None
        seen = (
            record.seen if isinstance(record.seen, int | float) and 0 < record.seen <= now + 86_400 else now
        )
        return Sighting(
            outcome,
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
