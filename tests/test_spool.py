"""The durable spool: pages, consumer offsets, back-pressure, iterator state, crash safety."""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import lz4.frame
import orjson
import pytest
from structlog.testing import capture_logs

from ce_daemon.netskope.checkpoint import Checkpoints, IteratorMark, page_marker
from ce_daemon.spool import SPOOL_MIGRATIONS, Spool, SpoolCorruptError
from ce_daemon.spool.codec import CODEC, FRAME_RECORDS, decode
from ce_daemon.store import Store, Transaction, open_url
from ce_daemon.testing.state import open_test_store

MARK = IteratorMark()
CRASH_CHILD = Path(__file__).with_name("spool_crash_child.py")


def records_of(page: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "_id": f"p{page}-r{i}",
            "page": page,
            "i": i,
            "user": f"user{i % 7}@example.com",
            "n": [i, None, True],
        }
        for i in range(count)
    ]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    async with await open_test_store(db_path, SPOOL_MIGRATIONS) as opened:
        yield opened


@pytest.fixture
async def spool(store: Store) -> Spool:
    loaded = Spool(store, max_bytes=1 << 30)
    await loaded.load()
    return loaded


async def reopened(db_path: Path, max_bytes: int = 1 << 30) -> tuple[Store, Spool]:
    store = await open_test_store(db_path, SPOOL_MIGRATIONS)
    spool = Spool(store, max_bytes=max_bytes)
    await spool.load()
    return store, spool


def checkpoints(spool: Spool) -> Checkpoints:
    """The iterator checkpoints kept in ``spool``'s store."""
    return Checkpoints(spool.store)


async def append(
    spool: Spool,
    stream: str,
    records: list[dict[str, Any]],
    mark: IteratorMark = MARK,
    key: str | None = None,
) -> int:
    """Append a page as a poller does: with its iterator's checkpoint (``key``, else the stream)."""
    commit = checkpoints(spool).page_commit(stream if key is None else key, records, mark)
    return await spool.append(stream, records, commit=commit)


async def blocked_task(awaitable: Callable[[], Awaitable[Any]]) -> asyncio.Task[Any]:
    """Start ``awaitable`` in a task and return once it has run up to its first suspension."""
    started = asyncio.Event()

    async def run() -> Any:
        started.set()
        return await awaitable()

    task = asyncio.create_task(run())
    await started.wait()
    return task


# -- pages and offsets ---------------------------------------------------------------------------------


async def test_append_read_ack_round_trip(spool: Spool) -> None:
    """A page comes back to its consumer exactly as appended, and is gone once acknowledged."""
    await spool.set_consumers({"siem": {"demo/alerts/dlp"}})
    records = records_of(0, 250)
    seq = await append(spool, "demo/alerts/dlp", records, MARK)
    page = await spool.next_page("siem", timeout=0)
    assert page is not None
    assert (page.seq, page.stream, page.records, page.first_id, page.last_id, page.start) == (
        seq,
        "demo/alerts/dlp",
        records,
        "p0-r0",
        "p0-r249",
        0,
    )
    await spool.ack("siem", seq)
    assert await spool.next_page("siem", timeout=0) is None
    assert (await spool.stats())["pages"] == 0
    assert spool.used_bytes == 0


async def test_read_only_consumers_of_a_stream_parse_each_frame_once(spool: Spool) -> None:
    """Three read-only consumers of a stream: the first parses each frame, the others take it; then
    it is dropped (nothing kept once every consumer has read it)."""
    await spool.set_consumers({name: {"demo/alerts/dlp"} for name in ("cef", "json", "leef")})
    for name in ("cef", "json", "leef"):
        spool.shares_frames(name)
    records = records_of(0, 2_500)  # three frames
    await append(spool, "demo/alerts/dlp", records, MARK)
    shared = spool.shared_frames
    read = {}
    for name in ("cef", "json", "leef"):
        page = await spool.next_page(name, timeout=0)
        assert page is not None
        read[name] = [record for _, frame in page.frames(read_only=True) for record in frame]
    assert read["cef"] == read["json"] == read["leef"] == records
    assert (shared.misses, shared.hits, len(shared)) == (3, 6, 0)


