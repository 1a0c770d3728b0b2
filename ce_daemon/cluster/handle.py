"""What a component holding a unit is given: its fence for commits, and whether it may still drive."""

from __future__ import annotations

import time

from ce_daemon.store.base import Fence

LEASE_HEADER = "X-Ce-Lease"
"""Request header a clustered poller sends (``<node>;<token>``) so the tenant simulator can tell who
drove an iterator index, and flag a stale or concurrent holder."""


class LeaseHandle:
    """This node's hold on one unit, from acquisition until it is released or lost.

    The database expires a lease ``ttl`` after a renewal was executed, by its clock; the node cannot
    read that clock, so it counts from when it *sent* its last successful renewal (which is earlier)
    and stops ``margin`` sooner: :meth:`held` turns False before any other node can take the lease
    over, whatever paused this one (SIGSTOP, a long GC, a database out of reach). A component checks
    it before every request it sends for the unit, and passes :attr:`fence` to every commit.
    """

    def __init__(self, unit: str, fence: Fence, sent_at: float, ttl: float, margin: float) -> None:
        self.unit = unit
        self.fence = fence
        self._window = ttl - margin
        self._deadline = sent_at + self._window
        self._lost = False

    @property
    def token(self) -> int:
        """The lease's fencing token: greater than that of every earlier holder of the unit."""
        return self.fence.token

    def held(self) -> bool:
        """Whether this node may still drive the unit (send its next request)."""
        return not self._lost and time.monotonic() < self._deadline

    def remaining(self) -> float:
        """Seconds this node may still drive the unit without another renewal (0 when not held)."""
        return 0.0 if self._lost else max(0.0, self._deadline - time.monotonic())

    def header(self) -> dict[str, str]:
        """The :data:`LEASE_HEADER` of a request sent under this lease."""
        return {LEASE_HEADER: f"{self.fence.node};{self.fence.token}"}

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` (monotonic) succeeded."""
        if not self._lost:
            self._deadline = max(self._deadline, sent_at + self._window)

    def lose(self) -> None:
        """The lease is gone (taken over, or not renewable in time): never held again."""
        self._lost = True

    @property
    def lost(self) -> bool:
        """Whether :meth:`lose` was called."""
        return self._lost

    def __repr__(self) -> str:
        state = "lost" if self._lost else f"{self.remaining():.1f}s left"
        return f"LeaseHandle({self.unit!r}, token={self.token}, {state})"
