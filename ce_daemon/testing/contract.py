"""The behavioural contract of a log sink, as a kit a plugin's own test suite runs against its sink.

``docs/plugins.md`` ("The contract kit") says what a sink promises; each check here exercises one
promise against a real target the test provides — a fake server of its own, a real receiver, a
folder — through a small adapter, :class:`SinkTarget`. From pytest, subclass :class:`LogSinkContract`
(plain pytest is enough: each test runs its own event loop)::

    class TestAcmeContract(LogSinkContract):
        sink_class = AcmeSink

        @contextlib.asynccontextmanager
        async def target(self, tmp_path: Path) -> AsyncIterator[SinkTarget]:
            fake = FakeAcme()
            async with fake:
                yield AcmeTarget(fake)

A behaviour the target cannot show (a folder has no credentials to refuse) is a method the adapter
does not implement; the checks that need it are skipped and say why. The checks themselves are
plain coroutines (:data:`CHECKS`) for other runners.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import time
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from pydantic import ValidationError

from ce_daemon.errors import AuthError, PermanentError, TransientError
from ce_daemon.plugin import Health, LogSink, OutRecord, Plugin, PluginOptions, SendResult
from ce_daemon.registry import BASES, api_compatibility
from ce_daemon.testing.fakes.base import FakeHttpServer
from ce_daemon.testing.sinks import make_sink

__all__ = [
    "BATCH",
    "CHECKS",
    "FakeServerTarget",
    "LogSinkContract",
    "SinkTarget",
    "SinkUnderTest",
    "Unsupported",
    "check_plugin_class",
    "contract_records",
    "ids_in",
]

BATCH = 60
"""Records in each batch the checks send: about 15 kB, so that a sink with small requests splits it."""
RETRY_AFTER = 7
"""The ``Retry-After`` (seconds) the transient check asks the target to send."""
CHECK_TIMEOUT = 45.0
"""The longest one check may take: a sink that hangs fails with a clear message instead."""


class Unsupported(Exception):  # noqa: N818 - a skip reason, not an error
    """The target cannot show a behaviour a check needs; the check is skipped with this reason."""


class SinkTarget(ABC):
    """The system a sink ships to, as the contract kit drives it.

    :meth:`options` and :meth:`received_ids` are required. Each other method is a behaviour the
    target may or may not be able to show; one the adapter does not override makes the checks that
    need it skip.
    """

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The sink's options (as in the YAML ``sink:`` block, without ``type``) pointing at the target.

        If the sink splits a batch into several requests, choose limits under which a batch of
        :data:`BATCH` records takes several: the retry check then shows a retry does not duplicate.
        """

    @abstractmethod
    async def received_ids(self, at_least: int) -> list[str]:
        """The ``OutRecord.id`` of every record the target holds, one entry per copy.

        A target that takes records in the background (a receiver writing a file) waits until it
        holds ``at_least`` of them, or a while, first. :func:`ids_in` reads ids out of what the
        target stored.
        """

    def failing_open_options(self) -> dict[str, Any]:
        """Options with which ``open()`` raises (a CA file that does not exist, a folder that is a file)."""
        raise Unsupported("the target gives no options that make open() fail")

    def fail_next(self, *, retry_after: float | None = None, after: int = 0) -> None:
        """Answer the data request after the next ``after`` ones with a transient error (HTTP 503).

        With ``retry_after``, the answer tells the sink to wait that long (``Retry-After``).
        """
        raise Unsupported("the target cannot fail a request on demand")

    def refuse(self, record_id: str) -> None:
        """From now on refuse, for good, the record whose ``OutRecord.id`` is ``record_id``."""
        raise Unsupported("the target cannot refuse one record")

    def refuse_credentials(self) -> None:
        """From now on refuse the credentials in :meth:`options` (revoked, rotated)."""
        raise Unsupported("the target has no credentials to refuse")

    async def go_down(self) -> None:
        """Stop answering: connections are refused until :meth:`come_back`."""
        raise Unsupported("the target cannot go down on demand")

    async def come_back(self) -> None:
        """Answer again, at the same address, after :meth:`go_down`."""
        raise Unsupported("the target cannot come back after going down")


