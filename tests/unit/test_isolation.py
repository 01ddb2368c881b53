"""Isolation planning, driven directly: which records fail, what goes out next."""

from __future__ import annotations

from producers.contract import key_digest, validate_lead
from worker.core.batching import BatchRecord
from worker.core.isolation import (
    carrying,
    guilty_entries,
    isolation_budget,
    named_in,
    peel_newest,
    split_after_fault,
)
from worker.marketo.soap.response import unknown_field_names


def record(n: int, **attributes: str) -> BatchRecord:
    lead = validate_lead(email=f"p{n}@x.com", attributes=attributes or None)
    return BatchRecord(key_digest(lead.key), lead, (f"{n}-0",))


def test_the_field_names_of_a_20105_message_are_read_as_marketo_writes_them() -> None:
    message = (
        "syncMultipleLeads operation failed: unknown fields for import: Pants, shoeSize (20105)"
    )
    assert unknown_field_names(message) == ("Pants", "shoeSize")
    assert unknown_field_names("unknown field for import: x") == ("x",)
    assert unknown_field_names("Lead Attribute Bad") == ()


def test_records_carrying_a_named_field_fail_at_once_and_the_rest_go_out_together() -> None:
    records = [record(0, FirstName="A"), record(1, PANTS="x"), record(2), record(3, pants="y")]
    split = split_after_fault(records, frozenset({"pants"}))
    assert split.failed == (records[1], records[3])
    assert split.next_calls == ((records[0], records[2]),)


def test_a_fault_naming_no_carried_field_splits_the_batch_in_halves() -> None:
    records = [record(n) for n in range(5)]
    split = split_after_fault(records, frozenset({"other"}))
    assert split.failed == ()
    assert split.next_calls == (tuple(records[:2]), tuple(records[2:]))
    alone = split_after_fault(records[:1], frozenset())
    assert alone.failed == (records[0],)
    assert alone.next_calls == ()


def test_every_record_carrying_the_field_leaves_nothing_to_send() -> None:
    records = [record(n, NewField="x") for n in range(300)]
    split = split_after_fault(records, frozenset({"newfield"}))
    assert len(split.failed) == 300
    assert split.next_calls == ()
    assert carrying(records[:1], frozenset()) == []


def test_the_isolation_budget_grows_with_the_logarithm_of_the_batch() -> None:
    assert isolation_budget(1) == 6
    assert isolation_budget(300) == 2 * 9 + 4
    assert isolation_budget(300) < 300 // 10


def test_a_field_list_that_cannot_be_split_is_searched_for_the_batchs_own_names() -> None:
    names = ["Pants", "my field", "Shoes", "Size"]
    assert named_in("[Pants] [my field] and SHOES", names) == {"pants", "my field", "shoes"}
    assert named_in("PantsSize", names) == frozenset(), "whole words only"


def test_quoted_names_are_read_without_their_quotes() -> None:
    assert unknown_field_names("unknown fields for import: 'Pants', \"Shirt\" (20105)") == (
        "Pants",
        "Shirt",
    )
    assert unknown_field_names("UNKNOWN FIELDS FOR IMPORT: x") == ("x",)


def test_of_a_failed_merged_record_only_the_writes_that_set_a_named_field_are_guilty() -> None:
    older = validate_lead(email="ann@x.com", attributes={"Company": "Acme", "City": "Paris"})
    newer = validate_lead(email="ann@x.com", attributes={"SHOE": "x"})
    merged = BatchRecord(key_digest(older.key), newer, ("1-0", "2-0"))
    writes = {(merged.key_hash, "1-0"): older, (merged.key_hash, "2-0"): newer}
    assert guilty_entries(merged, frozenset({"shoe"}), writes) == ("2-0",)
    # Another shard's entry with the same id is another write.
    assert guilty_entries(merged, frozenset({"shoe"}), {("other", "2-0"): newer}) == (
        "1-0",
        "2-0",
    )
    # Bisection proved the merged record bad as a whole, or the writes are not known:
    # every write is guilty.
    assert guilty_entries(merged, frozenset(), writes) == ("1-0", "2-0")
    assert guilty_entries(merged, frozenset({"shoe"}), {}) == ("1-0", "2-0")


def test_a_merged_record_faulting_alone_sends_its_oldest_write_alone_next() -> None:
    older = validate_lead(email="ann@x.com", attributes={"Company": "Acme"})
    newer = validate_lead(email="ann@x.com", attributes={"City": "Paris"})
    merged = BatchRecord(key_digest(older.key), newer, ("1-0", "2-0"))
    writes = {(merged.key_hash, "1-0"): older, (merged.key_hash, "2-0"): newer}
    split = split_after_fault([merged], frozenset(), writes=writes)
    assert split.failed == ()
    ((alone,),) = split.next_calls
    assert (alone.entry_ids, alone.lead) == (("1-0",), older)
    # Without the writes, or with one write, a record faulting alone is proven bad.
    assert split_after_fault([merged], frozenset()).failed == (merged,)


def test_a_failed_merged_record_goes_on_without_its_newest_write_never_as_an_older_alone() -> None:
    """Writes 1 and 2 may be in Marketo already (a call whose answer was lost): sending
    write 1 alone would put its older value over write 2's. The prefix 1+2 never does."""
    w1 = validate_lead(email="ann@x.com", attributes={"Company": "Old", "City": "Paris"})
    w2 = validate_lead(email="ann@x.com", attributes={"Company": "New"})
    w3 = validate_lead(email="ann@x.com", attributes={"Shoe": "x"})
    key = key_digest(w1.key)
    merged = BatchRecord(key, w3, ("1-0", "2-0", "3-0"))
    writes = {(key, "1-0"): w1, (key, "2-0"): w2, (key, "3-0"): w3}
    rest = peel_newest(merged, writes)
    assert rest is not None
    assert rest.entry_ids == ("1-0", "2-0")
    assert rest.lead.attributes == {"Company": "New", "City": "Paris"}
    assert peel_newest(BatchRecord(key, w1, ("1-0",)), writes) is None