async def test_a_consumer_that_may_modify_records_parses_its_own(spool: Spool) -> None:
    """Without ``read_only`` a consumer neither takes nor offers shared frames: its records are its own."""
    await spool.set_consumers({"cef": {"demo/alerts/dlp"}, "tickets": {"demo/alerts/dlp"}})
    spool.shares_frames("cef")
    await append(spool, "demo/alerts/dlp", records_of(0, 10), MARK)
    mine = await spool.next_page("tickets", timeout=0)
    theirs = await spool.next_page("cef", timeout=0)
    assert mine is not None and theirs is not None
    [(_, own)] = list(mine.frames())
    own[0]["user"] = "changed"
    [(_, shared)] = list(theirs.frames(read_only=True))
    assert shared[0]["user"] == "user0@example.com"
    assert spool.shared_frames.hits == 0


async def test_frames_are_not_kept_for_a_consumer_that_parses_its_own(spool: Spool) -> None:
    """Two routes and a ticket rule read a stream: a frame is dropped once both routes took it, not
    kept until the limit pushes it out for the rule, which never takes one."""
    await spool.set_consumers({name: {"demo/alerts/dlp"} for name in ("cef", "json", "tickets")})
    spool.shares_frames("cef")
    spool.shares_frames("json")
    assert spool.readers_of("demo/alerts/dlp") == 2
    await append(spool, "demo/alerts/dlp", records_of(0, 2_500), MARK)
    for name in ("cef", "json", "tickets"):
        page = await spool.next_page(name, timeout=0)
        assert page is not None
        frames = page.frames(read_only=name != "tickets")
        assert sum(len(records) for _, records in frames) == 2_500
    shared = spool.shared_frames
    assert (shared.misses, shared.hits, len(shared)) == (3, 3, 0)


async def test_a_consumer_no_longer_subscribed_no_longer_shares_frames(spool: Spool) -> None:
    """A route removed by a reload stops counting among a stream's readers; one added back under the
    same name counts again once it declares itself (as a route does when it runs)."""
    await spool.set_consumers({"cef": {"demo/alerts/dlp"}, "json": {"demo/alerts/dlp"}})
    spool.shares_frames("cef")
    spool.shares_frames("json")
    await spool.set_consumers({"cef": {"demo/alerts/dlp"}})
    await spool.set_consumers({"cef": {"demo/alerts/dlp"}, "json": {"demo/alerts/dlp"}})
    assert spool.readers_of("demo/alerts/dlp") == 1
    spool.shares_frames("json")
    assert spool.readers_of("demo/alerts/dlp") == 2


async def test_a_lagging_consumer_parses_what_was_dropped_for_it(spool: Spool) -> None:
    """Frames wait for a slow consumer only up to the limit: past it the oldest go, and the slow one
    parses them itself (the same records), so it never holds memory for the others."""
    await spool.set_consumers({"fast": {"demo/alerts/dlp"}, "slow": {"demo/alerts/dlp"}})
    spool.shares_frames("fast")
    spool.shares_frames("slow")
    shared = spool.shared_frames
    pages = shared.limit + 2  # one frame each
    for number in range(pages):
        await append(spool, "demo/alerts/dlp", records_of(number, 5), MARK)
    after = None
    for _ in range(pages):
        page = await spool.next_page("fast", timeout=0, after=after)
        assert page is not None
        list(page.frames(read_only=True))
        after = page.seq
    assert len(shared) == shared.limit
    after, slow = None, []
    for _ in range(pages):
        page = await spool.next_page("slow", timeout=0, after=after)
        assert page is not None
        slow.extend(record for _, frame in page.frames(read_only=True) for record in frame)
        after = page.seq
    assert slow == [record for number in range(pages) for record in records_of(number, 5)]
    assert (shared.hits, len(shared)) == (shared.limit, 0)


async def test_empty_page_is_not_appended(spool: Spool) -> None:
    """Appending no records is refused: empty answers go through mark_empty_page."""
    with pytest.raises(ValueError, match="mark_empty_page"):
        await append(spool, "s", [], MARK)


async def test_pages_are_read_in_global_order_across_streams(spool: Spool) -> None:
    """A consumer of several streams reads their pages in the order they were appended."""
    await spool.set_consumers({"c": {"a", "b"}})
    appended = [await append(spool, stream, records_of(n, 3), MARK) for n, stream in enumerate("abab")]
    read = []
    for _ in appended:
        page = await spool.next_page("c", timeout=0)
        assert page is not None
        read.append((page.seq, page.stream))
        await spool.ack("c", page.seq)
    assert read == list(zip(appended, "abab", strict=True))