class FakeServerTarget(SinkTarget, ABC):
    """A :class:`SinkTarget` for a fake built on :class:`~ce_daemon.testing.fakes.base.FakeHttpServer`.

    Failing, refusing credentials and going down are the fake's own; a subclass gives the options,
    reads what was received, and says how to refuse one record (if its vendor can).
    """

    def __init__(self, fake: FakeHttpServer) -> None:
        self.fake = fake

    def fail_next(self, *, retry_after: float | None = None, after: int = 0) -> None:
        self.fake.fail_next(1, 503, retry_after=retry_after, after=after)

    def refuse_credentials(self) -> None:
        self.fake.refuse_credentials()

    async def go_down(self) -> None:
        await self.fake.stop()

    async def come_back(self) -> None:
        await self.fake.start_again()


def ids_in(items: Iterable[Any], key: str = "_id") -> list[str]:
    """The ``key`` of each item: a mapping, or the JSON text (str or bytes) of an object."""
    found = []
    for item in items:
        parsed = orjson.loads(item) if isinstance(item, str | bytes) else item
        found.append(str(parsed[key]))
    return found


def contract_records(count: int, start: int = 0) -> list[OutRecord]:
    """``count`` JSON records as the core hands them to a sink, alerts/dlp and events/page in turn.

    Each is a JSON object of about 250 bytes with ``_id`` (also the ``OutRecord.id``) and
    ``timestamp``; ids are ``contract-00000``, ``contract-00001``… from ``start``.
    """
    now = int(time.time())
    records = []
    for n in range(start, start + count):
        kind, subtype = ("alerts", "dlp") if n % 2 == 0 else ("events", "page")
        record_id = f"contract-{n:05d}"
        timestamp = now - 60 + n % 60
        body = {
            "_id": record_id,
            "timestamp": timestamp,
            "type": kind[:-1],
            "alert_type" if kind == "alerts" else "page": subtype,
            "user": f"user{n % 7}@example.com",
            "message": f"record {n} of the log sink contract kit, padded to a realistic size " + "x" * 80,
        }
        records.append(OutRecord(record_id, timestamp, orjson.dumps(body), kind, subtype, "json"))
    return records


@dataclass
class SinkUnderTest:
    """What a check is given: the sink class, its target, a folder for relative paths, the promise."""

    sink_class: type[LogSink]
    target: SinkTarget
    base_dir: Path
    redelivers_on_retry: bool = False
    """True for a sink that cannot know what a failed attempt delivered (syslog): a retry may duplicate."""

    def make(self, options: Mapping[str, Any] | None = None) -> LogSink:
        """A new sink on the target's options (or ``options``), not opened."""
        chosen = self.target.options() if options is None else options
        return make_sink(self.sink_class, chosen, self.base_dir, name="contract")

    def needs(self, behaviour: str) -> None:
        """Skip (raise :class:`Unsupported`) unless the target's adapter implements ``behaviour``."""
        if getattr(type(self.target), behaviour) is getattr(SinkTarget, behaviour):
            raise Unsupported(f"{type(self.target).__name__} does not implement {behaviour}()")

    async def delivered_once(self, records: Sequence[OutRecord]) -> None:
        """Assert every one of ``records`` is at the target, once (at least once if it may redeliver)."""
        held = Counter(await self.target.received_ids(len(records)))
        missing = [r.id for r in records if not held[r.id]]
        assert not missing, (
            f"{len(missing)} of {len(records)} records never reached the target: {missing[:5]}"
        )
        if not self.redelivers_on_retry:
            twice = sorted(r.id for r in records if held[r.id] > 1)
            assert not twice, f"{len(twice)} records reached the target more than once: {twice[:5]}"


# -- the checks ------------------------------------------------------------------------------------


async def healthy(sink: LogSink) -> Health:
    """``sink.health()``, asserted to be a :class:`Health` (a plugin may return anything)."""
    answer: object = await sink.health()
    assert isinstance(answer, Health), f"health() returned {answer!r}, not a Health"
    assert isinstance(answer.detail, str), f"Health.detail is {answer.detail!r}, not a str"
    return answer


async def sent(sink: LogSink, batch: Sequence[OutRecord]) -> SendResult:
    """``sink.send(batch)``, its answer asserted to be a :class:`SendResult` whose rejections make sense.

    Each rejection is ``(position in the batch, a reason)``, no position twice.
    """
    answer: object = await sink.send(batch)
    assert isinstance(answer, SendResult), f"send() returned {answer!r}, not a SendResult"
    seen: set[int] = set()
    for entry in list[object](answer.rejected):
        assert isinstance(entry, tuple) and len(entry) == 2, f"rejected holds {entry!r}: not a pair"
        position, reason = entry
        assert isinstance(position, int) and 0 <= position < len(batch), f"no record at {position!r}"
        assert position not in seen, f"record {position} is rejected twice"
        assert isinstance(reason, str) and reason.strip(), f"record {position} rejected without a reason"
        seen.add(position)
    return answer


