"""The one backoff: full jitter under an exponential, capped ceiling; Retry-After a floor; stop cuts waits."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.backoff import Backoff, pause

firsts = st.floats(min_value=1e-3, max_value=60.0)
caps = st.floats(min_value=0.0, max_value=86_400.0)
attempts = st.integers(min_value=1, max_value=10_000)


@given(first=firsts, cap=caps, attempt=attempts)
def test_a_delay_lies_between_zero_and_the_capped_ceiling(first: float, cap: float, attempt: int) -> None:
    """Every delay is in [0, min(cap, first * 2**(attempt-1))]."""
    backoff = Backoff(first, cap)
    ceiling = backoff.ceiling(attempt)
    assert ceiling <= cap
    assert ceiling == min(cap, first * 2.0 ** min(attempt - 1, 64))
    assert 0.0 <= backoff.delay(attempt) <= ceiling


@given(first=firsts, cap=caps, attempt=attempts)
def test_the_ceiling_never_decreases(first: float, cap: float, attempt: int) -> None:
    """The bound of retry n+1 is at least that of retry n: a long outage never retries faster."""
    backoff = Backoff(first, cap)
    assert backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1)


@given(first=firsts, cap=caps, attempt=attempts, asked=st.floats(min_value=0.0, max_value=86_400.0))
def test_retry_after_is_a_floor(first: float, cap: float, attempt: int, asked: float) -> None:
    """A peer's Retry-After is never undercut, and adds nothing when the backoff is longer."""
    delay = Backoff(first, cap).delay(attempt, asked)
    assert delay >= asked
    assert delay <= max(asked, Backoff(first, cap).ceiling(attempt))


def test_the_first_retry_is_bounded_by_first_and_delays_spread() -> None:
    """Retry 1 waits at most `first`; the draws spread over the window (full jitter, not a fixed step)."""
    backoff = Backoff(first=2.0, cap=60.0)
    delays = [backoff.delay(1) for _ in range(200)]
    assert all(0.0 <= delay <= 2.0 for delay in delays)
    assert min(delays) < 0.5 < 1.5 < max(delays)


def test_a_backoff_refuses_a_first_delay_of_zero() -> None:
    """first must be positive (a zero would retry in a tight loop forever); cap may not be negative."""
    with pytest.raises(ValueError, match="first > 0"):
        Backoff(first=0.0)
    with pytest.raises(ValueError, match="cap >= 0"):
        Backoff(first=1.0, cap=-1.0)


async def test_pause_ends_when_stop_is_set() -> None:
    """A pause of an hour ends as soon as the stop event is set, and says so."""
    stop = asyncio.Event()
    waiting = asyncio.create_task(pause(stop, 3600.0))
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(waiting, timeout=5) is True


async def test_pause_runs_out_when_nobody_stops() -> None:
    """A short pause with no stop returns False: the caller goes on and retries."""
    assert await pause(asyncio.Event(), 0.01) is False
