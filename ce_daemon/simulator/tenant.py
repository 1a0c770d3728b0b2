"""A faithful Netskope tenant for tests, the demo and the benchmarks: the REST API v2 data export,
the policy lists threat sharing pushes to (`ce_daemon.simulator.policy`), and the users' UCI and SCIM
groups risk actions change (`ce_daemon.simulator.uba`, `ce_daemon.simulator.scim`).

`TenantSimulator` serves ``GET /api/v2/events/dataexport/{alerts|events}/{subtype}`` with
server-side cursors per (endpoint, index), deterministic records (`ce_daemon.simulator.records`,
rendered by `ce_daemon.simulator.render`), the per-token rate limit with real 429s and
``ratelimit-*`` headers, and scripted faults (`ce_daemon.simulator.faults`). A cursor moves when
the page is built, before its body is written, so a client that loses the answer has lost the page
unless it asks ``resend``: the crash window the daemon must survive.

Test control: the Python API (`TenantSimulator.inject`, ``stats``, ``served``, ``wait_for_request``)
and its HTTP twin under ``/_sim/`` (`ce_daemon.simulator.control`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from ce_daemon.cluster.handle import LEASE_HEADER
from ce_daemon.netskope.subtypes import DataKind, all_streams, check_kind, normalise_subtype, parse_stream
from ce_daemon.simulator.control import control_routes
from ce_daemon.simulator.faults import Fault, FaultQueue, error_body, not_ok_body, status_fault_body
from ce_daemon.simulator.incidents import Incidents, incident_routes
from ce_daemon.simulator.iterator import (
    OPERATIONS,
    IndexCursor,
    Page,
    Paging,
    PeakRate,
    SlidingWindow,
    Timeline,
    advance,
)
from ce_daemon.simulator.leases import LeaseLedger
from ce_daemon.simulator.policy import POLICY_ENDPOINTS, check_policy_fault, policy_routes
from ce_daemon.simulator.policy_lists import PolicyLists
from ce_daemon.simulator.records import RecordFactory
from ce_daemon.simulator.render import render_page
from ce_daemon.simulator.reports import RequestInfo, ServedPage, SimulatorStats
from ce_daemon.simulator.scim import SCIM_ENDPOINTS, ScimDirectory, scim_routes
from ce_daemon.simulator.uba import UCI_ENDPOINTS, UciBook, check_endpoint_fault, uci_routes

log = structlog.get_logger(__name__)

DEFAULT_TOKEN = "simulator-token"  # noqa: S105  # a fake tenant's published demo token, not a secret
"""The token a simulator accepts (for every endpoint) when no ``tokens`` are given."""
TOKEN_HEADER = "Netskope-Api-Token"  # noqa: S105  # a header name, not a secret

StreamKey = tuple[DataKind, str]
_STREAMS_BY_PATH: dict[tuple[str, str], StreamKey] = {stream: stream for stream in all_streams()}
_MAX_BODY = 64 * 1024 * 1024  # list pushes past the 7 and 8 MB caps get the vendor's refusal, not a 413
_THREAD_RENDER_MIN = 500  # pages this large are rendered off the event loop, keeping it responsive


@dataclass(slots=True)
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    content_type: str = "application/json"
    page: Page | None = None
    fault: Fault | None = None


def _endpoint(stream: StreamKey) -> str:
    return f"{stream[0]}/{stream[1]}"


def _stream_of(kind: str, subtype: str) -> StreamKey:
    checked = check_kind(kind)
    return checked, normalise_subtype(checked, subtype)


class TenantSimulator:
    """An aiohttp server that behaves like one Netskope tenant's data-export API.

    Streams listed in ``subtypes`` (``"alerts/dlp"`` or ``("alerts", "dlp")``; all when None) have
    ``backlog`` records spread over the ``backlog_span`` seconds before ``start_time`` (default:
    now) and then ``arrival_rate`` new records per second; the others answer empty pages.
    ``tokens`` maps each accepted token to the streams it may read (None: all). ``clock`` gives
    wall time for record timestamps, ``monotonic`` the time of the rate limiter; tests may pass
    their own. ``served_limit`` caps the pages `served` remembers per endpoint (None: all).
    """

    token_header = TOKEN_HEADER

    def __init__(
        self,
        *,
        tokens: Mapping[str, Collection[StreamKey] | None] | None = None,
        seed: int = 0,
        tenant: str = "demo",
        backlog: int = 1000,
        backlog_span: int = 3600,
        arrival_rate: float = 5.0,
        page_size: int = 10_000,
        idle_wait_time: float = 1.0,
        rate_limit: int = 4,
        gzip: bool = True,
        subtypes: Iterable[str | tuple[str, str]] | None = None,
        start_time: float | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        served_limit: int | None = None,
    ) -> None:
        if backlog < 0 or backlog_span < 1 or arrival_rate < 0 or idle_wait_time < 0:
            raise ValueError("backlog, arrival_rate and idle_wait_time must be >= 0, backlog_span >= 1")
        if page_size < 1 or rate_limit < 1:
            raise ValueError("page_size and rate_limit must be at least 1")
        self.seed = seed
        self.factory = RecordFactory(seed, tenant)
        self._tokens: dict[str, frozenset[StreamKey] | None] = {
            token: None if streams is None else frozenset(_stream_of(*s) for s in streams)
            for token, streams in (tokens or {DEFAULT_TOKEN: None}).items()
        }
        self._clock = clock
        self._monotonic = monotonic
        self._rate_limit = rate_limit
        self._gzip = gzip
        wait: float = int(idle_wait_time) if float(idle_wait_time).is_integer() else idle_wait_time
        self._paging = Paging(page_size, wait)
        start = clock() if start_time is None else start_time
        with_data = (
            set(all_streams())
            if subtypes is None
            else {parse_stream(s) if isinstance(s, str) else _stream_of(*s) for s in subtypes}
        )
        self._timelines = {
            stream: Timeline(start, backlog, backlog_span, arrival_rate)
            if stream in with_data
            else Timeline(start)
            for stream in all_streams()
        }
        self._cursors: dict[tuple[DataKind, str, str], IndexCursor] = {}
        self._faults: defaultdict[StreamKey, FaultQueue] = defaultdict(FaultQueue)
        self._policy_faults = FaultQueue()
        self._endpoint_faults = {UCI_ENDPOINTS: FaultQueue(), SCIM_ENDPOINTS: FaultQueue()}
        self._windows: dict[str, SlidingWindow] = {}
        self._received = PeakRate()
        self._accepted = PeakRate()
        self._requests: Counter[str] = Counter()
        self._responses: Counter[int] = Counter()
        self._rate_limited = 0
        self._records_served: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._served: defaultdict[StreamKey, deque[ServedPage]] = defaultdict(
            lambda: deque(maxlen=served_limit)
        )
        self._in_flight: list[RequestInfo] = []
        self._waiters: list[tuple[StreamKey, str | None, asyncio.Future[RequestInfo]]] = []
        self._stopping = asyncio.Event()
        self.leases = LeaseLedger(monotonic)
        """Who drove each index, for clustered pollers (`ce_daemon.simulator.leases`)."""
        self.policy = PolicyLists()
        """The URL lists and file-hash lists pushed to the tenant (`ce_daemon.simulator.policy`)."""
        self.uci = UciBook(clock)
        """Every user's UCI and the anomalies that lowered it (`ce_daemon.simulator.uba`)."""
        self.scim = ScimDirectory()
        """The SCIM users and groups (`ce_daemon.simulator.scim`)."""
        self.incidents = Incidents()
        """What ticket orchestration wrote back to incidents (`ce_daemon.simulator.incidents`)."""
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: any free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_get("/api/v2/events/dataexport/{kind}/{subtype}", self._handle_dataexport)
        app.add_routes(policy_routes(self))
        app.add_routes(uci_routes(self))
        app.add_routes(scim_routes(self))
        app.add_routes(incident_routes(self))
        app.add_routes(control_routes(self))
        # A short shutdown timeout: `slow` faults are cut short by `_stopping`, so nothing long remains.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._stopping.clear()
        bound_port = runner.addresses[0][1]
        self.url = f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"
        log.info("simulator.started", url=self.url, tokens=len(self._tokens))
        return self.url

    async def stop(self) -> None:
        """Stop listening; requests held by a `slow` fault are answered at once."""
        if self._runner is None:
            return
        self._stopping.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()
        log.info("simulator.stopped", url=self.url)

    # -- test API ----------------------------------------------------------------------------

    def inject(self, kind: str, subtype: str, fault: Fault) -> None:
        """Queue ``fault`` for the next valid request(s) to ``kind/subtype`` (after those queued)."""
        stream = _stream_of(kind, subtype)
        self._faults[stream].push(fault)
        log.info("simulator.fault_injected", endpoint=_endpoint(stream), fault=fault.type, count=fault.count)

    def inject_policy(self, fault: Fault) -> None:
        """Queue ``fault`` for the next valid request(s) to the URL-list endpoints.

        ``status`` and ``rate_limit`` refuse the change (nothing applied); ``truncate`` applies it
        and then drops the connection mid-answer, so the client cannot tell it landed.
        """
        check_policy_fault(fault)
        self._policy_faults.push(fault)
        log.info("simulator.fault_injected", endpoint=POLICY_ENDPOINTS, fault=fault.type, count=fault.count)

    def take_policy_fault(self) -> Fault | None:
        """The fault the current URL-list request suffers, if one is queued (consumes it)."""
        return self._policy_faults.take()

    def inject_endpoints(self, family: str, fault: Fault) -> None:
        """Queue ``fault`` for the next valid request(s) to the UCI (``uci``) or SCIM (``scim``) endpoints.

        ``status`` and ``rate_limit`` refuse the request; ``truncate`` applies it and then drops the
        connection mid-answer.
        """
        if family not in self._endpoint_faults:
            raise ValueError(f"unknown endpoints {family!r}: use {', '.join(self._endpoint_faults)}")
        check_endpoint_fault(fault)
        self._endpoint_faults[family].push(fault)
        log.info("simulator.fault_injected", endpoint=family, fault=fault.type, count=fault.count)

    def take_endpoint_fault(self, family: str) -> Fault | None:
        """The fault the current request to ``family``'s endpoints suffers, if one is queued (consumes it)."""
        return self._endpoint_faults[family].take()

    def clear_faults(self) -> None:
        """Drop every fault still queued."""
        self._faults.clear()
        self._policy_faults = FaultQueue()
        self._endpoint_faults = {family: FaultQueue() for family in self._endpoint_faults}

    def pending_faults(self) -> dict[str, list[dict[str, Any]]]:
        """The faults still queued, per endpoint (``policy`` for the URL-list endpoints)."""
        pending = {_endpoint(stream): queue.pending() for stream, queue in self._faults.items() if queue}
        if self._policy_faults:
            pending[POLICY_ENDPOINTS] = self._policy_faults.pending()
        for family, queue in self._endpoint_faults.items():
            if queue:
                pending[family] = queue.pending()
        return pending

    def stats(self) -> SimulatorStats:
        """Counters since start (see `SimulatorStats`)."""
        return SimulatorStats(
            requests_total=sum(self._requests.values()),
            requests=dict(self._requests),
            responses=dict(self._responses),
            rate_limited=self._rate_limited,
            max_requests_per_second=self._received.peak,
            max_accepted_per_second=self._accepted.peak,
            records_served={
                endpoint: dict(per_index) for endpoint, per_index in self._records_served.items()
            },
            in_flight=len(self._in_flight),
        )

    def served(self, kind: str, subtype: str, index: str | None = None) -> list[ServedPage]:
        """Every page built for ``kind/subtype`` (on ``index``, or on all), in order."""
        pages = self._served.get(_stream_of(kind, subtype), ())
        return [page for page in pages if index is None or page.index == index]

    async def wait_for_request(self, kind: str, subtype: str, operation: str | None = None) -> RequestInfo:
        """Return once a request to ``kind/subtype`` is in flight (its answer decided, not yet sent).

        ``operation`` narrows the match: ``next``, ``head``, ``tail``, ``resend``, or ``epoch`` for
        any epoch. A request already in flight (held by a `slow` fault, say) matches at once.
        """
        stream = _stream_of(kind, subtype)
        for info in self._in_flight:
            if _matches(info, stream, operation):
                return info
        future: asyncio.Future[RequestInfo] = asyncio.get_running_loop().create_future()
        waiter = (stream, operation, future)
        self._waiters.append(waiter)
        try:
            return await future
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    # -- the data-export endpoint --------------------------------------------------------------

    async def _handle_dataexport(self, request: web.Request) -> web.StreamResponse:
        leased = self.leases.begin(
            f"{request.match_info['kind']}/{request.match_info['subtype']}",
            request.query.get("index", ""),
            request.headers.get(LEASE_HEADER),
        )
        try:
            return await self._answer_dataexport(request)
        finally:
            self.leases.end(leased)

    async def _answer_dataexport(self, request: web.Request) -> web.StreamResponse:
        answer, info = self._decide(request)
        if info is not None:
            self._in_flight.append(info)
            for waiter in [w for w in self._waiters if _matches(info, w[0], w[1])]:
                self._waiters.remove(waiter)
                if not waiter[2].done():
                    waiter[2].set_result(info)
        try:
            if answer.page is not None and info is not None:
                return await self._send_page(request, answer, (info.kind, info.subtype))
            return web.Response(
                status=answer.status,
                body=answer.body,
                headers=answer.headers,
                content_type=answer.content_type,
            )
        finally:
            if info is not None:
                self._in_flight.remove(info)

    def _decide(self, request: web.Request) -> tuple[_Answer, RequestInfo | None]:
        """Everything about the answer except rendering the page body; moves the cursor."""
        now = self._monotonic()
        self._received.add(now)
        kind_text, subtype_text = request.match_info["kind"], request.match_info["subtype"]
        self._requests[f"{kind_text}/{subtype_text}"] += 1
        stream = _STREAMS_BY_PATH.get((kind_text, subtype_text))
        index, operation = request.query.get("index", ""), request.query.get("operation", "")
        token = request.headers.get(TOKEN_HEADER, "")
        if token in self._tokens:
            window = self._windows.setdefault(token, SlidingWindow(self._rate_limit))
        else:
            window = SlidingWindow(self._rate_limit)  # an unknown token is shown an untouched budget
        problem = self._refusal(request, stream, token, index, operation)
        retry_after = max(1, math.ceil(window.reset_after(now)))
        if problem is None and window.remaining(now) == 0:
            problem = (
                429,
                "Too Many Requests",
                f"Rate limit exceeded: {self._rate_limit} requests per second",
            )
        queue = self._faults.get(stream) if stream is not None else None  # `get`: no empty queue left behind
        fault = queue.take() if problem is None and queue else None
        if fault is not None and fault.type == "rate_limit":
            # An injected throttle is a refusal too, so it does not count toward the window.
            problem, retry_after = (429, "Too Many Requests", "Rate limit exceeded"), fault.retry_after
        if problem is not None or stream is None:
            status, code, message = problem or (404, "Not Found", request.path)
            headers = self._refusal_headers(status, window, now, retry_after)
            self._responses[status] += 1
            fault_name = fault.type if fault is not None else None
            info = RequestInfo(*stream, index, operation, status, fault_name) if stream else None
            return _Answer(status, headers, error_body(code, message)), info
        window.try_acquire(now)
        self._accepted.add(now)
        return self._serve(stream, index, operation, fault, self._ratelimit_headers(window, now))

    def _serve(
        self, stream: StreamKey, index: str, operation: str, fault: Fault | None, headers: dict[str, str]
    ) -> tuple[_Answer, RequestInfo]:
        """The answer to an accepted request: a scripted failure, or a page (the cursor moves)."""
        status = fault.status if fault is not None and fault.type == "status" else 200
        self._responses[status] += 1
        fault_name = fault.type if fault is not None else None
        info = RequestInfo(*stream, index, operation, status, fault_name)
        if fault is not None and fault.type == "status":
            body, content_type = status_fault_body(status)
            return _Answer(status, headers, body, content_type), info
        if fault is not None and fault.type == "not_ok":
            return _Answer(200, headers, not_ok_body(fault.message)), info
        cursor = self._cursors.setdefault((*stream, index), IndexCursor())
        page = advance(cursor, self._timelines[stream], self._paging, operation, self._clock())
        self._served[stream].append(
            ServedPage(index, operation, page.first, page.end, page.timestamp_hwm, fault_name)
        )
        self._records_served[_endpoint(stream)][index] += len(page)
        return _Answer(200, headers, page=page, fault=fault), info

    def _refusal(
        self, request: web.Request, stream: StreamKey | None, token: str, index: str, operation: str
    ) -> tuple[int, str, str] | None:
        """Status, error code and message of a request refused before the rate limit, if it is."""
        if token not in self._tokens:
            return 401, "Unauthorized", f"Unauthorized: missing or invalid {TOKEN_HEADER} header"
        if stream is None:
            return 404, "Not Found", f"No such endpoint: {request.path}"
        allowed = self._tokens[token]
        if allowed is not None and stream not in allowed:
            return 403, "Forbidden", f"Forbidden: this token may not access {request.path}"
        if not index:
            return 400, "Bad Request", "The index parameter is required"
        if operation not in OPERATIONS and not operation.isdigit():
            return (
                400,
                "Bad Request",
                f"Invalid operation {operation!r}: use next, head, tail, resend or an epoch",
            )
        return None

    def _refusal_headers(
        self, status: int, window: SlidingWindow, now: float, retry_after: int
    ) -> dict[str, str]:
        """The rate-limit headers of a refused request (a 429 also says when to come back)."""
        headers = self._ratelimit_headers(window, now)
        if status == 429:
            self._rate_limited += 1
            headers |= {"ratelimit-remaining": "0", "ratelimit-reset": str(retry_after)}
            headers["Retry-After"] = str(retry_after)
        return headers

    def admit(self, endpoint: str, token: str) -> tuple[int, dict[str, str], str | None]:
        """Count one request to a policy endpoint and apply the token check and its rate window.

        The policy endpoints (`ce_daemon.simulator.policy`) share the data-export endpoints'
        tokens and per-token windows. Returns the status, the rate-limit headers and, when the
        request is refused, the error message; 200 and None when it may go on. A token limited
        to some streams may not change policy lists (403).
        """
        now = self._monotonic()
        self._received.add(now)
        self._requests[endpoint] += 1
        known = token in self._tokens
        window = self._windows.setdefault(token, SlidingWindow(self._rate_limit)) if known else None
        window = window or SlidingWindow(self._rate_limit)  # an unknown token is shown an untouched budget
        refusal: tuple[int, str] | None = None
        if not known:
            refusal = 401, f"Unauthorized: missing or invalid {TOKEN_HEADER} header"
        elif self._tokens[token] is not None:
            refusal = 403, f"Forbidden: this token may not access {endpoint}"
        elif window.remaining(now) == 0:
            refusal = 429, f"Rate limit exceeded: {self._rate_limit} requests per second"
        if refusal is not None:
            status, message = refusal
            retry_after = max(1, math.ceil(window.reset_after(now)))
            return status, self._refusal_headers(status, window, now, retry_after), message
        window.try_acquire(now)
        self._accepted.add(now)
        return 200, self._ratelimit_headers(window, now), None

    def count_response(self, status: int) -> None:
        """Count the status a policy endpoint answered (`stats` ``responses``)."""
        self._responses[status] += 1

    def _ratelimit_headers(self, window: SlidingWindow, now: float) -> dict[str, str]:
        return {
            "ratelimit-limit": str(self._rate_limit),
            "ratelimit-remaining": str(window.remaining(now)),
            "ratelimit-reset": str(math.ceil(window.reset_after(now))),
        }

    async def _send_page(
        self, request: web.Request, answer: _Answer, stream: StreamKey
    ) -> web.StreamResponse:
        assert answer.page is not None
        compress = self._gzip and "gzip" in request.headers.get("Accept-Encoding", "")
        render = (self.factory, stream, self._timelines[stream], answer.page, answer.fault, compress)
        if len(answer.page) >= _THREAD_RENDER_MIN:
            body = await asyncio.to_thread(render_page, *render)
        else:
            body = render_page(*render)
        headers = dict(answer.headers)
        if compress:
            headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
        fault = answer.fault
        if fault is not None and fault.type == "slow":
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), fault.delay)
        if fault is None or fault.type != "truncate":
            return web.Response(body=body, headers=headers, content_type="application/json")
        response = web.StreamResponse(headers=headers)
        response.content_type = "application/json"
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: int(len(body) * fault.keep_fraction)])
        if request.transport is not None:
            request.transport.close()  # after the partial body: the client sees the connection drop
        return response


def _matches(info: RequestInfo, stream: StreamKey, operation: str | None) -> bool:
    if (info.kind, info.subtype) != stream:
        return False
    if operation is None:
        return True
    if operation == "epoch":
        return bool(info.operation and info.operation.isdigit())
    return info.operation == operation


@asynccontextmanager
async def running_simulator(
    host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[TenantSimulator]:
    """A started `TenantSimulator` (``options`` as its constructor takes), stopped on exit."""
    simulator = TenantSimulator(**options)
    await simulator.start(host, port)
    try:
        yield simulator
    finally:
        await simulator.stop()