async def open_health_send_close(sut: SinkUnderTest) -> None:
    """open → health (a healthy Health) → send (a SendResult, nothing refused) → close; each record once."""
    batch = contract_records(BATCH)
    sink = sut.make()
    try:
        await sink.open()
        health = await healthy(sink)
        assert health.ok, f"health() is not ok against a healthy target: {health.detail}"
        result = await sent(sink, batch)
        assert not result.rejected, f"a healthy target refused records: {list(result.rejected)[:3]}"
    finally:
        await sink.close()
    await sut.delivered_once(batch)


async def refused_record_is_rejected_alone(sut: SinkUnderTest) -> None:
    """A record the target refuses is in SendResult.rejected with a reason; the rest is delivered once.

    When the target refuses a whole request for one record, its other records are rejected with it,
    never delivered; when it refuses every record, send() may raise PermanentError, having delivered
    nothing.
    """
    sut.needs("refuse")
    batch = contract_records(BATCH)
    refused = len(batch) // 2
    sut.target.refuse(batch[refused].id)
    sink = sut.make()
    try:
        await sink.open()
        try:
            result = await sent(sink, batch)
        except PermanentError:
            delivered = set(await sut.target.received_ids(0))
            leaked = [r.id for r in batch if r.id in delivered]
            assert not leaked, f"send() raised PermanentError but delivered {leaked[:5]}"
            return
    finally:
        await sink.close()
    positions = {position for position, _ in result.rejected}
    assert refused in positions, f"the refused record (position {refused}) is not in rejected: {positions}"
    held = Counter(await sut.target.received_ids(len(batch) - len(positions)))
    wrongly = [batch[p].id for p in positions if held[batch[p].id]]
    assert not wrongly, f"records reported rejected reached the target: {wrongly[:5]}"
    await sut.delivered_once([r for p, r in enumerate(batch) if p not in positions])


async def transient_failure_raises_transient_error(sut: SinkUnderTest) -> None:
    """A 503 raises TransientError, with retry_after when the target sent Retry-After; the retry delivers."""
    sut.needs("fail_next")
    batch = contract_records(BATCH)
    sink = sut.make()
    try:
        await sink.open()
        await sink.health()
        sut.target.fail_next()
        with pytest.raises(TransientError):
            await sent(sink, batch)
        sut.target.fail_next(retry_after=RETRY_AFTER)
        with pytest.raises(TransientError) as caught:
            await sent(sink, batch)
        waited = caught.value.retry_after
        assert waited is not None and abs(waited - RETRY_AFTER) <= 1, (
            f"Retry-After: {RETRY_AFTER} gave TransientError.retry_after={waited!r}"
        )
        await sent(sink, batch)
    finally:
        await sink.close()
    await sut.delivered_once(batch)


async def retry_after_partial_failure_does_not_duplicate(sut: SinkUnderTest) -> None:
    """A batch retried after a failure half-way (second request) delivers each record exactly once."""
    sut.needs("fail_next")
    first, second = contract_records(BATCH), contract_records(BATCH, start=BATCH)
    sut.target.fail_next(after=1)
    failures = 0
    sink = sut.make()
    try:
        await sink.open()
        for batch in (first, second):
            try:
                await sent(sink, batch)
            except TransientError:
                failures += 1
                await sent(sink, batch)  # what the core does: the very same records again
    finally:
        await sink.close()
    assert failures == 1, f"the failed request raised TransientError {failures} times, not once"
    await sut.delivered_once(first + second)


async def refused_credentials_raise_auth_error(sut: SinkUnderTest) -> None:
    """Credentials refused: health() answers not ok (it does not raise) and send() raises AuthError."""
    sut.needs("refuse_credentials")
    sink = sut.make()
    try:
        await sink.open()
        await sent(sink, contract_records(BATCH))
        sut.target.refuse_credentials()
        health = await healthy(sink)
        assert not health.ok, f"refused credentials, yet health is {health!r}"
        assert health.detail, "an unhealthy answer says why in detail"
        with pytest.raises(AuthError):
            await sent(sink, contract_records(BATCH, start=BATCH))
    finally:
        await sink.close()


