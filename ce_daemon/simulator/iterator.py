"""The tenant simulator's iterator model: record timelines, server-side cursors, sliding windows.

Nothing here does I/O; `ce_daemon.simulator.tenant` drives it from its request handlers. A stream
is a pure function from sequence number to timestamp, so pages are computed from a cursor position
and never stored.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

OPERATIONS = ("next", "head", "tail", "resend")
"""The named operations; any other valid operation is an epoch in seconds."""


@dataclass(frozen=True, slots=True)
class Timeline:
    """When each record of one stream comes into existence.

    Records ``0 .. backlog-1`` already exist at ``start``, their timestamps spread evenly over the
    ``span`` seconds before it; record ``backlog + k`` arrives at ``start + (k + 1) / rate``.
    Timestamps are whole epoch seconds and never decrease with ``seq``.
    """

    start: float
    backlog: int = 0
    span: int = 3600
    rate: float = 0.0

    def timestamp(self, seq: int) -> int:
        """The timestamp of record ``seq``."""
        if seq < self.backlog:
            return int(self.start) - self.span + seq * self.span // self.backlog
        return int(self.start + (seq - self.backlog + 1) / self.rate)

    def timestamps(self, seqs: range) -> list[int]:
        """The timestamps of ``seqs`` (a step-1 range), computed in one pass."""
        backlog, span, base = self.backlog, self.span, int(self.start) - self.span
        cut = max(seqs.start, min(seqs.stop, backlog))
        stamps = [base + seq * span // backlog for seq in range(seqs.start, cut)]
        if cut < seqs.stop:
            start, rate = self.start, self.rate
            stamps += [int(start + (seq - backlog + 1) / rate) for seq in range(cut, seqs.stop)]
        return stamps

    def available(self, now: float) -> int:
        """How many records exist at ``now``: the sequence number the next arrival will get."""
        if self.rate <= 0 or now <= self.start:
            return self.backlog
        return self.backlog + math.floor((now - self.start) * self.rate)

    def first_at_or_after(self, epoch: int) -> int:
        """The first ``seq`` whose timestamp is ≥ ``epoch`` (it may not exist yet)."""
        if self.rate > 0:
            upper = self.backlog + max(0, math.ceil((epoch - self.start) * self.rate)) + 1
        else:
            upper = self.backlog
        low, high = 0, upper
        while low < high:  # lower bound over the monotonic timestamps
            middle = (low + high) // 2
            if self.timestamp(middle) >= epoch:
                high = middle
            else:
                low = middle + 1
        return low


@dataclass(frozen=True, slots=True)
class Page:
    """One page as delivered: records ``first .. end-1`` of a stream."""

    first: int
    end: int
    timestamp_hwm: int
    wait_time: float

    @property
    def seqs(self) -> range:
        """The sequence numbers of the page's records."""
        return range(self.first, self.end)

    def __len__(self) -> int:
        return self.end - self.first


@dataclass(slots=True)
class IndexCursor:
    """The server-side state of one (endpoint, index) pair."""

    position: int | None = None  # next seq to deliver; None until the index is first used
    last_page: Page | None = None


@dataclass(frozen=True, slots=True)
class Paging:
    """How pages are cut: size cap and the ``wait_time`` of a page that is not full."""

    page_size: int = 10_000
    idle_wait_time: float = 1.0


def advance(cursor: IndexCursor, timeline: Timeline, paging: Paging, operation: str, now: float) -> Page:
    """Build the page ``operation`` asks for and move ``cursor`` past it, as the real server does.

    ``operation`` is one of `OPERATIONS` or an epoch (decimal string). Every operation but
    ``resend`` moves the cursor; ``resend`` repeats the last page (an empty one if there was none).
    """
    if operation == "resend":
        if cursor.last_page is not None:
            return cursor.last_page
        return Page(0, 0, int(now), paging.idle_wait_time)
    if operation == "head":
        first = 0
    elif operation == "next" and cursor.position is not None:
        first = cursor.position
    elif operation in ("next", "tail"):  # a brand-new index's `next` starts from now, like `tail`
        first = timeline.first_at_or_after(int(now))
    else:
        first = timeline.first_at_or_after(int(operation))
    available = timeline.available(now)
    end = max(first, min(first + paging.page_size, available))
    hwm = timeline.timestamp(end - 1) if end > first else int(now)
    full_and_more = end - first == paging.page_size and available > end
    page = Page(first, end, hwm, 0 if full_and_more else paging.idle_wait_time)
    cursor.position = end
    cursor.last_page = page
    return page


@dataclass(slots=True)
class SlidingWindow:
    """Accepts at most ``limit`` events in any half-open window ``(now - width, now]``."""

    limit: int
    width: float = 1.0
    _times: deque[float] = field(default_factory=deque)

    def _expire(self, now: float) -> None:
        edge = now - self.width
        times = self._times
        while times and times[0] <= edge:
            times.popleft()

    def try_acquire(self, now: float) -> bool:
        """Count an event at ``now`` if the window has room; rejected events are not counted."""
        self._expire(now)
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    def remaining(self, now: float) -> int:
        """How many more events the window accepts at ``now``."""
        self._expire(now)
        return max(0, self.limit - len(self._times))

    def reset_after(self, now: float) -> float:
        """Seconds until the oldest counted event leaves the window (0 when it is empty)."""
        self._expire(now)
        return self._times[0] + self.width - now if self._times else 0.0


@dataclass(slots=True)
class PeakRate:
    """The highest number of events seen in any window of ``width`` seconds."""

    width: float = 1.0
    peak: int = 0
    _times: deque[float] = field(default_factory=deque)

    def add(self, now: float) -> None:
        """Record one event at ``now``."""
        edge = now - self.width
        times = self._times
        while times and times[0] <= edge:
            times.popleft()
        times.append(now)
        self.peak = max(self.peak, len(times))
