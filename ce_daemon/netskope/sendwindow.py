"""A tenant's request budget, counted the way the tenant counts it: requests sent in the last second.

Netskope (and the simulator, `ce_daemon.netskope.sim_iterator.SlidingWindow`) refuse a request when the
window of the last second already holds ``rate`` requests. A token bucket that spaces its grants evenly
does not know when each request actually left: when the event loop stalls between a grant and its
send (a 10,000-record page being parsed holds it for 100-200 ms), a late send and the next on-time
ones bunch together and the tenant answers 429, so the bucket had to run a few percent below the rate.
:class:`SendWindow` instead stamps each request when its headers are written (an aiohttp trace hook)
and lets a new one go only while the stamps of the last second, plus the requests granted but not sent
yet, number fewer than the rate. A stall delays the stamps with the sends, so it can never crowd the
tenant's window, and the budget is used in full. Grants are also paced evenly over the window (one
turn may be caught up after a pause): pollers sent off together would parse their pages together, and
on a busy machine that contention made them miss the window's next opening.

No library does this: aiolimiter (a leaky bucket) and the sliding-window limiters we know count grants,
not sends, and none counts a granted request that has not left yet.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

MARGIN = 0.01
"""Seconds a stamp stays counted beyond the tenant's one-second window. The tenant stamps arrivals, we
stamp departures: the margin absorbs a request that takes up to 10 ms longer to arrive than the one
sent a second after it (network or server-side jitter). It costs 1 % of the ceiling; a 429 that still
slips through holds the tenant back for its Retry-After and loses nothing."""


class Slot:
    """The right to send one request, from grant until it is stamped or given back."""

    __slots__ = ("settled", "window")

    def __init__(self, window: SendWindow) -> None:
        self.window = window
        self.settled = False

    def sent(self, now: float) -> None:
        """The request left at ``now`` (loop time): count it from then on. Idempotent."""
        if not self.settled:
            self.settled = True
            self.window.stamp(now)

    def unused(self) -> None:
        """The request never left (its connection could not be made): give the slot back. Idempotent."""
        if not self.settled:
            self.settled = True
            self.window.give_back()


class SendWindow:
    """At most ``limit`` requests sent in any window of ``width`` seconds, by the time each was sent.

    The pure core (:meth:`delay`, :meth:`grant`, :meth:`stamp`, :meth:`give_back`) takes the time from
    its caller, so it can be driven by a simulated clock; :meth:`acquire` waits on the event loop, one
    caller at a time in arrival order.
    """

    def __init__(self, limit: int, width: float = 1.0, *, paced: bool = True) -> None:
        if limit < 1 or not width > 0:
            raise ValueError("a send window allows at least one request in a positive width")
        self.limit = limit
        self.width = width
        self.interval = width / limit if paced else 0.0
        self.pending = 0  # granted, not stamped yet: they may leave at any moment
        self._due = -math.inf  # when the next grant is due on an even pace
        self._stamps: deque[float] = deque()
        self._turn = asyncio.Lock()
        self._changed = asyncio.Event()

    @classmethod
    def for_rate(cls, rate: float, margin: float = MARGIN) -> SendWindow:
        """The window for ``rate`` requests a second: whole requests per second, one per 1/rate s below 1."""
        if rate >= 1:
            return cls(math.floor(rate), 1.0 + margin)
        return cls(1, 1.0 / rate + margin)

    def stamps(self, now: float) -> list[float]:
        """The send times still counted at ``now``."""
        self._expire(now)
        return list(self._stamps)

    def delay(self, now: float) -> float:
        """Seconds until a request may be granted (0: now; inf: when a pending one is stamped or let go)."""
        # the pace allows one grant ahead of its turn, so that a turn nobody was ready for is caught up
        pace = max(self._due - self.interval - now, 0.0)
        self._expire(now)
        if len(self._stamps) + self.pending < self.limit:
            return pace
        if self.pending >= self.limit:
            return math.inf
        # the oldest stamps leave first: wait until enough of them have left for one more request (at
        # least a microsecond: rounding can make the difference 0 while the stamp is still counted)
        leaves = self._stamps[len(self._stamps) + self.pending - self.limit] + self.width
        return max(leaves - now, pace, 1e-6)

    def grant(self, now: float) -> Slot:
        """Count a request as granted at ``now`` and about to leave (check :meth:`delay` first)."""
        self.pending += 1
        self._due = max(self._due, now) + self.interval
        return Slot(self)

    def stamp(self, now: float) -> None:
        """A granted request left at ``now``."""
        self.pending -= 1
        # kept in order (loop time never goes back; a caller's stale `now` only counts the stamp longer)
        self._stamps.append(max(now, self._stamps[-1]) if self._stamps else now)
        self._changed.set()

    def give_back(self) -> None:
        """A granted request never left."""
        self.pending -= 1
        self._changed.set()

    async def acquire(self) -> Slot:
        """Wait for a slot: callers are served in arrival order, each as soon as the window allows."""
        loop = asyncio.get_running_loop()
        async with self._turn:
            while (wait := self.delay(loop.time())) > 0:
                self._changed.clear()
                try:
                    async with asyncio.timeout(None if math.isinf(wait) else wait):
                        await self._changed.wait()
                except TimeoutError:
                    pass
            return self.grant(loop.time())

    def _expire(self, now: float) -> None:
        edge = now - self.width
        stamps = self._stamps
        while stamps and stamps[0] <= edge:
            stamps.popleft()