async def test_consumer_reads_only_its_streams(spool: Spool) -> None:
    """Pages of a stream a consumer does not subscribe to are invisible to it."""
    await spool.set_consumers({"c": {"a"}, "other": {"b"}})
    await append(spool, "b", records_of(0, 1), MARK)
    wanted = await append(spool, "a", records_of(1, 1), MARK)
    page = await spool.next_page("c", timeout=0)
    assert page is not None
    assert page.seq == wanted


async def test_unacknowledged_page_is_returned_again(spool: Spool) -> None:
    """Asking again without acknowledging returns the same page (retry after a failed shipment)."""
    await spool.set_consumers({"c": {"s"}})
    seq = await append(spool, "s", records_of(0, 5), MARK)
    await append(spool, "s", records_of(1, 5), MARK)
    first = await spool.next_page("c", timeout=0)
    again = await spool.next_page("c", timeout=0)
    assert first is not None
    assert again is not None
    assert first.seq == again.seq == seq


async def test_after_reads_ahead_without_acknowledging(spool: Spool) -> None:
    """``after`` returns the next page past one the consumer already holds."""
    await spool.set_consumers({"c": {"s"}})
    first = await append(spool, "s", records_of(0, 5), MARK)
    second = await append(spool, "s", records_of(1, 5), MARK)
    page = await spool.next_page("c", timeout=0, after=first)
    assert page is not None
    assert page.seq == second
    assert await spool.next_page("c", timeout=0, after=second) is None


async def test_two_consumers_have_independent_offsets(spool: Spool) -> None:
    """Each consumer acknowledges on its own; the page is deleted only after both have."""
    await spool.set_consumers({"siem": {"s"}, "lake": {"s"}})
    seq = await append(spool, "s", records_of(0, 10), MARK)
    await spool.ack("siem", seq)
    assert await spool.next_page("siem", timeout=0) is None
    page = await spool.next_page("lake", timeout=0)
    assert page is not None
    assert page.seq == seq
    assert (await spool.stats())["pages"] == 1
    await spool.ack("lake", seq)
    assert (await spool.stats())["pages"] == 0


async def test_partial_ack_resumes_at_position_after_reopen(db_path: Path) -> None:
    """A half-shipped page is read again after a restart starting at the acknowledged position."""
    store, spool = await reopened(db_path)
    async with store:
        await spool.set_consumers({"c": {"s"}})
        seq = await append(spool, "s", records_of(0, 10_000), MARK)
        await spool.ack("c", seq, 4_000)
    store, spool = await reopened(db_path)
    async with store:
        page = await spool.next_page("c", timeout=0)
    assert page is not None
    assert (page.seq, page.start, page.count) == (seq, 4_000, 10_000)
    assert page.unread[0]["_id"] == "p0-r4000"


async def test_ack_never_moves_an_offset_back(spool: Spool) -> None:
    """A late partial acknowledgement of a page already fully acknowledged changes nothing."""
    await spool.set_consumers({"c": {"s"}, "slow": {"s"}})
    seq = await append(spool, "s", records_of(0, 10), MARK)
    await spool.ack("c", seq)
    await spool.ack("c", seq)
    await spool.ack("c", seq, 3)
    assert await spool.next_page("c", timeout=0) is None


async def test_ack_past_the_last_record_is_a_whole_ack(spool: Spool) -> None:
    """Acknowledging position == count acknowledges the whole page."""
    await spool.set_consumers({"c": {"s"}})
    seq = await append(spool, "s", records_of(0, 10), MARK)
    await spool.ack("c", seq, 10)
    assert await spool.next_page("c", timeout=0) is None
    assert (await spool.stats())["pages"] == 0


async def test_acks_are_cumulative_within_a_stream(spool: Spool) -> None:
    """Acknowledging a later page, even partly, also releases the older pages of its stream."""
    await spool.set_consumers({"c": {"s"}})
    await append(spool, "s", records_of(0, 10), MARK)
    later = await append(spool, "s", records_of(1, 10), MARK)
    await spool.ack("c", later, 5)
    page = await spool.next_page("c", timeout=0)
    assert page is not None
    assert (page.seq, page.start) == (later, 5)
    assert (await spool.stats())["pages"] == 1


async def test_unknown_consumer_is_refused(spool: Spool) -> None:
    """Reading or acknowledging as a consumer that was never registered raises ValueError."""
    await spool.set_consumers({"c": {"s"}})
    with pytest.raises(ValueError, match="not registered"):
        await spool.next_page("ghost", timeout=0)
    with pytest.raises(ValueError, match="not registered"):
        await spool.ack("ghost", 1)


