"""The stored form of an outcome (``Outcome.pack`` / ``unpack``) and where it lives
(``Keys.outcome_slot``): pure, no Redis."""

from __future__ import annotations

import pytest

from producers.contract import Keys, Outcome, OutcomeStatus
from producers.keys import OUTCOME_BUCKET_MS

RID = "3-1764660000000-2"
ENQUEUED = 1764660000.0


@pytest.mark.parametrize(
    ("outcome", "packed"),
    [
        (
            Outcome(RID, OutcomeStatus.CREATED, lead_id=10000001, attempts=1, finished_at=ENQUEUED + 2.345),
            "C1,10000001,2345",
        ),
        (Outcome(RID, OutcomeStatus.UPDATED, lead_id=7, attempts=2), "U2,7"),
        (Outcome(RID, OutcomeStatus.PENDING), "P0"),
        (
            Outcome(RID, OutcomeStatus.FAILED, error="bad, very bad", error_code="1003", attempts=3),
            "F3,,,1003,bad, very bad",
        ),
        (Outcome(RID, OutcomeStatus.FAILED, error="", attempts=1), "F1,,,,"),
        (
            Outcome(RID, OutcomeStatus.DEAD_LETTERED, error_code="MAX_ATTEMPTS", attempts=5, finished_at=ENQUEUED - 0.001),
            "D5,,-1,MAX_ATTEMPTS",
        ),
    ],
)  # fmt: skip
def test_an_outcome_packs_into_a_short_value_and_reads_back_the_same(
    outcome: Outcome, packed: str
) -> None:
    assert outcome.pack() == packed
    back = Outcome.unpack(RID, packed.encode())
    assert back == Outcome(
        RID,
        outcome.status,
        lead_id=outcome.lead_id,
        error=outcome.error,
        error_code=outcome.error_code,
        attempts=outcome.attempts,
        enqueued_at=ENQUEUED,  # always the entry's own time
        finished_at=outcome.finished_at,
    )


def test_every_status_has_its_own_first_letter_in_both_stored_forms() -> None:
    """settle.lua and replay.lua compare string.sub(value, 1, 1): the packed value starts
    with the letter and the previous version's status field is the status's name."""
    letters = {Outcome(RID, status).pack()[0]: status for status in OutcomeStatus}
    assert len(letters) == len(OutcomeStatus)
    assert all(status.value[0] == letter for letter, status in letters.items())


def test_a_comma_in_an_error_code_cannot_shift_the_error_text() -> None:
    packed = Outcome(RID, OutcomeStatus.FAILED, error="a,b", error_code="X,Y").pack()
    back = Outcome.unpack(RID, packed)
    assert (back.error_code, back.error) == ("X;Y", "a,b")


def test_times_keep_the_millisecond_as_the_previous_form_did() -> None:
    finished = 1764660012.345
    outcome = Outcome(RID, OutcomeStatus.CREATED, attempts=1, finished_at=finished)
    legacy = Outcome.from_fields(RID, outcome.to_fields())
    assert Outcome.unpack(RID, outcome.pack()).finished_at == legacy.finished_at == finished


def test_the_previous_form_still_reads() -> None:
    fields = {b"status": b"FAILED", b"attempts": b"2", b"error": b"bad", b"error_code": b"1"}
    outcome = Outcome.from_fields(RID, fields)
    assert (outcome.status, outcome.attempts, outcome.error) == (OutcomeStatus.FAILED, 2, "bad")


def test_outcomes_of_one_window_share_a_bucket_and_each_has_its_own_field() -> None:
    keys = Keys("ls")
    start = 1764660000000 - 1764660000000 % OUTCOME_BUCKET_MS
    a = keys.outcome_slot(3, f"{start}-0")
    b = keys.outcome_slot(3, f"{start + OUTCOME_BUCKET_MS - 1}-7")
    c = keys.outcome_slot(3, f"{start + OUTCOME_BUCKET_MS}-0")
    assert a[0] == b[0] == f"ls:{{3}}:outcomes:{start // OUTCOME_BUCKET_MS}"
    assert (a[1], b[1]) == ("0-0", f"{OUTCOME_BUCKET_MS - 1}-7")
    assert c[0] != a[0]
    assert keys.outcome_slot(4, f"{start}-0")[0].startswith("ls:{4}:"), "the shard's hash tag"
