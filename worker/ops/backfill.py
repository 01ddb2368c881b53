"""``leadsync backfill``: a large lead file sent in chunks, with a journal to resume from.

The journal (the ids file) is the record of what went in: a header naming the input
(its size and a hash of its first 64 KiB), then one line per input row, in row order,
``LINE<TAB>REQUEST_ID`` or ``LINE<TAB>ERROR field: message`` (the field and the reason,
never the value), where LINE is the row's line in the input as ``leadsync enqueue``
reports it. A chunk (BULK_CHUNK rows) is one atomic enqueue step, and its lines are
written, flushed and fsynced together once ``upsert_many`` returned; a restart continues
after the last line in the journal. A chunk Redis took before a crash kept its lines from
the disk is not written twice: each step carries a ticket (the journal's name, the
chunk's lines; ``producers.Ticket``), and the same chunk sent again on resume is answered
with the request ids it got then (kept 30 days; past that, or with another chunk size, it
would be sent again).

Before each chunk the runner waits while the shard streams hold more than a bound of
entries, and it retries what Redis refused for now (``Retryable``: its ``results``,
when it has them, say which records of the chunk went in; a None there is a record
refused, sent again) or could not be reached for.
Delivery is followed by sampling the outcomes of this run's request ids, one window of
OUTCOME_WINDOW per round trip and at most one round trip per POLL_S.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from producers import InvalidLead, Retryable, Ticket
from producers.contract import Outcome
from worker.ops.ingest import Row

#: The first word of a journal's header line (the version is part of the format).
HEADER: Final = "# leadsync-backfill v1"
#: How much of the input's start the header's hash covers.
FINGERPRINT_BYTES: Final = 64 * 1024
#: Seconds between looks at the backlog while it is above the bound, and the shortest
#: time between two outcome polls.
POLL_S: Final = 1.0
#: Request ids whose outcomes one poll reads (one pipelined round trip).
OUTCOME_WINDOW: Final = 1000
#: Backoff after a Redis connection error or timeout: first, then doubled up to the max.
BACKOFF_INITIAL_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
#: How many failed leads (not CREATED or UPDATED) are kept for the report.
FAILURES_KEPT: Final = 20

_UNSAFE = re.compile(r"[\t\r\n]+")


class JournalError(Exception):
    """The ids file cannot be used as this input's journal; the message says why and what
    to do."""


class GaveUp(Exception):
    """Redis kept refusing or failing for longer than allowed; resuming later is safe."""

    def __init__(self, seconds: float, cause: BaseException) -> None:
        super().__init__(f"gave up after {seconds:.0f} s of {type(cause).__name__}: {cause}")
        self.cause = cause


# --- the journal ---------------------------------------------------------------------


def input_fingerprint(path: Path) -> str:
    """``size=N head-sha256=HEX``: the input's size and a hash of its first 64 KiB."""
    with path.open("rb") as handle:
        head = handle.read(FINGERPRINT_BYTES)
        size = os.fstat(handle.fileno()).st_size
    return f"size={size} head-sha256={hashlib.sha256(head).hexdigest()}"


@dataclass(frozen=True, slots=True)
class JournalState:
    """What an existing journal says: its input's fingerprint (the last header; None when
    empty), the last row written (0: none), how many ids and errors, and where its last
    complete line ends (a torn last line, from a crash mid-write, is cut off there)."""

    fingerprint: str | None = None
    last_line: int = 0
    ids: int = 0
    errors: int = 0
    end: int = 0


def read_journal(lines: Iterable[bytes]) -> JournalState:
    """Parse a journal's lines (as ``open(path, 'rb')`` yields them)."""
    fingerprint: str | None = None
    last = ids = errors = end = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.endswith(b"\n"):
            break  # torn: the write of its chunk did not finish
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if text.startswith(HEADER):
            fingerprint = text[len(HEADER) :].strip()
        elif fingerprint is None:
            raise JournalError("it is not a backfill ids file (no header line)")
        elif text.strip():
            row, sep, value = text.partition("\t")
            if not sep or not row.isdigit() or not value:
                raise JournalError(f"its line {number} is not LINE<TAB>REQUEST_ID or ERROR")
            last = max(last, int(row))
            if value.startswith("ERROR"):
                errors += 1
            else:
                ids += 1
        end += len(raw)
    return JournalState(fingerprint, last, ids, errors, end)


def ticket_name(journal: Path, run: str) -> str:
    """The ticket naming a journal's enqueue steps: the journal's path and what makes its
    records (the input's fingerprint, the mapping, the format and the lane)."""
    key = f"{journal.resolve()}\n{run}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


def journal_line(line: int, result: str | InvalidLead | None, error: str | None = None) -> str:
    """``LINE<TAB>REQUEST_ID`` or ``LINE<TAB>ERROR field: message``."""
    if isinstance(result, str):
        return f"{line}\t{result}"
    reason = str(result) if result is not None else (error or "row: unreadable")
    return f"{line}\tERROR {_UNSAFE.sub(' ', reason)}"


