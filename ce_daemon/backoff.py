"""One backoff for every retry in the daemon: exponential, full jitter, capped, and a wait a stop cuts short.

Retry ``n`` (1-based) waits a delay drawn uniformly from ``[0, min(cap, first * 2**(n-1))]``: "full
jitter" (Marc Brooker, *Exponential Backoff And Jitter*, AWS Architecture Blog, 2015), so that
components that failed together, say every route of a sink that went down, spread their retries
over the whole window instead of knocking again in step. A peer that said when to come back
(``Retry-After``, ``ratelimit-reset``: `TransientError.retry_after`) is never asked sooner: its delay
is a floor. The wait itself (:func:`pause`) ends early when the component is asked to stop, so a
backoff never holds up a shutdown or a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass

_MAX_DOUBLINGS = 64  # 2**64 times any first delay is past every cap: no float overflow for a long outage


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays of successive retries: ``first`` doubled per attempt up to ``cap``, fully jittered."""

    first: float = 0.5
    cap: float = 60.0

    def __post_init__(self) -> None:
        if self.first <= 0 or self.cap < 0:
            raise ValueError(
                f"a backoff needs first > 0 and cap >= 0, not first={self.first}, cap={self.cap}"
            )

    def ceiling(self, attempt: int) -> float:
        """The longest delay before retry number ``attempt`` (1-based); never decreases, never exceeds cap."""
        return min(self.cap, self.first * 2.0 ** min(max(attempt, 1) - 1, _MAX_DOUBLINGS))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """A delay before retry ``attempt``: uniform up to ``ceiling(attempt)``, not below ``retry_after``."""
        return max(retry_after or 0.0, random.uniform(0.0, self.ceiling(attempt)))


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True when it was (the caller should stop)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()