async def test_next_page_returns_none_after_timeout(spool: Spool) -> None:
    """With nothing to read, next_page gives up after its timeout and returns None."""
    await spool.set_consumers({"c": {"s"}})
    assert await spool.next_page("c", timeout=0.01) is None


async def test_waiting_reader_wakes_on_append(spool: Spool) -> None:
    """A consumer waiting for a page receives it as soon as it is appended."""
    await spool.set_consumers({"c": {"s"}})
    reader = await blocked_task(lambda: spool.next_page("c"))
    # Our own read queues behind the reader's on the store lock; once it answers, the reader
    # has found nothing and is parked on the condition.
    assert await spool.next_page("c", timeout=0) is None
    assert not reader.done()
    seq = await append(spool, "s", records_of(0, 3), MARK)
    page = await reader
    assert page.seq == seq


# -- set_consumers ------------------------------------------------------------------------------------


async def test_first_consumer_of_a_stream_reads_from_the_beginning(spool: Spool) -> None:
    """Pages committed before a stream ever had a consumer are kept for, and read by, the first one."""
    seq = await append(spool, "s", records_of(0, 3), MARK)
    await spool.set_consumers({"c": {"s"}})
    page = await spool.next_page("c", timeout=0)
    assert page is not None
    assert page.seq == seq


async def test_new_consumer_of_a_consumed_stream_starts_at_the_end(spool: Spool) -> None:
    """A consumer added to a stream that already has one sees only pages appended after it joined."""
    await spool.set_consumers({"old": {"s"}})
    backlog = await append(spool, "s", records_of(0, 3), MARK)
    await spool.set_consumers({"old": {"s"}, "new": {"s"}})
    assert await spool.next_page("new", timeout=0) is None
    fresh = await append(spool, "s", records_of(1, 3), MARK)
    new_page = await spool.next_page("new", timeout=0)
    old_page = await spool.next_page("old", timeout=0)
    assert new_page is not None
    assert old_page is not None
    assert (new_page.seq, old_page.seq) == (fresh, backlog)


async def test_removed_consumer_no_longer_holds_pages(spool: Spool) -> None:
    """Removing a consumer deletes its offsets and collects the pages only it still needed."""
    await spool.set_consumers({"keep": {"s"}, "gone": {"s"}})
    seq = await append(spool, "s", records_of(0, 3), MARK)
    await spool.ack("keep", seq)
    assert (await spool.stats())["pages"] == 1
    await spool.set_consumers({"keep": {"s"}})
    assert (await spool.stats())["pages"] == 0
    with pytest.raises(ValueError, match="not registered"):
        await spool.next_page("gone", timeout=0)


async def test_readded_consumer_starts_at_the_end(spool: Spool) -> None:
    """A consumer removed and added again does not replay what was appended before it came back."""
    await spool.set_consumers({"a": {"s"}, "b": {"s"}})
    await spool.set_consumers({"a": {"s"}})
    await append(spool, "s", records_of(0, 3), MARK)
    await spool.set_consumers({"a": {"s"}, "b": {"s"}})
    assert await spool.next_page("b", timeout=0) is None


async def test_subscriptions_survive_reopen(db_path: Path) -> None:
    """Consumers and their offsets are restored by load() without calling set_consumers again."""
    store, spool = await reopened(db_path)
    async with store:
        await spool.set_consumers({"c": {"s"}})
        first = await append(spool, "s", records_of(0, 3), MARK)
        second = await append(spool, "s", records_of(1, 3), MARK)
        await spool.ack("c", first)
    store, spool = await reopened(db_path)
    async with store:
        page = await spool.next_page("c", timeout=0)
    assert page is not None
    assert page.seq == second


@asynccontextmanager
async def two_nodes(url: str) -> AsyncIterator[tuple[Spool, Spool]]:
    """Two spools (two nodes) on the one PostgreSQL database ``url``."""
    async with (
        await open_url(url, SPOOL_MIGRATIONS) as first_store,
        await open_url(url, SPOOL_MIGRATIONS) as second_store,
    ):
        first, second = Spool(first_store, max_bytes=1 << 30), Spool(second_store, max_bytes=1 << 30)
        await first.load()
        await second.load()
        yield first, second


