"""Batching: merge per lead key, last write wins, dedup=false apart, never over the cap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.contract import key_digest, validate_lead
from worker.core.batching import QueuedLead, chunk, coalesce, entry_order, plan_batches


def queued(n: int, email: str, dedup: bool = True, **attributes: str) -> QueuedLead:
    lead = validate_lead(email=email, attributes=attributes, dedup=dedup)
    return QueuedLead(f"1000-{n}", key_digest(lead.key), lead)


def test_entries_of_one_lead_merge_and_the_last_write_wins_per_attribute() -> None:
    records = coalesce(
        [
            queued(1, "a@x.com", Company="Old", Phone="1"),
            queued(2, "b@x.com", Company="B"),
            queued(3, "A@X.com", Company="New"),
        ]
    )
    assert [r.entry_ids for r in records] == [("1000-1", "1000-3"), ("1000-2",)]
    assert dict(records[0].lead.attributes) == {"Company": "New", "Phone": "1"}


def test_merging_follows_stream_order_not_arrival_order() -> None:
    records = coalesce(
        [queued(10, "a@x.com", Company="Newer"), queued(9, "a@x.com", Company="Older")]
    )
    assert dict(records[0].lead.attributes) == {"Company": "Newer"}
    assert records[0].entry_ids == ("1000-9", "1000-10")


def test_dedup_false_entries_are_never_merged_and_travel_apart() -> None:
    entries = [
        queued(1, "a@x.com"),
        queued(2, "a@x.com", dedup=False),
        queued(3, "a@x.com", dedup=False),
    ]
    batches = plan_batches(entries, 300)
    by_dedup = {b.dedup: b for b in batches}
    assert len(by_dedup[True].records) == 1
    assert len(by_dedup[False].records) == 2


def test_no_batch_exceeds_the_cap_and_backlogs_fill_batches() -> None:
    entries = [queued(i, f"p{i}@x.com") for i in range(1, 701)]
    batches = plan_batches(entries, 300)
    assert [len(b) for b in batches] == [300, 300, 100]


def test_chunk_rejects_a_zero_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        chunk([], 0)


def test_stream_ids_sort_numerically() -> None:
    assert sorted(["2-0", "10-0", "10-2", "10-10"], key=entry_order) == [
        "2-0",
        "10-0",
        "10-2",
        "10-10",
    ]


@given(
    st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=1, max_size=400),
    st.integers(1, 300),
)
def test_every_entry_lands_in_exactly_one_batch_within_the_cap(
    people: list[tuple[int, bool]], batch_size: int
) -> None:
    entries = [
        queued(i + 1, f"p{person}@x.com", dedup=dedup) for i, (person, dedup) in enumerate(people)
    ]
    batches = plan_batches(entries, batch_size)
    seen = [entry_id for b in batches for entry_id in b.entry_ids]
    assert sorted(seen) == sorted(e.entry_id for e in entries)
    assert all(0 < len(b) <= batch_size for b in batches)
    for batch in batches:
        keys = [r.key_hash for r in batch.records if r.lead.dedup]
        assert len(keys) == len(set(keys))
