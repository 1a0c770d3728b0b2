"""Format workers: a route's pages decoded, filtered, muted and formatted in another process.

The daemon's asyncio process does the I/O of every job: polling, the spool's database, every sink's
sockets, acknowledgements. What a log route does to each record between the spool and its sink is
CPU work (JSON decoding, the filter, the mapping, the output format) that holds the GIL: with three
routes on one tenant at the API's rate it takes more than one core. So a route hands each page, as
the spool stores it (compressed), to a pool of spawned processes (``logs.workers``), which answer
with the page's *decisions*: per unread record, the bytes to send, or why it is not sent.

What does not change: the route reads, batches, sends and acknowledges exactly as before, in the
asyncio process, so at-least-once and every crash behaviour stay as they were (a page whose decisions
were lost with a worker was never acknowledged, and is decided again). A worker decides with the same
code (:func:`ce_daemon.logs.route.judge`) on a route built from the same recipe (filter, mutes,
mapping, format), so what it writes is what the route would write itself.

A worker lost (killed, out of memory) is replaced, and the page it held is decided in-process;
the routes go on. A worker keeps what it made of a page for the other routes of the same stream that
ask close behind (a few pages' worth; one that asks later makes it again): the decompressed frames,
for the routes of every output (:attr:`PageWork.outputs`); the parsed frames, for routes that read
dicts (:class:`~ce_daemon.spool.store.SharedFrames`); and the decisions themselves, for routes with
the same output (:func:`output_key`: one CEF feed to two SIEMs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import functools
import hashlib
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import structlog

from ce_daemon.errors import describe
from ce_daemon.filter import compile_filter
from ce_daemon.logs.formatter import OutputFormat, RecordFormatter
from ce_daemon.logs.mapping import Mapping
from ce_daemon.logs.native import filter_picker
from ce_daemon.logs.resolve import Mute, Predicate
from ce_daemon.spool.codec import decode, parse_frame
from ce_daemon.spool.store import SharedFrames

log = structlog.get_logger("ce_daemon.workers")

DEFAULT_TIMEOUT: Final = 120.0
"""Seconds a worker may take for one page before it is taken for stuck (a page takes well under one)."""
PARENT_CHECK: Final = 0.5
"""Seconds between a worker's checks that the daemon is still there."""
PIPE_BYTES: Final = 1 << 20
"""Capacity asked for each pipe between the daemon and a worker: as much as Linux lets any process ask for
by default (``/proc/sys/fs/pipe-max-size``)."""
_RECIPES: Final = 64
_MUTE_FILTERS: Final = 256
_SHARED_FRAMES: Final = 16
_SHARED_DECISIONS: Final = 4
"""Pages' decisions a worker keeps for routes with the same output (each can be 10 MB)."""
_SHARED_CHUNKS: Final = 2
"""Pages' decompressed frames a worker keeps for the routes of other outputs (each about 13 MB)."""
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Recipe:
    """What a worker builds a route's decisions from: its filter spec, format, mapping and options.

    Sent pickled with each page (``key`` names it, so a worker unpickles it once): a worker holds no
    state of its own that a restart could lose.
    """

    key: str
    format: OutputFormat
    mapping: Mapping
    tenant_name: str
    json_fields: Sequence[str | dict[str, Any]] | None
    filter: Any


@dataclass(frozen=True, slots=True)
class PageWork:
    """One page for a worker: the stored page (compressed), where the route stands in it, its active mutes."""

    recipe_key: str
    recipe: bytes
    spool: str
    """Names the spool the page is from (seqs are unique per spool only)."""
    readers: int
    """Routes of this process that read the page's stream (how long its parsed frames are kept)."""
    kind: str
    subtype: str
    seq: int
    codec: str
    body: bytes
    start: int
    mutes: tuple[tuple[str, Any], ...]
    """(name, filter spec) of each mute active now, in the route's order."""
    output_key: str = ""
    """Names what the recipe makes of a record, whichever route sends it (:func:`output_key`)."""
    sharers: int = 1
    """Routes of this process that send this page's stream with the same output: the decisions of a page
    are kept for the others once the first asked for them."""
    outputs: int = 1
    """Distinct outputs of this process's routes on this page's stream: the page's decompressed frames
    are kept for the others once the first decompressed them."""


@dataclass(slots=True)
class PageDecisions:
    """A page's decisions, from ``start`` on, in four parallel lists for the records to send and one
    list for the others: ``(position, counter, detail, record)`` with counter ``filtered``, ``muted``
    (detail: the mute's name) or ``dead_lettered`` (detail: why it could not be formatted; record: the
    record, for the dead-letter table)."""

    positions: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    dropped: list[tuple[int, str, str | None, dict[str, Any] | None]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions) + len(self.dropped)