async def test_a_node_never_deletes_offsets_it_never_subscribed(postgres_url: str) -> None:
    """Nodes whose pipelines differ (a rolling update) keep each other's consumers and their pages."""
    async with two_nodes(postgres_url) as (old, new):
        await old.set_consumers({"kept": {"s"}, "dropped": {"s"}})
        seq = await append(old, "s", records_of(0, 3), MARK)
        await new.set_consumers({"kept": {"s"}})
        page = await old.next_page("dropped", timeout=0)
        assert page is not None and page.seq == seq
        await old.ack("dropped", seq)
        assert await old.next_page("dropped", timeout=0) is None
        assert (await old.stats())["consumers"]["dropped"]["pages"] == 0


async def test_a_node_prunes_only_its_own_previous_consumers(postgres_url: str) -> None:
    """A consumer a node subscribed and no longer lists is deleted; another node's stays."""
    async with two_nodes(postgres_url) as (first, second):
        await first.set_consumers({"a": {"s"}})
        await second.set_consumers({"b": {"s"}})
        await second.set_consumers({"c": {"s"}})
        assert set((await first.stats())["consumers"]) == {"a", "c"}


async def test_a_deleted_offset_is_restored_where_its_consumer_stood(postgres_url: str) -> None:
    """An offset another process deleted is put back at the consumer's last position, not left stalled."""
    with capture_logs() as logs:
        await deleted_offsets_are_restored(postgres_url)
    assert [entry["event"] for entry in logs].count("spool.offset_restored") == 2


async def deleted_offsets_are_restored(postgres_url: str) -> None:
    """Delete a consumer's offset from another node, then read and acknowledge as if nothing happened."""
    async with two_nodes(postgres_url) as (node, other):
        await node.set_consumers({"c": {"s"}, "keeper": {"s"}})
        first = await append(node, "s", records_of(0, 3), MARK)
        await node.ack("c", first)
        await other.set_consumers({"c": {"s"}})
        await other.set_consumers({})  # deletes c's offset: it was other's consumer too
        second = await append(node, "s", records_of(1, 3), MARK)
        page = await node.next_page("c", timeout=0)
        assert page is not None and page.seq == second
        await other.set_consumers({"c": {"s"}})
        await other.set_consumers({})
        await node.ack("c", second)  # lands, although the row was gone
        third = await append(node, "s", records_of(2, 3), MARK)
        page = await node.next_page("c", timeout=0)
        assert page is not None and page.seq == third


# -- byte cap -----------------------------------------------------------------------------------------


async def test_wait_for_space_returns_at_once_when_not_full(spool: Spool) -> None:
    """A spool under its cap lets pollers through immediately."""
    assert not spool.full
    await spool.wait_for_space()


async def test_wait_for_space_blocks_while_full_until_an_ack(store: Store) -> None:
    """A poller waiting for space is released when an acknowledgement frees the pages."""
    spool = Spool(store, max_bytes=1)
    await spool.load()
    await spool.set_consumers({"c": {"s"}})
    seq = await append(spool, "s", records_of(0, 100), MARK)
    assert spool.full
    poller = await blocked_task(spool.wait_for_space)
    assert not poller.done()
    await spool.ack("c", seq)
    await poller
    assert not spool.full


async def test_page_larger_than_the_cap_is_accepted_when_empty(store: Store) -> None:
    """A single page bigger than the whole cap is still committed; the spool is then full."""
    spool = Spool(store, max_bytes=10)
    await spool.load()
    await append(spool, "s", records_of(0, 1_000), MARK)
    assert spool.used_bytes > spool.max_bytes
    assert spool.full


async def test_used_bytes_restored_by_load(db_path: Path) -> None:
    """The byte count, hence fullness, is the same after a restart."""
    store, spool = await reopened(db_path, max_bytes=1)
    async with store:
        await append(spool, "s", records_of(0, 100), MARK)
        used = spool.used_bytes
    store, spool = await reopened(db_path, max_bytes=1)
    async with store:
        assert (spool.used_bytes, spool.full) == (used, True)


# -- iterator state ------------------------------------------------------------------------------------


async def test_iterator_state_is_none_for_a_new_stream(spool: Spool) -> None:
    """A stream no poller has recorded anything for has no iterator state."""
    assert await checkpoints(spool).state("demo/alerts/dlp") is None


