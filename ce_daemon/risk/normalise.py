"""Every source's raw scores onto Netskope's scale: 0-1000, higher = safer, with its four bands.

A source's :class:`~ce_daemon.plugin.RiskScale` says how (tickets-risk.md §4.3, CE's formulas):

- fixed bounds ``low``-``high``: ``(x - low) / (high - low) * 1000``, inverted (``1000 - that``) when
  the raw scale has higher = riskier; a value outside the bounds is skipped and counted (KnowBe4's
  ``1000 - 10 x``, BitSight's ``(x - 250) / 650 * 1000``, CrowdStrike ZTA's ``x * 10`` with 0-100);
- population min-max (an unbounded index such as Proofpoint's): over each poll's values,
  ``(x - min) / (max - min) * 999 + 1`` (CE's +1: nobody scores 0), inverted as
  ``(1 - (x - min) / (max - min)) * 999 + 1``; when max = min the denominator is clamped to 1;
- labels: a grade or level maps to its value (case-insensitive; Okta's LOW 875, MEDIUM 625, HIGH 375);
  an unknown label is skipped.

A value that is not a finite number is skipped whatever the scale.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from ce_daemon.plugin import RiskRecord, RiskScale

__all__ = ["BANDS", "Normalised", "PollScores", "band", "normalise_poll", "normalise_value"]

TOP: Final = 1000.0
BANDS: Final = ("critical", "high", "medium", "low")
"""Netskope's bands, worst first: Critical 0-250, High 251-500, Medium 501-750, Low 751-1000."""


def band(score: float) -> str:
    """The band of a score on Netskope's scale (``critical`` up to 250 included, ``low`` above 750)."""
    if score <= 250:
        return "critical"
    if score <= 500:
        return "high"
    if score <= 750:
        return "medium"
    return "low"


@dataclass(frozen=True, slots=True)
class Normalised:
    """One record of a poll on Netskope's scale."""

    entity: str
    key: str
    raw: float | None
    label: str | None
    score: float
    seen: float | None
    attributes: dict[str, str]


@dataclass(slots=True)
class PollScores:
    """A poll's records normalised, and what was skipped (reason → count)."""

    records: list[Normalised] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def normalise_value(  # noqa: PLR0911 - one return per case of the scale
    scale: RiskScale, raw: object, label: str | None = None, population: tuple[float, float] | None = None
) -> float | str:
    """``raw`` (or ``label``) on Netskope's scale, or why it is skipped (a short reason)."""
    if scale.labels is not None and label is not None:
        folded = {k.casefold(): v for k, v in scale.labels.items()}
        value = folded.get(label.strip().casefold())
        if value is None:
            return "unknown label"
        return min(TOP, max(0.0, float(value)))
    number = _finite(raw)
    if number is None:
        return "no score" if raw is None and label is None else "not a number"
    if scale.population:
        low, high = population if population is not None else (number, number)
        span = high - low if high > low else 1.0
        fraction = min(1.0, max(0.0, (number - low) / span))
        if not scale.higher_is_safer:
            fraction = 1.0 - fraction
        return fraction * 999.0 + 1.0
    if scale.high <= scale.low:
        return "bad scale"
    if number < scale.low or number > scale.high:
        return "out of range"
    fraction = (number - scale.low) / (scale.high - scale.low)
    score = fraction * TOP if scale.higher_is_safer else (1.0 - fraction) * TOP
    return min(TOP, max(0.0, score))


def normalise_poll(
    scale: RiskScale, records: Iterable[RiskRecord], entities: Sequence[str] | None = None
) -> PollScores:
    """A whole poll's records normalised (a population scale's min and max taken over the poll).

    Records of an entity type not in ``entities`` (when given), without a key, or whose value is
    skipped are counted in :attr:`PollScores.skipped`; e-mail keys (users) are lower-cased.
    """
    result = PollScores()
    kept: list[RiskRecord] = []
    for record in records:
        if record.entity not in ("user", "device", "application") or (
            entities is not None and record.entity not in entities
        ):
            result.skipped["unknown entity type"] += 1
            continue
        if not record.key.strip():
            result.skipped["no key"] += 1
            continue
        kept.append(record)
    population: tuple[float, float] | None = None
    if scale.population:
        values = [v for v in (_finite(r.score) for r in kept) if v is not None]
        if values:
            population = (min(values), max(values))
    for record in kept:
        score = normalise_value(scale, record.score, record.label, population)
        if isinstance(score, str):
            result.skipped[score] += 1
            continue
        key = record.key.strip()
        if record.entity == "user":
            key = key.lower()
        result.records.append(
            Normalised(
                record.entity,
                key[:512],
                _finite(record.score),
                record.label[:100] if isinstance(record.label, str) else None,
                round(score, 3),
                _finite(record.seen),
                {str(k)[:100]: str(v)[:500] for k, v in list(dict(record.attributes).items())[:50]},
            )
        )
    return result