class Journal:
    """An open ids file, locked against a second backfill writing it at once."""

    def __init__(self, path: Path, handle: IO[bytes], state: JournalState) -> None:
        self.path = path
        self._handle = handle
        self.state = state

    @classmethod
    def open(cls, path: Path, fingerprint: str, *, force: bool = False) -> Journal:
        """Open (or create) the journal of the input with ``fingerprint``. A journal of
        another input is refused unless ``force`` (then a new header is appended and the
        run continues after its last row)."""
        created = not path.exists()
        handle = path.open("a+b")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalError(f"{path} is in use by another backfill") from None
            handle.seek(0)
            try:
                state = read_journal(handle)
            except JournalError as exc:
                raise JournalError(f"{path}: {exc}; choose another --ids") from None
            if state.fingerprint is not None and state.fingerprint != fingerprint and not force:
                raise JournalError(
                    f"{path} is the journal of another input (it was written for "
                    f"{state.fingerprint}; this file is {fingerprint}). Use another --ids, "
                    f"delete it to start over, or pass --force to continue after its row "
                    f"{state.last_line} anyway"
                )
            handle.truncate(state.end)  # a torn last line goes; its chunk is sent again
            handle.seek(state.end)
            journal = cls(path, handle, state)
            if state.fingerprint != fingerprint:
                journal.write([f"{HEADER} {fingerprint}"])
            if created:
                _fsync_dir(path.parent)
            return journal
        except BaseException:
            handle.close()
            raise

    def write(self, lines: Sequence[str]) -> None:
        """Append lines, then flush and fsync (one disk sync per call)."""
        if not lines:
            return
        self._handle.write("".join(f"{line}\n" for line in lines).encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def chunks_after(rows: Iterable[Row], last_line: int, size: int) -> Iterator[tuple[int, list[Row]]]:
    """(rows skipped since the last chunk, chunk) for the rows after ``last_line``, in
    chunks of at most ``size`` rows (a final pair may have an empty chunk)."""
    skipped = 0
    chunk: list[Row] = []
    for row in rows:
        if row.line <= last_line:
            skipped += 1
            continue
        chunk.append(row)
        if len(chunk) >= size:
            yield skipped, chunk
            skipped, chunk = 0, []
    if chunk or skipped:
        yield skipped, chunk


# --- delivery ------------------------------------------------------------------------


@dataclass
class DeliveryTracker:
    """The request ids of this run not yet seen final, looked at a window at a time from
    a cursor that goes round them (so one slow shard never hides the others' progress)."""

    pending: list[tuple[int, str]] = field(default_factory=list)
    cursor: int = 0
    tracked: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[int, str, Outcome]] = field(default_factory=list)

    @property
    def delivered(self) -> int:
        return self.tracked - len(self.pending)

    def add(self, entries: Iterable[tuple[int, str]]) -> None:
        before = len(self.pending)
        self.pending.extend(entries)
        self.tracked += len(self.pending) - before

    def window(self, size: int) -> list[tuple[int, str]]:
        if self.cursor >= len(self.pending):
            self.cursor = 0
        return self.pending[self.cursor : self.cursor + size]

    def settle(self, window: Sequence[tuple[int, str]], outcomes: Sequence[Outcome | None]) -> None:
        """Record the outcomes of :meth:`window`'s ids (None: unknown, still waited for)."""
        keep = []
        for entry, outcome in zip(window, outcomes, strict=True):
            if outcome is None or not outcome.status.is_final:
                keep.append(entry)
                continue
            self.statuses[outcome.status.value] += 1
            failed = outcome.status.value not in ("CREATED", "UPDATED")
            if failed and len(self.failures) < FAILURES_KEPT:
                self.failures.append((entry[0], entry[1], outcome))
        self.pending[self.cursor : self.cursor + len(window)] = keep
        self.cursor += len(keep)


# --- the run -------------------------------------------------------------------------


@dataclass
class Counts:
    """Rows of this run: read after the resume point, enqueued, invalid, skipped."""

    read: int = 0
    enqueued: int = 0
    invalid: int = 0
    skipped: int = 0


#: ``upsert_many(records, ticket)``: the producer's, in the backfill's lane.
UpsertMany = Callable[[list[Mapping[str, Any]], Ticket | None], list[str | InvalidLead]]
Outcomes = Callable[[Sequence[str]], list[Outcome | None]]