async def test_index_name_is_persisted(db_path: Path) -> None:
    """The iterator index name survives a restart and starts with no intent and no first pull."""
    store, spool = await reopened(db_path)
    async with store:
        await checkpoints(spool).set_index("s", "demo_dlp_ce")
    store, spool = await reopened(db_path)
    async with store:
        state = await checkpoints(spool).state("s")
    assert state is not None
    assert (state.index, state.pending, state.first_pull_done, state.count) == (
        "demo_dlp_ce",
        "none",
        False,
        0,
    )


async def test_append_clears_intent_and_records_the_marker(spool: Spool) -> None:
    """Committing a page sets pending back to none and stores its marker, hwm and progress."""
    await checkpoints(spool).set_index("s", "idx")
    await checkpoints(spool).record_intent("s", "next")
    pending = await checkpoints(spool).state("s")
    assert pending is not None
    assert pending.pending == "next"
    records = records_of(0, 20)
    await append(spool, "s", records, IteratorMark(timestamp_hwm=1_732_700_000, progress={"pages": 1}))
    state = await checkpoints(spool).state("s")
    assert state is not None
    assert (state.index, state.pending, state.first_pull_done) == ("idx", "none", True)
    assert (state.first_id, state.last_id, state.count) == page_marker(records)
    assert (state.timestamp_hwm, state.progress) == (1_732_700_000, {"pages": 1})


async def test_intent_survives_a_restart_without_a_page(db_path: Path) -> None:
    """An intent recorded but never followed by a commit is still there after a restart."""
    store, spool = await reopened(db_path)
    async with store:
        committed = records_of(0, 5)
        await append(spool, "s", committed, MARK)
        await checkpoints(spool).record_intent("s", "next")
    store, spool = await reopened(db_path)
    async with store:
        state = await checkpoints(spool).state("s")
    assert state is not None
    assert state.pending == "next"
    assert (state.first_id, state.last_id, state.count) == page_marker(committed)


async def test_page_and_iterator_commit_together(spool: Spool, store: Store) -> None:
    """If recording the iterator state fails, the page is not committed either."""
    await spool.set_consumers({"c": {"s"}})
    await checkpoints(spool).record_intent("s", "next")
    poisoned = [{"_id": "first"}, {"_id": "poison"}]

    async def refused(tx: Transaction) -> None:
        await checkpoints(spool).page_commit("s", poisoned, MARK)(tx)
        raise RuntimeError("poisoned marker")

    with pytest.raises(RuntimeError, match="poisoned marker"):
        await spool.append("s", poisoned, commit=refused)
    state = await checkpoints(spool).state("s")
    assert state is not None
    assert (state.pending, state.count) == ("next", 0)
    assert (await spool.stats())["pages"] == 0
    assert spool.used_bytes == 0
    assert await spool.next_page("c", timeout=0) is None


async def test_is_committed_recognises_a_resent_page(spool: Spool) -> None:
    """The last committed page is recognised by its marker; another page or an empty one is not."""
    committed = records_of(0, 50)
    await append(spool, "s", committed, MARK)
    state = await checkpoints(spool).state("s")
    assert state is not None
    assert state.is_committed(*page_marker(committed))
    assert not state.is_committed(*page_marker(records_of(1, 50)))
    assert not state.is_committed(*page_marker(committed[:-1]))
    assert not state.is_committed(*page_marker([]))


async def test_is_committed_treats_missing_ids_alike(spool: Spool) -> None:
    """A page without ``_id`` matches whether the caller spells the missing id None or ""."""
    await append(spool, "s", [{"timestamp": 1}, {"timestamp": 2}], MARK)
    state = await checkpoints(spool).state("s")
    assert state is not None
    assert state.is_committed("", "", 2)
    assert state.is_committed(None, None, 2)


async def test_second_iterator_of_a_stream_keeps_its_own_state(spool: Spool) -> None:
    """A look-back iterator appends to the stream but records its marker under its own key."""
    await spool.set_consumers({"c": {"s"}})
    live = records_of(0, 3)
    history = records_of(1, 4)
    await append(spool, "s", live, MARK)
    await checkpoints(spool).record_intent("s#history", "next")
    seq = await append(spool, "s", history, IteratorMark(progress={"done": False}), key="s#history")
    live_state = await checkpoints(spool).state("s")
    history_state = await checkpoints(spool).state("s#history")
    assert live_state is not None
    assert history_state is not None
    assert (live_state.first_id, live_state.last_id, live_state.count) == page_marker(live)
    assert (history_state.pending, history_state.progress) == ("none", {"done": False})
    assert (history_state.first_id, history_state.last_id, history_state.count) == page_marker(history)
    page = await spool.next_page("c", timeout=0, after=seq - 1)
    assert page is not None
    assert (page.seq, page.stream) == (seq, "s")


