"""The pure parts of ``leadsync backfill``: the journal (parsing, resume point, torn
lines, another input), chunking after the resume point, the rolling delivery tracker,
and the send loop's retries with fakes for Redis and the clock."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from producers import InvalidLead, NotReplicated, Retryable, Ticket
from producers.contract import Outcome, OutcomeStatus
from worker.ops.backfill import (
    HEADER,
    Backfill,
    DeliveryTracker,
    GaveUp,
    Journal,
    JournalError,
    JournalState,
    chunks_after,
    input_fingerprint,
    journal_line,
    read_journal,
)
from worker.ops.ingest import Row, parse_mapping, read_rows

FP = "size=10 head-sha256=ab"


def lines(text: str) -> list[bytes]:
    return io.BytesIO(text.encode()).readlines()


def test_the_resume_point_is_the_last_row_written() -> None:
    text = f"{HEADER} {FP}\n2\t0-1-0\n3\tERROR email: has no @\n5\t1-2-0\n"
    state = read_journal(lines(text))
    assert state == JournalState(FP, last_line=5, ids=2, errors=1, end=len(text))


def test_a_torn_last_line_is_not_counted_and_is_cut_off() -> None:
    whole = f"{HEADER} {FP}\n2\t0-1-0\n"
    state = read_journal(lines(whole + "3\t0-1"))
    assert (state.last_line, state.end) == (2, len(whole))


def test_an_empty_journal_resumes_from_the_start() -> None:
    assert read_journal([]) == JournalState()


def test_the_last_header_names_the_input() -> None:
    state = read_journal(lines(f"{HEADER} old\n2\t0-1-0\n{HEADER} {FP}\n3\t0-2-0\n"))
    assert (state.fingerprint, state.last_line, state.ids) == (FP, 3, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("line,request_id\n1,0-1-0\n", "not a backfill ids file"),
        (f"{HEADER} {FP}\n2 0-1-0\n", "its line 2 is not"),
        (f"{HEADER} {FP}\nx\t0-1-0\n", "its line 2 is not"),
    ],
)
def test_a_file_that_is_not_a_journal_is_refused(text: str, message: str) -> None:
    with pytest.raises(JournalError, match=message):
        read_journal(lines(text))


def test_a_journal_line_names_the_field_never_the_value_and_stays_one_line() -> None:
    assert journal_line(7, "3-1-0") == "7\t3-1-0"
    assert journal_line(8, InvalidLead("email", "has no @")) == "8\tERROR email: has no @"
    assert journal_line(9, None, "row: bad\tthing\nhere") == "9\tERROR row: bad thing here"


def test_journal_open_refuses_another_input_and_appends_a_header_when_forced(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.ids"
    with Journal.open(path, FP) as journal:
        journal.write(["2\t0-1-0", "3\t0-2-0"])
    path.write_bytes(path.read_bytes() + b"4\t0-3")  # a crash mid-write
    with pytest.raises(JournalError, match=r"journal of another input.*after its row 3"):
        Journal.open(path, "size=11 head-sha256=cd")
    with Journal.open(path, FP) as journal:
        assert journal.state.last_line == 3
        journal.write(["4\t0-3-0"])
    assert path.read_text().splitlines()[1:] == ["2\t0-1-0", "3\t0-2-0", "4\t0-3-0"]
    with Journal.open(path, "size=11 head-sha256=cd", force=True) as journal:
        assert journal.state.last_line == 4
    assert path.read_text().splitlines()[-1] == f"{HEADER} size=11 head-sha256=cd"


def test_a_journal_in_use_is_refused(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "a.ids", FP), pytest.raises(JournalError, match="in use"):
        Journal.open(tmp_path / "a.ids", FP)


def test_the_fingerprint_changes_with_the_input(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("email\na@x.com\n")
    before = input_fingerprint(path)
    assert before == input_fingerprint(path)
    path.write_text("email\nb@x.com\n")
    assert input_fingerprint(path) != before
    assert input_fingerprint(path).startswith("size=14 ")


def test_rows_at_or_before_the_resume_point_are_skipped_and_the_rest_chunked() -> None:
    rows = [Row(line) for line in range(2, 12)]
    got = [(skipped, [r.line for r in chunk]) for skipped, chunk in chunks_after(rows, 5, 3)]
    assert got == [(4, [6, 7, 8]), (0, [9, 10, 11])]
    assert list(chunks_after(rows, 11, 3)) == [(10, [])]


def test_the_mapping_renames_columns_into_keys_and_attributes() -> None:
    mapping = parse_mapping(["E-mail=email", "Company=attributes.Company", "Name=FirstName"])
    (row,) = read_rows(["E-mail,Name,dedup\n", "a@x.com,Ann,false\n"], "csv", mapping)
    assert row.record == {"email": "a@x.com", "dedup": False, "attributes": {"FirstName": "Ann"}}


def outcome(rid: str, status: OutcomeStatus) -> Outcome:
    return Outcome(request_id=rid, status=status)


def test_the_tracker_goes_round_the_pending_ids_and_counts_each_final_once() -> None:
    tracker = DeliveryTracker()
    tracker.add((n, f"r{n}") for n in range(5))
    first = tracker.window(2)
    assert [rid for _, rid in first] == ["r0", "r1"]
    tracker.settle(first, [outcome("r0", OutcomeStatus.PENDING), None])
    second = tracker.window(2)
    assert [rid for _, rid in second] == ["r2", "r3"], "the cursor moved past the waiting"
    tracker.settle(
        second, [outcome("r2", OutcomeStatus.CREATED), outcome("r3", OutcomeStatus.FAILED)]
    )
    third = tracker.window(2)
    assert [rid for _, rid in third] == ["r4"]
    tracker.settle(third, [outcome("r4", OutcomeStatus.UPDATED)])
    assert [rid for _, rid in tracker.window(2)] == ["r0", "r1"], "then round again"
    assert (tracker.delivered, tracker.tracked) == (3, 5)
    assert tracker.statuses == {"CREATED": 1, "FAILED": 1, "UPDATED": 1}
    assert [(line, rid) for line, rid, _ in tracker.failures] == [(3, "r3")]


class FakeJournal:
    def __init__(self, last_line: int = 0) -> None:
        self.state = JournalState(FP, last_line=last_line)
        self.writes: list[list[str]] = []

    def write(self, lines: Sequence[str]) -> None:
        self.writes.append(list(lines))


class Script:
    """upsert_many answering from a script: an exception, or ids for every record."""

    def __init__(self, *steps: BaseException | None) -> None:
        self.steps = list(steps)
        self.sent: list[list[str]] = []
        self.tickets: list[Ticket | None] = []
        self.made = 0

    def __call__(
        self, records: Sequence[Mapping[str, Any]], ticket: Ticket | None = None
    ) -> list[str | InvalidLead]:
        self.sent.append([r["email"] for r in records])
        self.tickets.append(ticket)
        step = self.steps.pop(0) if self.steps else None
        if step is not None:
            raise step
        return [self.rid() if "@" in r["email"] else InvalidLead("email", "no @") for r in records]

    def rid(self) -> str:
        self.made += 1
        return f"0-{self.made}-0"


def runner(script: Script, journal: FakeJournal, **kwargs: Any) -> tuple[Backfill, list[float]]:
    slept: list[float] = []
    clock = iter(float(n) for n in range(10_000))
    backfill = Backfill(
        journal=journal,  # type: ignore[arg-type]
        upsert_many=script,
        backlog=lambda: 0,
        outcomes=lambda rids: [None] * len(rids),
        on_change=lambda *_: None,
        track=False,
        **kwargs,
    )
    backfill.sleep = slept.append  # type: ignore[method-assign]
    backfill.clock = lambda: next(clock)  # type: ignore[method-assign]
    return backfill, slept


def rows(*emails: str | None, start: int = 2) -> list[Row]:
    return [
        Row(n, error="dedup: must be true or false") if email is None else Row(n, {"email": email})
        for n, email in enumerate(emails, start=start)
    ]


def test_a_retryable_with_results_journals_what_went_in_and_retries_the_rest() -> None:
    script = Script(NotReplicated(["0-100-0", InvalidLead("email", "no @")], 1, 0, 0.25))
    journal = FakeJournal()
    backfill, slept = runner(script, journal)
    counts = backfill.run(rows("a@x", "bad", None, "c@x", "d@x"), chunk_size=10)
    assert script.sent == [["a@x", "bad", "c@x", "d@x"], ["c@x", "d@x"]]
    assert slept == [0.25]
    assert journal.writes == [
        [
            "2\t0-100-0",
            "3\tERROR email: no @",
            "4\tERROR dedup: must be true or false",
            "5\t0-1-0",
            "6\t0-2-0",
        ]
    ], "a chunk is journaled whole, once every row has its answer"
    assert (counts.read, counts.enqueued, counts.invalid) == (5, 3, 2)


def test_connection_errors_back_off_and_retry_the_whole_remainder() -> None:
    script = Script(RedisConnectionError("down"), RedisConnectionError("down"), None)
    journal = FakeJournal()
    backfill, slept = runner(script, journal)
    backfill.run(rows("a@x", "b@x"), chunk_size=10)
    assert slept == [0.5, 1.0]
    assert script.sent == [["a@x", "b@x"]] * 3
    assert journal.writes[-1] == ["2\t0-1-0", "3\t0-2-0"]


def test_it_gives_up_when_redis_refuses_for_longer_than_allowed() -> None:
    script = Script(*[Retryable("full", 1.0)] * 10)
    journal = FakeJournal()
    backfill, slept = runner(script, journal, retry_for_s=3.0)
    with pytest.raises(GaveUp, match="gave up after 3 s of Retryable: full"):
        backfill.run(rows("a@x", "b@x", None), chunk_size=10)
    assert len(slept) == 3
    assert all(not write for write in journal.writes), "nothing of the chunk journaled"


def test_rows_of_the_journal_are_not_sent_again() -> None:
    script = Script()
    journal = FakeJournal(last_line=3)
    backfill, _ = runner(script, journal)
    counts = backfill.run(rows("a@x", "b@x", "c@x", "d@x"), chunk_size=1)
    assert script.sent == [["c@x"], ["d@x"]]
    assert (counts.skipped, counts.read, counts.enqueued) == (2, 2, 2)
    assert [w for w in journal.writes if w] == [["4\t0-1-0"], ["5\t0-2-0"]]


def test_it_waits_each_poll_while_the_backlog_is_above_the_bound() -> None:
    script = Script()
    journal = FakeJournal()
    backlogs = iter([50, 50, 10, 0])
    backfill, slept = runner(script, journal, max_backlog=20)
    backfill.backlog = lambda: next(backlogs)
    seen: list[int | None] = []
    backfill.on_change = lambda _c, _t, backlog: seen.append(backlog)
    backfill.run(rows("a@x"), chunk_size=10)
    assert slept == [1.0, 1.0]
    assert 50 in seen
    assert seen[-1] is None


class Refused(Retryable):
    """A Retryable with ``results`` as Backpressure has them: None for a record refused."""

    def __init__(self, results: list[object]) -> None:
        super().__init__("backlog full", 2.0)
        self.results = results


def test_records_a_refusal_left_out_are_sent_again_and_journaled_in_row_order() -> None:
    script = Script(Refused(["0-100-0", None, "0-101-0"]))
    journal = FakeJournal()
    backfill, slept = runner(script, journal)
    counts = backfill.run(rows("a@x", "b@x", "c@x", "d@x"), chunk_size=10)
    assert script.sent == [["a@x", "b@x", "c@x", "d@x"], ["b@x", "d@x"]]
    assert slept == [2.0]
    assert journal.writes == [["2\t0-100-0", "3\t0-1-0", "4\t0-101-0", "5\t0-2-0"]]
    assert counts.enqueued == 4


def test_each_step_carries_a_ticket_naming_exactly_its_rows() -> None:
    """The same rows sent again (a resumed chunk) carry the same ticket; the rows left
    after a partial answer are another step, with another ticket."""
    script = Script(Refused(["0-100-0", None, "0-101-0", None]))
    backfill, _ = runner(script, FakeJournal(), ticket="journal-1")
    backfill.run(rows("a@x", "b@x", None, "c@x", "d@x"), chunk_size=10)
    assert script.tickets == [
        Ticket("journal-1", "2-6-4"),
        Ticket("journal-1", "3-6-2"),
    ]