@dataclass
class Backfill:
    """Send rows chunk by chunk, journal them, wait on the backlog and follow delivery.
    ``on_change(counts, tracker, backlog)`` hears every step (``backlog``: the backlog
    being waited out, else None)."""

    journal: Journal
    upsert_many: UpsertMany
    backlog: Callable[[], int]
    outcomes: Outcomes
    on_change: Callable[[Counts, DeliveryTracker, int | None], None]
    max_backlog: int = 20_000
    retry_for_s: float = 300.0
    track: bool = True
    #: Names this journal's enqueue steps (:func:`ticket_name`): a chunk Redis took before
    #: a crash kept its lines from the journal is answered, not written, when sent again.
    ticket: str | None = None
    counts: Counts = field(default_factory=Counts)
    tracker: DeliveryTracker = field(default_factory=DeliveryTracker)
    _polled_at: float = float("-inf")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def clock(self) -> float:
        return time.monotonic()

    def run(self, rows: Iterable[Row], chunk_size: int) -> Counts:
        for skipped, chunk in chunks_after(rows, self.journal.state.last_line, chunk_size):
            self.counts.skipped += skipped
            if chunk:
                self._send(chunk)
            self._changed()
            self.poll()
        return self.counts

    def _send(self, chunk: list[Row]) -> None:
        """Send the chunk's valid rows until all went in (one atomic step: all or none),
        then journal every row at once. The journal holds whole chunks only, so a chunk
        sent again after a crash is the same rows under the same ticket."""
        self.counts.read += len(chunk)
        pending = [row for row in chunk if row.record is not None]
        results: dict[int, str | InvalidLead] = {}
        backoff_s = BACKOFF_INITIAL_S
        stuck_since: float | None = None
        while True:
            if not pending:
                self._journal(chunk, 0, results)
                return
            try:
                self._wait_backlog()
                got = self.upsert_many([row.record or {} for row in pending], self._ticket(pending))
                error: BaseException | None = None
                wait_s = 0.0
            except Retryable as exc:
                written = getattr(exc, "results", None)
                got = list(written) if isinstance(written, list) else []
                error, wait_s = exc, exc.retry_after_s
            except (RedisConnectionError, RedisTimeoutError) as exc:
                got, error, wait_s = [], exc, backoff_s
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            refused: list[Row] = []  # None in a Retryable's results: that record was not written
            for row, result in zip(pending, got, strict=False):
                if result is None:
                    refused.append(row)
                else:
                    results[row.line] = result
            pending = refused + pending[len(got) :]
            got = [result for result in got if result is not None]
            if error is None:
                continue
            now = self.clock()
            if got or stuck_since is None:
                stuck_since = now
            elif now - stuck_since >= self.retry_for_s:
                self._journal(chunk, 0, results)
                raise GaveUp(now - stuck_since, error)
            self._changed()
            self.sleep(wait_s)

    def _ticket(self, pending: Sequence[Row]) -> Ticket | None:
        """The step's ticket: this journal, and exactly these rows (a resumed chunk is the
        same rows; a remainder after a partial answer is another step)."""
        if self.ticket is None:
            return None
        return Ticket(self.ticket, f"{pending[0].line}-{pending[-1].line}-{len(pending)}")

    def _journal(self, chunk: list[Row], start: int, results: dict[int, str | InvalidLead]) -> int:
        """Journal the chunk's rows from ``start`` on as far as each has its answer; the
        new start."""
        lines = []
        ids = []
        position = start
        for row in chunk[start:]:
            if row.record is None:
                lines.append(journal_line(row.line, None, row.error))
                self.counts.invalid += 1
            elif row.line in results:
                result = results[row.line]
                lines.append(journal_line(row.line, result))
                if isinstance(result, str):
                    ids.append((row.line, result))
                else:
                    self.counts.invalid += 1
            else:
                break
            position += 1
        self.journal.write(lines)
        self.counts.enqueued += len(ids)
        if self.track:
            self.tracker.add(ids)
        return position

    def _wait_backlog(self) -> None:
        if self.max_backlog <= 0:
            return
        while (backlog := self.backlog()) > self.max_backlog:
            self._changed(backlog)
            self.poll()
            self.sleep(POLL_S)
        self._changed()

    def poll(self) -> None:
        """Read one window of outcomes, unless the last poll was under POLL_S ago; a Redis
        error only skips this look (it is progress, not work)."""
        if not self.track or not self.tracker.pending or self.clock() - self._polled_at < POLL_S:
            return
        self._polled_at = self.clock()
        window = self.tracker.window(OUTCOME_WINDOW)
        try:
            outcomes = self.outcomes([rid for _, rid in window])
        except (RedisConnectionError, RedisTimeoutError):
            return
        self.tracker.settle(window, outcomes)
        self._changed()

    def wait_delivered(self, timeout_s: float) -> bool:
        """Poll until every id of this run is final or ``timeout_s`` passes."""
        deadline = self.clock() + timeout_s
        while self.tracker.pending:
            self.poll()
            if not self.tracker.pending:
                break
            if self.clock() >= deadline:
                return False
            self.sleep(min(POLL_S, max(deadline - self.clock(), 0.0)))
        return True

    def _changed(self, backlog: int | None = None) -> None:
        self.on_change(self.counts, self.tracker, backlog)