async def test_mark_empty_page_clears_intent_and_keeps_marker(spool: Spool) -> None:
    """An empty answer clears the intent, updates hwm, and leaves the last page marker alone."""
    committed = records_of(0, 5)
    await append(spool, "s", committed, IteratorMark(timestamp_hwm=100, progress={"pages": 1}))
    await checkpoints(spool).record_intent("s", "next")
    await checkpoints(spool).mark_empty_page("s", 200)
    state = await checkpoints(spool).state("s")
    assert state is not None
    assert (state.pending, state.timestamp_hwm, state.progress) == ("none", 200, {"pages": 1})
    assert (state.first_id, state.last_id, state.count) == page_marker(committed)
    assert (await spool.stats())["pages"] == 1


async def test_empty_first_answer_completes_the_first_pull(spool: Spool) -> None:
    """An empty answer to the first pull still marks the first pull done."""
    await checkpoints(spool).set_index("s", "idx")
    await checkpoints(spool).mark_empty_page("s", None)
    state = await checkpoints(spool).state("s")
    assert state is not None
    assert state.first_pull_done
    assert state.timestamp_hwm is None


# -- stats and damage ----------------------------------------------------------------------------------


async def test_stats_report_backlog_and_consumer_lag(spool: Spool) -> None:
    """stats() counts pages, records and bytes per stream and each consumer's unread records."""
    await spool.set_consumers({"fast": {"a"}, "slow": {"a", "b"}})
    first = await append(spool, "a", records_of(0, 10), MARK)
    await append(spool, "a", records_of(1, 20), MARK)
    await append(spool, "b", records_of(2, 5), MARK)
    await spool.ack("fast", first)
    await spool.ack("slow", first, 4)
    stats = await spool.stats()
    assert (stats["pages"], stats["records"], stats["bytes"]) == (3, 35, spool.used_bytes)
    assert {s: (v["pages"], v["records"]) for s, v in stats["streams"].items()} == {"a": (2, 30), "b": (1, 5)}
    assert stats["consumers"]["fast"]["streams"] == {"a": {"pages": 1, "records": 20}}
    assert (stats["consumers"]["slow"]["pages"], stats["consumers"]["slow"]["records"]) == (3, 6 + 20 + 5)


async def test_damaged_page_raises_spool_corrupt_error(spool: Spool, store: Store) -> None:
    """A page whose stored body was damaged raises SpoolCorruptError naming it, not a zlib error, when
    it is read."""
    await spool.set_consumers({"c": {"s"}})
    seq = await append(spool, "s", records_of(0, 10), MARK)
    async with store.transaction() as tx:
        await tx.execute("UPDATE spool_pages SET body = substr(body, 1, 20) WHERE seq = :seq", {"seq": seq})
    page = await spool.next_page("c", timeout=0)
    assert page is not None
    with pytest.raises(SpoolCorruptError, match=f"spool page {seq}"):
        list(page.frames())


