"""The names the core gives streams and components, as types: parsed and rendered here only.

A stream's key is the spool's name for it (``tenant/kind/subtype``); a component's is the name
``status``, the metrics and the logs show (``poller:tenant/alerts/dlp``, ``route:to-siem``).
Operators and dashboards rely on both spellings, so :meth:`__str__` is the one way to write them and
:meth:`parse` the one way to read them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from ce_daemon.netskope.subtypes import DataKind, check_kind


@dataclass(frozen=True, order=True)
class StreamKey:
    """One Netskope data stream: a (tenant, alerts|events, subtype) pulled once for all its consumers."""

    tenant: str
    kind: DataKind
    subtype: str

    def __str__(self) -> str:
        return f"{self.tenant}/{self.kind}/{self.subtype}"

    @property
    def key(self) -> str:
        """The spool's name for it: ``tenant/kind/subtype``."""
        return str(self)

    @classmethod
    def parse(cls, text: str) -> Self:
        """The stream ``tenant/kind/subtype`` names; ValueError when it names none."""
        tenant, _, rest = text.partition("/")
        kind, _, subtype = rest.partition("/")
        if not tenant or not subtype:
            raise ValueError(f"not a stream key (tenant/alerts|events/subtype): {text!r}")
        return cls(tenant, check_kind(kind), subtype)


@dataclass(frozen=True, order=True)
class ComponentKey:
    """A component's identity: its ``role`` (``poller``, ``history``, ``route``…) and its name there."""

    role: str
    name: str

    def __str__(self) -> str:
        return f"{self.role}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> Self:
        """The key ``role:name`` spells; ValueError when it has no role."""
        role, colon, name = text.partition(":")
        if not colon or not role or not name:
            raise ValueError(f"not a component key (role:name): {text!r}")
        return cls(role, name)

    @classmethod
    def poller(cls, stream: StreamKey) -> Self:
        """The live poller of ``stream``."""
        return cls("poller", str(stream))

    @classmethod
    def history(cls, stream: StreamKey) -> Self:
        """The look-back poller of ``stream``."""
        return cls("history", str(stream))
