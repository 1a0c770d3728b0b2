"""OutBatch: a route's batch as one list per field, and a ``Sequence[OutRecord]`` to any sink."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.plugin import OutBatch, OutRecord

out_records = st.builds(
    OutRecord,
    st.text(max_size=5),
    st.integers(0, 2**40),
    st.binary(max_size=10),
    st.sampled_from(["alerts", "events"]),
    st.sampled_from(["dlp", "page"]),
    st.sampled_from(["cef", "leef", "json"]),
)


@given(st.lists(out_records, max_size=8), st.integers(-10, 10), st.integers(-10, 10))
def test_a_batch_reads_as_the_list_of_its_records(records: list[OutRecord], start: int, stop: int) -> None:
    """Length, items (negative too), slices, iteration, equality: those of the list it was made of."""
    batch = OutBatch.of(records)
    assert isinstance(batch, Sequence)
    assert len(batch) == len(records)
    assert list(batch) == records
    assert batch == records
    assert [batch[i] for i in range(-len(records), len(records))] == records + records
    assert list(batch[start:stop]) == records[start:stop]
    assert isinstance(batch[start:stop], OutBatch)
    assert batch.data == [r.data for r in records]
    assert batch.timestamps == [r.timestamp for r in records]
    assert OutBatch.of(batch) is batch
    grown = OutBatch()
    for record in records:
        grown.append(record)
    assert grown == batch
    if records:
        with pytest.raises(IndexError):
            batch[len(records)]


def test_every_field_needs_one_value_per_record() -> None:
    """Lists of different lengths are refused when the batch is made."""
    with pytest.raises(ValueError, match="one value per record"):
        OutBatch(["a"], [1], [b"x"], ["alerts"], ["dlp"], [])


def test_a_batch_made_of_nothing_grows_each_field_on_its_own() -> None:
    """An empty batch (of an empty list, or new) holds six separate lists: a record added shows once."""
    record = OutRecord("a", 1, b"x", "alerts", "dlp", "cef")
    for batch in (OutBatch.of([]), OutBatch()):
        batch.append(record)
        assert list(batch) == [record]
        assert batch.ids == ["a"] and batch.data == [b"x"]
