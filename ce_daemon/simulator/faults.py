"""Scripted faults of the tenant simulator, and the broken answers they produce.

Faults are queued per endpoint (FIFO); each is consumed by the next ``count`` valid requests to
that endpoint (requests refused for auth or by the rate limit do not consume faults). Faults that
answer without a page (``status``, ``rate_limit``, ``not_ok``) leave the cursor where it was; the
others break a page that was already built, so the cursor has moved, exactly like a real body lost
in transit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, fields
from http import HTTPStatus
from typing import Any, Literal, get_args

import orjson

FaultType = Literal["status", "rate_limit", "slow", "truncate", "malformed_json", "not_ok", "bad_records"]
FAULT_TYPES: tuple[str, ...] = get_args(FaultType)


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted fault; only the parameters of its ``type`` matter.

    - ``status``: answer ``status`` (any 4xx/5xx) with a plausible body.
    - ``rate_limit``: a 429 with ``Retry-After: retry_after``.
    - ``slow``: build the page (cursor moves), then wait ``delay`` seconds before answering.
    - ``truncate``: send 200, headers and the first ``keep_fraction`` of the body, then drop the
      connection.
    - ``malformed_json``: a 200 whose body is not valid JSON.
    - ``not_ok``: a 200 with ``ok: 0`` and ``message``.
    - ``bad_records``: one record in ``every`` loses ``_id`` or ``timestamp`` or gets a wrong type.
    """

    type: FaultType
    count: int = 1
    status: int = 500
    retry_after: int = 1
    delay: float = 1.0
    keep_fraction: float = 0.5
    message: str = "Internal error while fetching data, please retry"
    every: int = 5

    def __post_init__(self) -> None:
        if self.type not in FAULT_TYPES:
            raise ValueError(f"unknown fault type {self.type!r}; expected one of {', '.join(FAULT_TYPES)}")
        if self.count < 1:
            raise ValueError("fault count must be at least 1")
        if not 400 <= self.status <= 599:
            raise ValueError(f"fault status must be a 4xx or 5xx code, got {self.status}")
        if self.retry_after < 0 or self.delay < 0 or self.every < 1:
            raise ValueError("retry_after and delay must be >= 0 and every >= 1")
        if not 0.0 <= self.keep_fraction < 1.0:
            raise ValueError("keep_fraction must be in [0, 1)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """A fault from its JSON form; raises `ValueError` on unknown keys or bad values."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown fault parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON form accepted by `from_dict`."""
        return asdict(self)


@dataclass(slots=True)
class _Pending:
    fault: Fault
    requests_left: int


class FaultQueue:
    """The FIFO of faults scripted for one endpoint."""

    def __init__(self) -> None:
        self._pending: deque[_Pending] = deque()

    def push(self, fault: Fault) -> None:
        """Queue ``fault`` behind those already waiting."""
        self._pending.append(_Pending(fault, fault.count))

    def take(self) -> Fault | None:
        """The fault the current request suffers, if any, consuming one of its requests."""
        if not self._pending:
            return None
        head = self._pending[0]
        head.requests_left -= 1
        if head.requests_left == 0:
            self._pending.popleft()
        return head.fault

    def pending(self) -> list[dict[str, Any]]:
        """The faults still waiting, with the number of requests each will still affect."""
        return [{**entry.fault.to_dict(), "remaining": entry.requests_left} for entry in self._pending]

    def __len__(self) -> int:
        return len(self._pending)


def error_body(error_code: str, message: str) -> bytes:
    """The JSON error body the data-export API answers with."""
    return orjson.dumps({"status": "error", "errorCode": error_code, "errors": [message]})


_GATEWAY_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
)


def status_fault_body(status: int) -> tuple[bytes, str]:
    """A plausible body and content type for an injected error status.

    Gateway errors come from the load balancer as HTML, as they do in front of real tenants;
    the rest come from the API itself as JSON.
    """
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    if status in (502, 503, 504):
        return _GATEWAY_PAGE.format(status=status, reason=reason).encode(), "text/html"
    return error_body(reason, f"{status} {reason}: injected by the simulator"), "application/json"


def not_ok_body(message: str) -> bytes:
    """A 200 body that reports failure (``ok: 0``)."""
    return orjson.dumps({"ok": 0, "status": "error", "message": message, "errors": [message]})


def malform(body: bytes) -> bytes:
    """``body`` cut short and followed by bytes no JSON parser accepts."""
    return body[: max(1, len(body) // 2)] + b"\x00<!-- upstream reset -->"


def corrupt_records(records: list[dict[str, Any]], every: int) -> None:
    """Break one record in ``every``, cycling through the ways real pages go wrong."""
    for position in range(0, len(records), every):
        record = records[position]
        mode = position // every % 4
        if mode == 0:
            record.pop("_id", None)
        elif mode == 1:
            record.pop("timestamp", None)
        elif mode == 2:
            record["timestamp"] = "2024-02-30T25:61:00Z"
        else:
            record["_id"] = 0