class WorkerLostError(Exception):
    """A worker died or stuck with a page: the route decides that page itself."""


class FormatWorkers:
    """The daemon's worker processes, shared by every route (see the module docstring).

    Each worker is a pool of one, and a page goes to worker ``seq % size``: every route reading that
    page asks the same worker, which may still hold its frames, parsed for another of them.

    Started with the first route that asks for it (:meth:`acquire`), stopped with the last
    (:meth:`release`): a reload that keeps any route keeps the workers.
    """

    _instance: FormatWorkers | None = None

    def __init__(self, size: int) -> None:
        self.size = size
        self.users = 0
        self.lost = 0
        self._executors: list[ProcessPoolExecutor | None] = [None] * size
        self._outputs: Counter[tuple[str, str]] = Counter()

    def share(self, output: str, streams: Iterable[str], *, joining: bool = True) -> None:
        """A route that sends ``streams`` with ``output`` starts (``joining``) or stops using the workers."""
        for stream in streams:
            self._outputs[output, stream] += 1 if joining else -1
            if self._outputs[output, stream] <= 0:
                del self._outputs[output, stream]

    def outputs(self, stream: str) -> int:
        """Distinct outputs of the routes using the workers on ``stream`` (:attr:`PageWork.outputs`)."""
        return max(1, sum(1 for _, each in self._outputs if each == stream))

    def sharers(self, output: str, stream: str) -> int:
        """Routes using the workers that send ``stream`` with ``output`` (see :attr:`PageWork.sharers`)."""
        return max(1, self._outputs[output, stream])

    @classmethod
    def acquire(cls, size: int) -> FormatWorkers | None:
        """The daemon's workers (``size`` of them from now on); None for ``size`` 0 (decide in-process)."""
        if size <= 0:
            return None
        pool = cls._instance
        if pool is None:
            pool = cls._instance = FormatWorkers(size)
        elif pool.size != size:  # logs.workers changed: the pages under way are still answered
            pool._stop_all()
            pool.size, pool._executors = size, [None] * size
        pool.users += 1
        return pool

    def release(self) -> None:
        """One route less; the last one stops the workers."""
        self.users -= 1
        if self.users <= 0:
            if FormatWorkers._instance is self:
                FormatWorkers._instance = None
            self._stop_all()

    async def decide(self, work: PageWork, timeout: float = DEFAULT_TIMEOUT) -> PageDecisions:  # noqa: ASYNC109 - a bound on a worker's answer, not a caller's deadline
        """The decisions of ``work``'s page, from a worker; :class:`WorkerLostError` if none answers."""
        index = work.seq % self.size
        try:
            # A worker that died between pages has its submission refused.
            future = asyncio.get_running_loop().run_in_executor(self._running(index), decide_page, work)
            async with asyncio.timeout(timeout):
                return await future
        except (BrokenProcessPool, TimeoutError) as exc:
            self.lost += 1
            why = "stuck" if isinstance(exc, TimeoutError) else "lost"
            log.warning("workers.page_lost", seq=work.seq, why=why, error=describe(exc), worker=index)
            self._stop(index, kill=True)
            raise WorkerLostError(f"format worker {why} with page {work.seq}") from exc

    def processes(self) -> list[int]:
        """The process ids of the workers running now."""
        return [
            process.pid
            for executor in self._executors
            if executor is not None
            for process in _processes_of(executor)
            if process.pid is not None
        ]

    def pipe_sizes(self) -> list[list[int]]:
        """For each running worker, the capacity in bytes of the pipe that carries its pages and of the
        one that carries its decisions back, as Linux reports them (empty where it cannot tell)."""
        get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
        if get_size is None:
            return [[] for executor in self._executors if executor is not None]
        return [
            [fcntl.fcntl(end, get_size) for end in pipe_ends(executor)]
            for executor in self._executors
            if executor is not None
        ]

    def _running(self, index: int) -> ProcessPoolExecutor:
        executor = self._executors[index]
        if executor is None:
            executor = self._executors[index] = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_started,
                initargs=(os.getpid(),),
            )
            _widen_pipes(executor)
            log.info("workers.started", worker=index, size=self.size)
        return executor

    def _stop(self, index: int, *, kill: bool = False) -> None:
        """Stop worker ``index``; ``kill`` ends what it is doing too (its pending pages then fail, as
        lost: never cancelled, which the routes waiting on them would take for their own cancellation)."""
        executor, self._executors[index] = self._executors[index], None
        if executor is None:
            return
        if kill:
            for process in _processes_of(executor):
                process.kill()
        executor.shutdown(wait=False)

    def _stop_all(self) -> None:
        for index in range(len(self._executors)):
            self._stop(index)


