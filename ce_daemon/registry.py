"""Plugin discovery through entry points: one group per kind, the entry-point name is the YAML ``type:``.

First-party plugins are registered exactly like third-party ones. A plugin that fails to
import is recorded with its distribution and the error; it only matters if the pipeline uses it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from ce_daemon.plugin import LogSink, Plugin, PluginOptions

GROUPS: dict[str, str] = {
    "log_sink": "ce_daemon.log_sinks",
    "threat_source": "ce_daemon.threat_sources",
    "threat_sink": "ce_daemon.threat_sinks",
    "ticket_sink": "ce_daemon.ticket_sinks",
    "risk_source": "ce_daemon.risk_sources",
    "risk_action": "ce_daemon.risk_actions",
}
BASES: dict[str, type[Plugin]] = {"log_sink": LogSink}


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
    return PluginInfo(kind, ep.name, ep.value, dist, version, obj, None)
