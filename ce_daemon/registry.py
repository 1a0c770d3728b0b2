"""Plugin discovery through entry points: one group per kind, the entry-point name is the YAML ``type:``.

First-party plugins are registered exactly like third-party ones. A plugin that fails to
import is recorded with its distribution and the error; it only matters if the pipeline uses it.

Each plugin class declares the plugin API version it was written for (``api_version``):

- from :data:`~ce_daemon.plugin.OLDEST_API_VERSION` to :data:`~ce_daemon.plugin.API_VERSION`: loaded
  (an older one with a note saying so);
- newer than ``API_VERSION``: refused, the core is too old for it;
- older than ``OLDEST_API_VERSION``: refused, the plugin is too old for this core;
- none: taken as version 1, the contract every plugin written before versions existed follows, and
  loaded with a note asking its author to declare it. Refusing those would break working installs
  on upgrade for no safety gained; once version 1 is no longer supported they are refused like any
  other plugin that old.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from ce_daemon.plugin import (
    API_VERSION,
    OLDEST_API_VERSION,
    LogSink,
    Plugin,
    PluginOptions,
    RiskAction,
    RiskSource,
    ThreatSink,
    ThreatSource,
    TicketSink,
)

GROUPS: dict[str, str] = {
    "log_sink": "ce_daemon.log_sinks",
    "threat_source": "ce_daemon.threat_sources",
    "threat_sink": "ce_daemon.threat_sinks",
    "ticket_sink": "ce_daemon.ticket_sinks",
    "risk_source": "ce_daemon.risk_sources",
    "risk_action": "ce_daemon.risk_actions",
}
BASES: dict[str, type[Plugin]] = {
    "log_sink": LogSink,
    "threat_source": ThreatSource,
    "threat_sink": ThreatSink,
    "ticket_sink": TicketSink,
    "risk_source": RiskSource,
    "risk_action": RiskAction,
}


@dataclass(frozen=True)
class PluginInfo:
    """One discovered plugin: where it comes from and whether it loaded."""

    kind: str
    name: str
    target: str
    distribution: str
    version: str
    cls: type[Plugin] | None
    error: str | None
    api_version: int | None = None
    """The plugin API version the class declares (None: it declares none)."""
    note: str | None = None
    """Something the operator should know about a plugin that loaded (an older or missing api_version)."""

    @property
    def loaded(self) -> bool:
        """True when the class imported and honours the kind's contract."""
        return self.cls is not None


class Registry:
    """Every plugin installed, by kind and name."""

    def __init__(self, plugins: list[PluginInfo]) -> None:
        self._plugins = {(p.kind, p.name): p for p in plugins}

    @classmethod
    def discover(cls) -> Registry:
        """Load every entry point of every kind (``CE_DAEMON_PLUGINS=a,b`` limits which)."""
        only = {n.strip() for n in os.environ.get("CE_DAEMON_PLUGINS", "").split(",") if n.strip()}
        found: list[PluginInfo] = []
        for kind, group in GROUPS.items():
            for ep in entry_points(group=group):
                if only and ep.name not in only:
                    continue
                found.append(_load(kind, ep))
        return cls(found)

    def all(self) -> list[PluginInfo]:
        """Every plugin, sorted by kind then name."""
        return sorted(self._plugins.values(), key=lambda p: (p.kind, p.name))

    def get(self, kind: str, name: str) -> PluginInfo | None:
        """The plugin of ``kind`` registered as ``name``."""
        return self._plugins.get((kind, name))

    def names(self, kind: str) -> list[str]:
        """The names of every plugin of ``kind`` that loaded."""
        return sorted(p.name for p in self._plugins.values() if p.kind == kind and p.loaded)

    def unknown_hint(self, kind: str, name: str) -> str:
        """A hint for an unknown ``type:``: the nearest name and the installed ones."""
        names = self.names(kind)
        close = difflib.get_close_matches(name, names, n=1)
        listed = ", ".join(names) or "none"
        return (
            f"did you mean {close[0]!r}? " if close else ""
        ) + f"installed {kind.replace('_', ' ')}s: {listed}"


def _load(kind: str, ep: EntryPoint) -> PluginInfo:
    dist = ep.dist.name if ep.dist else "?"
    version = ep.dist.version if ep.dist else "?"
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 - any import failure of third-party code is reported, not raised
        return PluginInfo(kind, ep.name, ep.value, dist, version, None, f"{type(exc).__name__}: {exc}")
    base = BASES.get(kind, Plugin)
    if not (isinstance(obj, type) and issubclass(obj, base)):
        return PluginInfo(
            kind, ep.name, ep.value, dist, version, None, f"{ep.value} is not a {base.__name__} subclass"
        )
    options = getattr(obj, "Options", None)
    if not (isinstance(options, type) and issubclass(options, PluginOptions)):
        return PluginInfo(
            kind, ep.name, ep.value, dist, version, None, f"{ep.value}.Options is not a PluginOptions model"
        )
    declared = getattr(obj, "api_version", None)
    error, note = api_compatibility(declared, dist)
    if error is not None:
        return PluginInfo(kind, ep.name, ep.value, dist, version, None, error, declared)
    return PluginInfo(kind, ep.name, ep.value, dist, version, obj, None, declared, note)


def api_compatibility(
    declared: object, distribution: str, *, current: int = API_VERSION, oldest: int = OLDEST_API_VERSION
) -> tuple[str | None, str | None]:
    """``(error, note)`` for a plugin class whose ``api_version`` is ``declared`` (None: not declared)."""
    if declared is not None and (not isinstance(declared, int) or isinstance(declared, bool)):
        return f"api_version must be an int (the plugin API version), not {declared!r}", None
    version = 1 if declared is None else declared
    if version > current:
        newer = f"written for plugin API {version}, newer than this ce-daemon's (API {current})"
        return f"{newer}: upgrade ce-daemon", None
    if version < oldest:
        undeclared = " (it declares no api_version)" if declared is None else ""
        error = (
            f"written for plugin API {version}{undeclared}; this ce-daemon loads API {oldest} to {current}: "
            f"install a release of {distribution} written for it"
        )
        return error, None
    if declared is None:
        note = "declares no api_version, taken as plugin API 1: its author should add `api_version = 1`"
    elif version < current:
        note = f"written for plugin API {version}; this ce-daemon provides API {current} and still runs it"
    else:
        note = None
    return None, note
