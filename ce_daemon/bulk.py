"""Bulk work in one process: the cyclic garbage collector paused while a pass makes millions of objects.

CPython's collector runs whenever allocations outnumber frees by a threshold, and each run walks the
young objects and, every so often, every tracked object: a pass that builds a million rows of tuples
and dataclasses triggers it thousands of times over an ever larger heap. Reference counting still
frees everything as usual while it is paused; only reference cycles wait for the next run. Measured:
a capped URL-list push built from 600,000 active IOCs, 10.5 s with the collector, 4.4 s without.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic collector for the block (nested blocks leave it to the outermost one)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
