"""What the tenant simulator tells a test: the pages it served, the requests it answered, its counters.

These are the values of the Python test API (`TenantSimulator.served`, ``wait_for_request``,
``stats``) and, as JSON, of its ``/_sim/`` twin (`ce_daemon.simulator.control`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ce_daemon.netskope.subtypes import DataKind


@dataclass(frozen=True, slots=True)
class ServedPage:
    """One page a (endpoint, index) was served, by sequence numbers (see `records.record_id`)."""

    index: str
    operation: str
    first_seq: int
    end_seq: int
    timestamp_hwm: int
    fault: str | None = None  # the page fault it was delivered with, if any

    @property
    def seqs(self) -> range:
        """The sequence numbers of the page's records."""
        return range(self.first_seq, self.end_seq)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A data-export request the simulator has decided how to answer (cursor already moved)."""

    kind: DataKind
    subtype: str
    index: str  # "" when the request had none
    operation: str
    status: int
    fault: str | None = None


@dataclass(frozen=True, slots=True)
class SimulatorStats:
    """What the simulator has seen and sent; ``to_dict`` is the ``GET /_sim/stats`` body."""

    requests_total: int
    requests: dict[str, int]  # per endpoint ("alerts/dlp"), every request received
    responses: dict[int, int]  # per status code
    rate_limited: int  # 429s sent, from the limiter or injected
    max_requests_per_second: int  # most requests received in any 1 s sliding window
    max_accepted_per_second: int  # most requests the rate limiter accepted in any 1 s window
    records_served: dict[str, dict[str, int]]  # endpoint -> index -> records in pages built
    in_flight: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (status codes become string keys)."""
        data = asdict(self)
        data["responses"] = {str(code): count for code, count in self.responses.items()}
        return data
