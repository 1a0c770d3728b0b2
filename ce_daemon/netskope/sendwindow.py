"""A tenant's request budget, counted the way the tenant counts it: requests sent in the last second.

Netskope (and the simulator, `ce_daemon.simulator.iterator.SlidingWindow`) refuse a request when the
window of the last second already holds ``rate`` requests. A token bucket that spaces its grants evenly
does not know when each request actually left: when the event loop stalls between a grant and its
send (a 10,000-record page being parsed holds it for 100-200 ms), a late send and the next on-time
ones can bunch together, so the bucket had to run a few percent below the rate. :class:`SendWindow`
stamps each request when its headers are written (an aiohttp trace hook) and grants a new one only
while the stamps of the last second, plus the requests granted but not sent yet, number fewer than
the rate. A stall delays the stamps with the sends, so it can never crowd the tenant's window.

Grants are also paced, one per ``width / limit`` seconds (half a turn may be made up after a late
one): a burst of requests granted together would have the pollers parse their pages together and hold
more pages in memory at once, without fetching any faster.

The tenant stamps arrivals, we stamp departures: a request that takes longer to arrive than the one
sent a second after it looks, to the tenant, closer to it than it was. The window is therefore a
little wider than the tenant's, by a margin that starts at :data:`MARGIN` and doubles with each 429
(up to :data:`MAX_MARGIN`), then halves back after every :data:`CALM_SENDS` requests sent without one:
it settles at the jitter of the path to the tenant.

No library does this: aiolimiter (a leaky bucket) and the sliding-window limiters we know count grants,
not sends, and none counts a granted request that has not left yet.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

MARGIN = 0.01
"""Seconds a stamp stays counted beyond the tenant's window to begin with (1 % of the ceiling)."""
MAX_MARGIN = 0.16
"""The widest margin 429s can push it to."""
TOLERANCE = 0.5
"""How much of a turn a grant may come early, when the turn before it came late (its time is made up)."""
CALM_SENDS = 200
"""Requests sent without a 429 after which the margin halves back towards :data:`MARGIN`."""


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
    """At most ``limit`` requests sent in any window of ``span`` seconds plus the margin, by send time.

    The pure core (:meth:`delay`, :meth:`grant`, :meth:`stamp`, :meth:`give_back`, :meth:`refused`)
    takes the time from its caller, so it can be driven by a simulated clock; :meth:`acquire` waits on
    the event loop, one caller at a time in arrival order.
    """

    def __init__(self, limit: int, span: float = 1.0, margin: float = MARGIN, *, paced: bool = True) -> None:
        if limit < 1 or not span > 0 or margin < 0:
            raise ValueError("a send window allows at least one request in a positive span")
        self.limit = limit
        self.span = span
        self.base_margin = self.margin = margin
        self.paced = paced
        self.pending = 0  # granted, not stamped yet: they may leave at any moment
        self._calm = 0  # sends since the last 429 or the last easing of the margin
        self._due = -math.inf  # when the next grant is due on the pace
        self._stamps: deque[float] = deque()
        self._turn = asyncio.Lock()
        self._changed = asyncio.Event()

    @classmethod
    def for_rate(cls, rate: float) -> SendWindow:
        """The window for ``rate`` requests a second: whole requests per second, one per 1/rate s below 1."""
        if rate >= 1:
            return cls(math.floor(rate), 1.0)
        return cls(1, 1.0 / rate)

    @property
    def width(self) -> float:
        """Seconds a stamp is counted: the tenant's span and the margin."""
        return self.span + self.margin

    def stamps(self, now: float) -> list[float]:
        """The send times still counted at ``now``."""
        self._expire(now)
        return list(self._stamps)

    def delay(self, now: float) -> float:
        """Seconds until a request may be granted (0: now; inf: when a pending one is stamped or let go)."""
        pace = max(self._due - TOLERANCE * self.width / self.limit - now, 0.0)
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
        if self.paced:
            self._due = max(self._due, now) + self.width / self.limit
        return Slot(self)

    def stamp(self, now: float) -> None:
        """A granted request left at ``now``."""
        self.pending -= 1
        # kept in order (loop time never goes back; a caller's stale `now` only counts the stamp longer)
        self._stamps.append(max(now, self._stamps[-1]) if self._stamps else now)
        self._calm += 1
        if self._calm >= CALM_SENDS and self.margin > self.base_margin:
            self._calm = 0
            self.margin = max(self.base_margin, self.margin / 2)
        self._changed.set()

    def give_back(self) -> None:
        """A granted request never left."""
        self.pending -= 1
        self._changed.set()

    def assume_full(self, now: float) -> None:
        """Count the window as full at ``now``, for one width: a node that takes a tenant over cannot
        know what the previous holder sent in its last second, and the tenant counts those requests."""
        at = max(now, self._stamps[-1]) if self._stamps else now
        self._stamps.extend([at] * self.limit)
        self._changed.set()

    def refused(self) -> None:
        """The tenant answered 429 although the window had room: its arrivals vary more than the margin."""
        self._calm = 0
        self.margin = min(MAX_MARGIN, max(self.margin * 2, MARGIN))

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