def _widen_pipes(executor: ProcessPoolExecutor) -> None:
    """Give the pipes that carry pages to a worker and decisions back :data:`PIPE_BYTES` each, where
    Linux allows it.

    A page's decisions are 8-14 MB. Through a pipe of 64 KiB (Linux's default) they go over in a hundred
    writes and reads or more, each a wake-up of the other side, and every read allocates a buffer for all
    that is still to come: in bench_fanout the daemon's threads receiving them took about a third less
    CPU once the pipes were widened. Left as they are where the system refuses (another OS, or a user
    past its pipe allowance).
    """
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    for end in pipe_ends(executor):
        try:
            fcntl.fcntl(end, set_size, PIPE_BYTES)
        except OSError as exc:
            log.debug("workers.pipe_kept", error=describe(exc))


def pipe_ends(executor: ProcessPoolExecutor) -> list[int]:
    """The daemon's ends (file descriptors) of the pipes to ``executor``'s worker and back.

    The executor keeps its queues in private attributes and names no public way to them: none are
    found if they change.
    """
    ends = (
        getattr(getattr(executor, "_call_queue", None), "_writer", None),
        getattr(getattr(executor, "_result_queue", None), "_reader", None),
    )
    return [end.fileno() for end in ends if end is not None]


def _processes_of(executor: ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    """An executor's worker processes (it keeps them in a private mapping, and names no public way)."""
    return list((getattr(executor, "_processes", None) or {}).values())


def recipe_bytes(recipe: Recipe) -> bytes:
    """``recipe`` as sent with each page."""
    return pickle.dumps(recipe, protocol=pickle.HIGHEST_PROTOCOL)


def output_key(recipe: Recipe) -> str:
    """What ``recipe`` makes of a record, as a name: equal for two routes whose recipes differ only in
    their ``key`` (the same pickle but for it), so equal names always make equal decisions; recipes
    that pickle differently are never taken for the same, even when they would write alike."""
    return hashlib.sha256(recipe_bytes(dataclasses.replace(recipe, key=""))).hexdigest()


# -- in the worker process ------------------------------------------------------------------------------


def _worker_started(daemon: int) -> None:
    """Set a worker up to live and die with the ``daemon`` process.

    The daemon stops its workers itself: a Ctrl-C meant for it must not end them first. A daemon that
    is killed cannot: its workers then end on their own, within :data:`PARENT_CHECK` seconds (they
    would wait for work forever). A worker writes nothing to the daemon's stdout and stderr (the
    daemon logs what goes wrong in one, from the answers it gets), so no worker output can interleave
    with the daemon's log lines, or block on a pipe that a dead daemon's reader no longer empties.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    os.close(quiet)
    threading.Thread(target=_end_with, args=(daemon,), name="daemon-watch", daemon=True).start()


def _end_with(daemon: int) -> None:
    """Exit as soon as ``daemon`` is no longer this process's parent (it died: this one was re-parented)."""
    while os.getppid() == daemon:
        time.sleep(PARENT_CHECK)
    os._exit(0)


class _KeptForOthers(Generic[K, V]):
    """What a worker made for one route, kept for the others that will ask for the same (a few at most,
    the oldest let go first): each entry goes once the last of them took it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def take(self, key: K) -> V | None:
        """The value kept under ``key`` for one more asker, or None."""
        kept = self._kept.pop(key, None)
        if kept is None:
            return None
        value, others = kept
        if others > 1:
            self._kept[key] = (value, others - 1)
        return value

    def keep(self, key: K, value: V, others: int) -> None:
        """Keep ``value`` for ``others`` more askers (nothing when none)."""
        if others < 1:
            return
        self._kept[key] = (value, others)
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)

    def clear(self) -> None:
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)


@dataclass(frozen=True, slots=True)
class _Built:
    """A recipe as a worker uses it: its filter, compiled and as written, its formatter, its picker."""

    predicate: Predicate | None
    formatter: RecordFormatter
    pick: Any
    filter: Any


@dataclass
class _WorkerState:
    recipes: OrderedDict[str, _Built] = field(default_factory=OrderedDict)
    mutes: OrderedDict[str, Predicate | None] = field(default_factory=OrderedDict)
    pickers: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    frames: dict[str, SharedFrames] = field(default_factory=dict)
    decided: _KeptForOthers[tuple[str, str, int, int, str], PageDecisions] = field(
        default_factory=lambda: _KeptForOthers(_SHARED_DECISIONS)
    )
    """Decisions kept for the other routes with the same output."""
    chunks: _KeptForOthers[tuple[str, int], tuple[bytes, ...]] = field(
        default_factory=lambda: _KeptForOthers(_SHARED_CHUNKS)
    )
    """Pages' decompressed frames kept for the routes of other outputs."""


_STATE = _WorkerState()


def decide_page(work: PageWork) -> PageDecisions:
    """What the route does with each unread record of ``work``'s page (runs in a worker).

    Routes with the same output (:func:`output_key`; two SIEMs fed the same CEF, say) get the same
    decisions: the first to ask has them made, the others of ``work.sharers`` take them while the worker
    keeps them (the last few pages); one that asks later, or from elsewhere in the page, decides anew.
    """
    if work.sharers <= 1:
        return _decide(work)
    key = (work.spool, work.output_key, work.seq, work.start, repr(work.mutes))
    decisions = _STATE.decided.take(key)
    if decisions is None:
        decisions = _decide(work)
        _STATE.decided.keep(key, decisions, work.sharers - 1)
    return decisions


def _decide(work: PageWork) -> PageDecisions:
    from ce_daemon.logs.route import decide_records, decide_texts, reads_json  # route imports this module

    built = _recipe(work)
    predicate, pick = built.predicate, built.pick
    mutes = [Mute(name, 0.0, float("inf"), _mute_filter(spec)) for name, spec in work.mutes]
    if mutes:
        pick = _mute_picker(work, built)
    write = built.formatter.writer_for(work.kind, work.subtype)
    if reads_json(write, predicate, mutes, pick):
        chunks = _chunks(work)
        parse = functools.partial(parse_frame, work.seq)
        return decide_texts(chunks, work.start, write, parse, predicate, pick, mutes)
    return decide_records(_frames(work), work.start, predicate, mutes, write)


def _recipe(work: PageWork) -> _Built:
    built = _STATE.recipes.get(work.recipe_key)
    if built is None:
        recipe: Recipe = pickle.loads(work.recipe)  # noqa: S301 - from the daemon that spawned this process
        predicate = None if recipe.filter is None else compile_filter(recipe.filter)
        formatter = RecordFormatter(
            recipe.format, recipe.mapping, recipe.tenant_name, json_fields=recipe.json_fields
        )
        built = _Built(predicate, formatter, filter_picker(recipe.filter), recipe.filter)
        _STATE.recipes[work.recipe_key] = built
        while len(_STATE.recipes) > _RECIPES:
            _STATE.recipes.popitem(last=False)
    return built


def _chunks(work: PageWork) -> tuple[bytes, ...]:
    """The page's frames, decompressed once for the routes of every output on its stream (kept for the
    others, a few pages at most: a route that asks later decompresses again)."""
    key = (work.spool, work.seq)
    chunks = _STATE.chunks.take(key)
    if chunks is None:
        chunks = decode(work.seq, work.codec, work.body)
        _STATE.chunks.keep(key, chunks, work.outputs - 1)
    return chunks


def _mute_picker(work: PageWork, built: _Built) -> Any:
    """The picker of the route's filter and ``work``'s mutes (`native.filter_picker`), kept per recipe and
    set of mutes."""
    key = f"{work.recipe_key} {work.mutes!r}"
    if key not in _STATE.pickers:
        _STATE.pickers[key] = filter_picker(built.filter, *(spec for _, spec in work.mutes))
        while len(_STATE.pickers) > _MUTE_FILTERS:
            _STATE.pickers.popitem(last=False)
    return _STATE.pickers[key]


def _mute_filter(spec: Any) -> Predicate | None:
    if spec is None:
        return None
    key = repr(spec)  # a filter spec is YAML's or JSON's: repr names it whatever it holds (dates too)
    if key not in _STATE.mutes:
        _STATE.mutes[key] = compile_filter(spec)
        while len(_STATE.mutes) > _MUTE_FILTERS:
            _STATE.mutes.popitem(last=False)
    return _STATE.mutes[key]


def _frames(work: PageWork) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """``(position of the first record, records)`` of each frame of ``work``'s page, each frame parsed
    once for every route that reads it."""
    shared = _STATE.frames.get(work.spool)
    if shared is None:
        shared = _STATE.frames[work.spool] = SharedFrames(lambda _stream: 1, _SHARED_FRAMES)
    readers = work.readers
    shared.readers = lambda _stream: readers
    stream = f"{work.kind}/{work.subtype}"
    offset = 0
    for index, chunk in enumerate(_chunks(work)):
        records = shared.take(work.seq, index)
        if records is None:
            records = parse_frame(work.seq, chunk)
            shared.offer(work.seq, stream, index, records)
        yield offset, records
        offset += len(records)