async def outage_is_transient_and_recovers(sut: SinkUnderTest) -> None:
    """Target down: health() not ok, send() raises TransientError; back up: the same batch is delivered."""
    sut.needs("go_down")
    first, second = contract_records(BATCH), contract_records(BATCH, start=BATCH)
    sink = sut.make()
    try:
        await sink.open()
        await sent(sink, first)
        await sut.target.received_ids(len(first))
        await sut.target.go_down()
        health = await healthy(sink)
        assert not health.ok, f"the target is down, yet health is {health!r}"
        with pytest.raises(TransientError):
            await sent(sink, second)
        await sut.target.come_back()
        await sent(sink, second)
    finally:
        await sink.close()
    await sut.delivered_once(first + second)


async def target_down_at_start(sut: SinkUnderTest) -> None:
    """Target down at start: open() raises or health() is not ok and send() raises TransientError."""
    sut.needs("go_down")
    await sut.target.go_down()
    sink = sut.make()
    try:
        try:
            await sink.open()
        except Exception:  # noqa: BLE001 - any error from open() is a start failure the core reports
            return
        health = await healthy(sink)
        assert not health.ok, f"the target is down, yet health is {health!r}"
        with pytest.raises(TransientError):
            await sent(sink, contract_records(BATCH))
    finally:
        await sink.close()


async def close_after_failed_open(sut: SinkUnderTest) -> None:
    """open() failed: close() does not raise, twice."""
    sut.needs("failing_open_options")
    sink = sut.make(sut.target.failing_open_options())
    with pytest.raises(Exception):  # noqa: PT011, B017 - any error: the core reports it as a start failure
        await sink.open()
    await sink.close()
    await sink.close()


async def close_without_open(sut: SinkUnderTest) -> None:
    """A sink never opened can be closed (a route stopped before it started)."""
    sink = sut.make()
    await sink.close()


async def close_twice(sut: SinkUnderTest) -> None:
    """A second close() does nothing."""
    sink = sut.make()
    await sink.open()
    await sent(sink, contract_records(BATCH))
    await sink.close()
    await sink.close()


async def send_after_close(sut: SinkUnderTest) -> None:
    """send() after close() raises, or delivers and leaves nothing open once closed again."""
    batch = contract_records(BATCH)
    sink = sut.make()
    await sink.open()
    await sink.close()
    try:
        await sent(sink, batch)
    except Exception:  # noqa: BLE001 - refusing is one of the two allowed answers
        return
    finally:
        await sink.close()
    await sut.delivered_once(batch)


Check = Callable[[SinkUnderTest], Awaitable[None]]
CHECKS: dict[str, Check] = {
    check.__name__: check
    for check in (
        open_health_send_close,
        refused_record_is_rejected_alone,
        transient_failure_raises_transient_error,
        retry_after_partial_failure_does_not_duplicate,
        refused_credentials_raise_auth_error,
        outage_is_transient_and_recovers,
        target_down_at_start,
        close_after_failed_open,
        close_without_open,
        close_twice,
        send_after_close,
    )
}
"""Every behavioural check, by name."""


def check_plugin_class(cls: type[Plugin], kind: str | None = None) -> None:
    """Assert ``cls`` honours the static contract of its kind (what the registry cannot refuse).

    It subclasses the kind's base; declares a supported ``api_version``; owns a strict options model
    (unknown keys refused); implements every operation as a coroutine; documents itself.
    """
    kind = kind or cls.kind
    base = BASES.get(kind, Plugin)
    assert issubclass(cls, base), f"{cls.__name__} is not a {base.__name__}"
    assert cls.kind == kind, f"{cls.__name__}.kind is {cls.kind!r}, not {kind!r}"
    declared = getattr(cls, "api_version", None)
    assert declared is not None, f"{cls.__name__} declares no api_version"
    error, _ = api_compatibility(declared, cls.__module__)
    assert error is None, f"{cls.__name__}: {error}"
    options: object = getattr(cls, "Options", None)
    assert isinstance(options, type) and issubclass(options, PluginOptions), "Options is a PluginOptions"
    assert options.model_config.get("extra") == "forbid", "Options refuses unknown keys (extra='forbid')"
    with pytest.raises(ValidationError) as caught:
        options.model_validate({"__surely_not_an_option__": 1})
    assert any(e["type"] == "extra_forbidden" for e in caught.value.errors()), "unknown keys are refused"
    operations = ("open", "health", "close", *(["send"] if issubclass(cls, LogSink) else []))
    for name in operations:
        assert inspect.iscoroutinefunction(getattr(cls, name)), f"{cls.__name__}.{name} is not async"
    assert not getattr(cls, "__abstractmethods__", None), f"{cls.__name__} leaves abstract methods"
    assert (cls.__doc__ or "").strip(), f"{cls.__name__} has no docstring"


