"""Taps: samples of what a component emits, streamed to ``ce-daemon tap`` without slowing the component.

A component that can be tapped (a log route: each record as it leaves its filter and formatter)
registers its name with the runtime's :class:`TapHub` while it runs, and hands every sample to the
taps open on it. A tap keeps at most :data:`TAP_BUFFER` samples and :data:`TAP_BUFFER_BYTES` bytes:
when its reader is slower than the component, new samples are dropped and counted, and the component
never waits. At most
:data:`MAX_TAPS` taps are open at once, daemon-wide.

The hub names no job: a tap asks for a component by its key (``route:to-siem``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_TAPS", "TAP_BUFFER", "Sample", "Tap", "TapHub", "TapRefusedError"]

MAX_TAPS: Final = 4
"""Taps open at once, daemon-wide: each costs a copy of every sample it takes."""
TAP_BUFFER: Final = 1000
"""Samples one tap holds for its reader; more are dropped (and counted) until it catches up."""
TAP_BUFFER_BYTES: Final = 16 * 1024 * 1024
"""Bytes of samples one tap holds (a few huge records must not hold much memory either)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One emitted item: where it comes from, its id, and its bytes exactly as the component made them."""

    stream: str
    id: str
    data: bytes


class TapRefusedError(Exception):
    """A tap cannot be opened: no such tappable component, or too many taps open."""


class Tap:
    """One reader's bounded queue of samples of one component."""

    def __init__(
        self, component: str, buffer: int = TAP_BUFFER, buffer_bytes: int = TAP_BUFFER_BYTES
    ) -> None:
        self.component = component
        self._buffer = buffer
        self._buffer_bytes = buffer_bytes
        self._held_bytes = 0
        self._samples: deque[Sample] = deque()
        self._dropped = 0
        self._ready = asyncio.Event()
        self.closed = False

    def offer(self, sample: Sample) -> None:
        """Keep ``sample`` if there is room, else count it as dropped (never waits); closed: ignore it."""
        if self.closed:
            return
        if len(self._samples) >= self._buffer or self._held_bytes + len(sample.data) > self._buffer_bytes:
            self._dropped += 1
            return
        self._samples.append(sample)
        self._held_bytes += len(sample.data)
        self._ready.set()

    def take_dropped(self) -> int:
        """How many samples were dropped since the last call."""
        dropped, self._dropped = self._dropped, 0
        return dropped

    async def next(self) -> Sample | None:
        """The oldest sample held (waits for one); None once the tap is closed."""
        while not self._samples:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        sample = self._samples.popleft()
        self._held_bytes -= len(sample.data)
        return sample

    def close(self) -> None:
        """End the tap: what it holds is let go, and :meth:`next` answers None."""
        self.closed = True
        self._samples.clear()
        self._held_bytes = 0
        self._ready.set()


class TapHub:
    """The components that can be tapped and the taps open on each."""

    def __init__(self, max_taps: int = MAX_TAPS, buffer: int = TAP_BUFFER) -> None:
        self._max_taps = max_taps
        self._buffer = buffer
        self._sources: dict[str, int] = {}
        self._taps: dict[str, tuple[Tap, ...]] = {}

    def register(self, component: str) -> None:
        """``component`` can be tapped while it runs (an old and a new generation may overlap)."""
        self._sources[component] = self._sources.get(component, 0) + 1

    def unregister(self, component: str) -> None:
        """One registration of ``component`` ended."""
        left = self._sources.get(component, 0) - 1
        if left > 0:
            self._sources[component] = left
        else:
            self._sources.pop(component, None)

    def sources(self) -> list[str]:
        """The components that can be tapped now, by name."""
        return sorted(self._sources)

    def taps_of(self, component: str) -> tuple[Tap, ...]:
        """The taps open on ``component`` (empty almost always: one dictionary lookup)."""
        return self._taps.get(component, ())

    def open(self, component: str) -> Tap:
        """A new tap on ``component``; :class:`TapRefusedError` saying why when it cannot be opened."""
        if component not in self._sources:
            known = ", ".join(self.sources()) or "none"
            raise TapRefusedError(f"no component {component!r} can be tapped now (running: {known})")
        if sum(len(taps) for taps in self._taps.values()) >= self._max_taps:
            raise TapRefusedError(f"{self._max_taps} taps are open already: close one first")
        tap = Tap(component, self._buffer)
        self._taps[component] = (*self._taps.get(component, ()), tap)
        return tap

    def close(self, tap: Tap) -> None:
        """Close ``tap`` and stop feeding it."""
        tap.close()
        left = tuple(t for t in self._taps.get(tap.component, ()) if t is not tap)
        if left:
            self._taps[tap.component] = left
        else:
            self._taps.pop(tap.component, None)

    def close_all(self) -> None:
        """Close every open tap (the daemon stops)."""
        for tap in [t for taps in self._taps.values() for t in taps]:
            self.close(tap)

    @staticmethod
    def publish(taps: Iterable[Tap], sample: Sample) -> None:
        """Offer ``sample`` to each of ``taps``."""
        for tap in taps:
            tap.offer(sample)
