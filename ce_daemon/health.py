"""Component health: one status object per component, watched by the daemon.

Components report what they do (``ok``, ``degraded``, ``failed``, ``beat``); the registry
turns *transitions* into log lines and syslog health messages, and judges progress for the
systemd watchdog.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

log = structlog.get_logger("ce_daemon.health")


class State(StrEnum):
    """Where a component stands."""

    STARTING = "starting"
    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"
    STOPPED = "stopped"


Transition = Callable[["ComponentStatus", State, State], None]


@dataclass
class ComponentStatus:
    """What one component reports about itself (shown by ``ce-daemon status``)."""

    name: str
    kind: str
    state: State = State.STARTING
    detail: str = ""
    since: float = field(default_factory=time.time)
    last_beat: float = field(default_factory=time.monotonic)
    restarts: int = 0
    counters: dict[str, Any] = field(default_factory=dict)
    on_transition: Transition | None = None
    refresh: Callable[[], None] | None = None
    """Brings counters that follow the clock up to date (a route's ``lag_s``); called by :meth:`snapshot`."""

    def _move(self, state: State, detail: str) -> None:
        self.last_beat = time.monotonic()
        old = self.state
        self.detail = detail
        if state is not old:
            self.state = state
            self.since = time.time()
            if self.on_transition:
                self.on_transition(self, old, state)

    def ok(self, detail: str = "") -> None:
        """Working normally."""
        self._move(State.OK, detail)

    def degraded(self, reason: str) -> None:
        """Working around a problem (retrying, paused, target down)."""
        self._move(State.DEGRADED, reason)

    def failed(self, reason: str) -> None:
        """Stopped until the configuration changes (bad credentials, forbidden endpoint)."""
        self._move(State.FAILED, reason)

    def stopped(self, detail: str = "") -> None:
        """Shut down on purpose, or finished (a one-off job such as a look-back)."""
        self._move(State.STOPPED, detail)

    def beat(self) -> None:
        """Proof of progress for the watchdog: a unit of work or a bounded wait completed."""
        self.last_beat = time.monotonic()

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter shown in ``status``."""
        self.counters[name] = self.counters.get(name, 0) + amount

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view (no record contents; the daemon scrubs secrets from the whole snapshot)."""
        if self.refresh is not None:
            self.refresh()
        return {
            "name": self.name,
            "kind": self.kind,
            "state": str(self.state),
            "detail": self.detail,
            "since": round(self.since, 3),
            "restarts": self.restarts,
            **({"counters": dict(self.counters)} if self.counters else {}),
        }


class HealthRegistry:
    """Every live component's status, and the transition hook that reports changes."""

    def __init__(self, on_transition: Transition | None = None) -> None:
        self._statuses: dict[str, ComponentStatus] = {}
        self._on_transition = on_transition

    def adopt(self, status: ComponentStatus) -> None:
        """Track a component's status (replacing a previous component of that name)."""
        status.on_transition = self._on_transition
        self._statuses[status.name] = status

    def unregister(self, name: str) -> None:
        """Forget a component that was removed."""
        self._statuses.pop(name, None)

    def all(self) -> list[ComponentStatus]:
        """Every status, by name."""
        return [self._statuses[k] for k in sorted(self._statuses)]

    def summary(self) -> tuple[int, int, list[str]]:
        """(ok, total, names not ok) over live components (finished one-off jobs count as ok)."""
        live = [s for s in self._statuses.values() if s.state is not State.STOPPED]
        bad = sorted(s.name for s in live if s.state is not State.OK)
        return len(live) - len(bad), len(live), bad

    def stalled(self, limit: float) -> list[str]:
        """Components that reported no progress for ``limit`` seconds (the watchdog stops pinging)."""
        now = time.monotonic()
        return sorted(
            s.name
            for s in self._statuses.values()
            if s.state in (State.OK, State.DEGRADED, State.STARTING) and now - s.last_beat > limit
        )