async def test_a_flipped_bit_anywhere_in_a_stored_page_raises_spool_corrupt_error(
    spool: Spool, store: Store
) -> None:
    """LZ4's block checksums catch damage inside a frame, not only a page cut short."""
    await spool.set_consumers({"c": {"s"}})
    seq = await append(spool, "s", records_of(0, 2_500), MARK)
    async with store.read() as tx:
        body = bytes(await tx.fetchval("SELECT body FROM spool_pages WHERE seq = :seq", {"seq": seq}))
    for position in range(0, len(body), max(1, len(body) // 40)):
        damaged = bytearray(body)
        damaged[position] ^= 0x10
        with pytest.raises(SpoolCorruptError, match=f"spool page {seq}"):
            decode(seq, CODEC, bytes(damaged))


def test_a_page_written_with_content_checksums_is_still_read() -> None:
    """Pages spooled before block checksums (LZ4 content checksums) decode as they did."""
    records = records_of(0, 3)
    body = lz4.frame.compress(orjson.dumps(records), content_checksum=True)
    assert [orjson.loads(chunk) for chunk in decode(1, CODEC, body)] == [records]


async def test_records_appended_as_texts_read_back_as_orjson_reads_the_texts(spool: Spool) -> None:
    """append_texts stores each text as it came, in frames of FRAME_RECORDS, with the given marker."""
    await spool.set_consumers({"c": {"s"}})
    texts = [b'{"_id": "t%d", "v": "caf\\u00e9", "n": 1.50}' % i for i in range(FRAME_RECORDS + 1)]
    seq = await spool.append_texts("s", texts, first_id="t0", last_id=f"t{FRAME_RECORDS}")
    page = await spool.next_page("c", timeout=0)
    assert page is not None
    assert (page.seq, page.count, page.first_id, page.last_id) == (seq, len(texts), "t0", f"t{FRAME_RECORDS}")
    assert [len(records) for _, records in page.frames()] == [FRAME_RECORDS, 1]
    assert page.records == [orjson.loads(text) for text in texts]
    assert page.records[0]["v"] == "café"


async def test_load_is_required(store: Store) -> None:
    """Using a spool before load() is a programming error reported as such."""
    with pytest.raises(RuntimeError, match="load"):
        await Spool(store, max_bytes=1).append("s", records_of(0, 1))


# -- crash safety -------------------------------------------------------------------------------------


async def run_child_until_killed(db_path: Path, stream: str, seed: int, kill_after: float) -> list[list[str]]:
    """Run the crash child, SIGKILL it ``kill_after`` seconds after its first committed page, and
    return every line it printed (one per append that returned)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CRASH_CHILD),
        str(db_path),
        stream,
        str(seed),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stderr is not None
    try:
        first = await child.stdout.readline()
        if not first:
            error = await child.stderr.read()
            pytest.fail(f"crash child exited before committing a page: {error.decode()}")
        # The kill is a timer, not a synchronisation: it lands wherever the child happens to be
        # (intent, encoding, insert, commit, print), which is the point of the test.
        asyncio.get_running_loop().call_later(kill_after, child.send_signal, signal.SIGKILL)
        rest = await child.stdout.read()  # EOF: the child is dead
    except BaseException:
        child.kill()
        raise
    finally:
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    return [line.split() for line in (first + rest).decode().splitlines()]


@pytest.mark.slow
async def test_spool_survives_sigkill_at_random_moments(db_path: Path) -> None:
    """After each SIGKILL every returned append is present and intact, and the marker matches."""
    stream = "demo/events/page"
    rng = random.Random(20241127)
    printed: dict[int, tuple[int, int, str]] = {}
    for round_number in range(6):
        for seq, number, count, digest in await run_child_until_killed(
            db_path, stream, seed=round_number, kill_after=rng.uniform(0, 0.1)
        ):
            printed[int(seq)] = (int(number), int(count), digest)

        store, spool = await reopened(db_path)
        async with store:
            await spool.set_consumers({"verifier": {stream}})
            stored: dict[int, tuple[int, int, str]] = {}
            last_page = None
            after = None
            while (page := await spool.next_page("verifier", timeout=0, after=after)) is not None:
                numbers = {record["page"] for record in page.records}
                assert len(numbers) == 1, f"page {page.seq} mixes records of pages {numbers}"
                digest = hashlib.sha256(orjson.dumps(page.records)).hexdigest()
                stored[page.seq] = (numbers.pop(), page.count, digest)
                last_page, after = page, page.seq
            state = await checkpoints(spool).state(stream)

        assert {seq: stored.get(seq) for seq in printed} == printed, f"round {round_number}: lost or damaged"
        assert sorted(number for number, _, _ in stored.values()) == list(range(len(stored)))
        assert last_page is not None
        assert state is not None
        assert (state.first_id, state.last_id, state.count) == page_marker(last_page.records)
        assert state.progress == {"pages": len(stored)}


async def test_resize_releases_waiting_pollers(tmp_path: Path) -> None:
    """Raising the byte cap on reload lets a poller waiting for space go on at once."""
    async with await open_test_store(tmp_path / "state.db", SPOOL_MIGRATIONS) as store:
        spool = Spool(store, max_bytes=1)
        await spool.load()
        await spool.set_consumers({"c": {"t/alerts/dlp"}})
        await append(spool, "t/alerts/dlp", [{"_id": "1", "timestamp": 1}], IteratorMark())
        assert spool.full
        waiter = asyncio.create_task(spool.wait_for_space())
        await asyncio.sleep(0)
        assert not waiter.done()
        spool.resize(10_000_000)
        async with asyncio.timeout(5):
            await waiter
        assert not spool.full
