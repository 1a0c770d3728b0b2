"""Types of syslog framing in C (``_framing.c``), built at install time when a C compiler is there."""

from collections.abc import Callable, Sequence

ABI: int

def frame_all(
    messages: Sequence[bytes],
    timestamps: Sequence[int],
    header_of: Callable[[int], bytes],
    lf: bool,
    second: int | None,
    head: bytes,
    limit: int | None,
    now: int | None,
    latest: int,
    /,
) -> tuple[bytes, int | None, bytes] | None:
    """The frames of ``messages`` as one bytes, with the timestamp and header kept for the next batch
    (a timestamp outside 1..``latest`` framed as ``now`` unless it is None); None when a message is not a
    bytes object or is longer than ``limit`` (None: no limit)."""
