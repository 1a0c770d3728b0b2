"""How many failed credentials a client may send: a token bucket per key (an address, a user name).

Each failure takes a token; a key whose bucket is empty is refused (429 with ``Retry-After``) until it
refills. Successes cost nothing. The buckets are bounded in number, the least recently failed
dropped first, so that a flood of addresses cannot grow the table without end.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class FailureThrottle:
    """``burst`` failures at once, then one more each ``every`` seconds, per key."""

    def __init__(
        self,
        burst: int = 10,
        every: float = 6.0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.every = every
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def retry_after(self, key: str) -> int:
        """Whole seconds until ``key`` may try again; 0 when it may now."""
        bucket = self._refilled(key)
        if bucket is None or bucket.tokens >= 1:
            return 0
        return max(1, math.ceil((1 - bucket.tokens) * self.every))

    def failed(self, key: str) -> None:
        """Count one failure of ``key``."""
        bucket = self._refilled(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), self.clock())
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        bucket.tokens = max(0.0, bucket.tokens - 1)
        self._buckets.move_to_end(key)

    def _refilled(self, key: str) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        now = self.clock()
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) / self.every)
        bucket.at = now
        if bucket.tokens >= self.burst:  # full again: forget it
            del self._buckets[key]
            return None
        return bucket