# -- pytest ----------------------------------------------------------------------------------------


class LogSinkContract:
    """Every check of the log sink contract as a pytest test: subclass it as ``Test…``.

    Set :attr:`sink_class`, implement :meth:`target`; set :attr:`redelivers_on_retry` for a sink
    that, by the nature of its target, may deliver a retried batch twice (and say so in its docs).
    """

    sink_class: ClassVar[type[LogSink]]
    redelivers_on_retry: ClassVar[bool] = False

    def target(self, tmp_path: Path) -> AbstractAsyncContextManager[SinkTarget]:
        """A fresh target, running while the context is entered (one per test)."""
        raise NotImplementedError(f"{type(self).__name__} must implement target()")

    def test_class_honours_the_contract(self) -> None:
        """The sink class subclasses LogSink, declares api_version, and has a strict Options model."""
        check_plugin_class(self.sink_class, "log_sink")

    def test_open_health_send_close(self, tmp_path: Path) -> None:
        """Healthy target: health ok, nothing rejected, every record delivered once."""
        self.run_check(open_health_send_close, tmp_path)

    def test_refused_record_is_rejected_alone(self, tmp_path: Path) -> None:
        """A refused record is in SendResult.rejected with a reason; the others are delivered once."""
        self.run_check(refused_record_is_rejected_alone, tmp_path)

    def test_transient_failure_raises_transient_error(self, tmp_path: Path) -> None:
        """A 503 raises TransientError carrying Retry-After; the retry delivers."""
        self.run_check(transient_failure_raises_transient_error, tmp_path)

    def test_retry_after_partial_failure_does_not_duplicate(self, tmp_path: Path) -> None:
        """A batch retried after failing half-way delivers each record exactly once."""
        self.run_check(retry_after_partial_failure_does_not_duplicate, tmp_path)

    def test_refused_credentials_raise_auth_error(self, tmp_path: Path) -> None:
        """Refused credentials: health not ok, send raises AuthError."""
        self.run_check(refused_credentials_raise_auth_error, tmp_path)

    def test_outage_is_transient_and_recovers(self, tmp_path: Path) -> None:
        """Target down: health not ok, TransientError; back up: the batch is delivered."""
        self.run_check(outage_is_transient_and_recovers, tmp_path)

    def test_target_down_at_start(self, tmp_path: Path) -> None:
        """Target down at start: open raises or health is not ok; close is safe."""
        self.run_check(target_down_at_start, tmp_path)

    def test_close_after_failed_open(self, tmp_path: Path) -> None:
        """close() after a failed open() does not raise, twice."""
        self.run_check(close_after_failed_open, tmp_path)

    def test_close_without_open(self, tmp_path: Path) -> None:
        """close() on a sink never opened does not raise."""
        self.run_check(close_without_open, tmp_path)

    def test_close_twice(self, tmp_path: Path) -> None:
        """The second close() does nothing."""
        self.run_check(close_twice, tmp_path)

    def test_send_after_close(self, tmp_path: Path) -> None:
        """send() after close() raises, or delivers and leaves nothing open."""
        self.run_check(send_after_close, tmp_path)

    def run_check(self, check: Check, tmp_path: Path) -> None:
        """Run ``check`` in a new event loop against a fresh target; skip when the target cannot show it."""

        async def against_target() -> None:
            async with self.target(tmp_path) as target, asyncio.timeout(CHECK_TIMEOUT):
                await check(SinkUnderTest(self.sink_class, target, tmp_path, self.redelivers_on_retry))

        try:
            with nothing_left_open(self.sink_class.__name__):
                asyncio.run(against_target())
        except Unsupported as exc:
            pytest.skip(str(exc))


@contextmanager
def nothing_left_open(what: str) -> Iterator[None]:
    """Assert that nothing made inside the block is left unclosed (a ResourceWarning once collected).

    Unclosed aiohttp sessions, sockets, transports and files warn when the garbage collector takes
    them; other warnings are passed on as they came.
    """
    leaked: list[str] = []
    others: list[warnings.WarningMessage] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        # A warning keeps its source alive (a session keeps its connector): collect until none comes.
        for _ in range(5):
            gc.collect()
            if not caught:
                break
            leaked += [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
            others += [w for w in caught if not issubclass(w.category, ResourceWarning)]
            caught.clear()
    for other in others:
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    assert not leaked, f"{what} left resources open: {leaked[0]}"
