"""Who drove each iterator index, read from the lease header clustered pollers send: the simulator's
proof that two nodes never drove one index at once.

A request carrying ``X-Ce-Lease: <node>;<token>`` (`ce_daemon.cluster.handle.LEASE_HEADER`) is recorded
on its (endpoint, index) from its arrival until its answer is handed to the server. The record keeps
the runs (consecutive requests under one node and token: first arrival, last end, count) and flags:

- ``stale``: a token lower than the highest already seen on the index (a holder that lost its lease
  kept driving);
- ``concurrent``: a request arriving while one of another node or token is in flight on the index;
- ``malformed``: a header that is not ``<node>;<token>``.

Requests without the header are not recorded (a daemon that is not clustered sends none). Times are
seconds of the simulator's monotonic clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

VIOLATIONS_KEPT = 1000
"""Violations remembered per index: enough to read what went wrong, bounded however long it runs."""

Key = tuple[str, str]  # (endpoint "alerts/dlp", index)


@dataclass(slots=True)
class LeaseRun:
    """Consecutive requests of one holder (node and token) on an index."""

    node: str
    token: int
    first: float
    last: float
    count: int


@dataclass(frozen=True, slots=True)
class LeaseViolation:
    """A request that broke the rule: by ``node``/``token``, against ``other_*`` (if any) at ``at``."""

    kind: Literal["stale", "concurrent", "malformed"]
    node: str
    token: int
    at: float
    other_node: str | None = None
    other_token: int | None = None


@dataclass(frozen=True, slots=True)
class LeasedRequest:
    """A recorded request, from `LeaseLedger.begin` until `LeaseLedger.end`."""

    key: Key
    node: str
    token: int


@dataclass(slots=True)
class _Index:
    runs: list[LeaseRun] = field(default_factory=list)
    violations: list[LeaseViolation] = field(default_factory=list)
    highest: int = -1
    in_flight: list[LeasedRequest] = field(default_factory=list)

    def flag(self, violation: LeaseViolation) -> None:
        if len(self.violations) < VIOLATIONS_KEPT:
            self.violations.append(violation)


class LeaseLedger:
    """Requests under leases per (endpoint, index), their runs and the violations among them."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._indexes: dict[Key, _Index] = {}

    def begin(self, endpoint: str, index: str, header: str | None) -> LeasedRequest | None:
        """Record a request's arrival; pass what it returns to `end` once it is answered."""
        if header is None or not index:
            return None
        now = self._clock()
        record = self._indexes.setdefault((endpoint, index), _Index())
        node, sep, token_text = header.rpartition(";")
        if not sep or not node or not token_text.strip().isdigit():
            record.flag(LeaseViolation("malformed", header, -1, now))
            return None
        request = LeasedRequest((endpoint, index), node.strip(), int(token_text))
        if request.token < record.highest:
            record.flag(LeaseViolation("stale", request.node, request.token, now, None, record.highest))
        for other in record.in_flight:
            if (other.node, other.token) != (request.node, request.token):
                record.flag(
                    LeaseViolation("concurrent", request.node, request.token, now, other.node, other.token)
                )
        record.highest = max(record.highest, request.token)
        record.in_flight.append(request)
        last = record.runs[-1] if record.runs else None
        if last is not None and (last.node, last.token) == (request.node, request.token):
            last.count += 1
        else:
            record.runs.append(LeaseRun(request.node, request.token, now, now, 1))
        return request

    def end(self, request: LeasedRequest | None) -> None:
        """The request `begin` returned has been answered."""
        if request is None:
            return
        record = self._indexes[request.key]
        record.in_flight.remove(request)
        for run in reversed(record.runs):
            if (run.node, run.token) == (request.node, request.token):
                run.last = self._clock()
                break

    def violations(self) -> list[LeaseViolation]:
        """Every violation on every index."""
        return [violation for record in self._indexes.values() for violation in record.violations]

    def report(self) -> dict[str, dict[str, dict[str, list[dict[str, Any]]]]]:
        """``{endpoint: {index: {"runs": [...], "violations": [...]}}}`` (``GET /_sim/leases``)."""
        report: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
        for (endpoint, index), record in sorted(self._indexes.items()):
            report.setdefault(endpoint, {})[index] = {
                "runs": [asdict(run) for run in record.runs],
                "violations": [asdict(violation) for violation in record.violations],
            }
        return report
