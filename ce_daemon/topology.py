"""The difference between two generations' components: what a reload adds, changes, removes, keeps.

Computed once from the two plans, by name and fingerprint (Vector's topology ``Difference``): a
component whose name and fingerprint are both unchanged keeps running untouched; one whose
fingerprint changed is rebuilt; the rest is added or removed. :meth:`Difference.reverse` is the way
back, for a rollback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class Fingerprinted(Protocol):
    """Anything planned by name with a digest of its settings."""

    @property
    def fingerprint(self) -> str:
        """Changes whenever the settings that built it change."""


@dataclass(frozen=True)
class Difference:
    """Component names, each set sorted: ``added`` (only new), ``changed`` (both, fingerprint differs),
    ``removed`` (only old), ``kept`` (both, same fingerprint)."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    kept: tuple[str, ...]

    @classmethod
    def between(cls, old: Mapping[str, Fingerprinted], new: Mapping[str, Fingerprinted]) -> Difference:
        """What turns the plan ``old`` into ``new``."""
        both = old.keys() & new.keys()
        return cls(
            added=tuple(sorted(new.keys() - old.keys())),
            changed=tuple(sorted(n for n in both if old[n].fingerprint != new[n].fingerprint)),
            removed=tuple(sorted(old.keys() - new.keys())),
            kept=tuple(sorted(n for n in both if old[n].fingerprint == new[n].fingerprint)),
        )

    def reverse(self) -> Difference:
        """What turns the new plan back into the old one (a rollback)."""
        return Difference(added=self.removed, changed=self.changed, removed=self.added, kept=self.kept)

    @property
    def to_start(self) -> tuple[str, ...]:
        """The components of the new plan to build and start: added and changed."""
        return tuple(sorted(self.added + self.changed))

    @property
    def to_stop(self) -> tuple[str, ...]:
        """The running components to stop: removed and changed."""
        return tuple(sorted(self.removed + self.changed))

    @property
    def unchanged(self) -> bool:
        """True when nothing is added, changed or removed."""
        return not (self.added or self.changed or self.removed)
