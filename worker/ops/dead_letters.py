"""The dead-letter streams: list what is parked and put it back to be retried.

An entry that rode in LEADSYNC_MAX_ATTEMPTS cycles is moved to its shard's dead-letter
stream (``Keys.dead_letters(shard)``, fields entry_id, o = the original entry id, k, p =
the entry's OWN payload, error, code, attempts) and its request gets the outcome
DEAD_LETTERED. Dead letters are kept LEADSYNC_DEAD_LETTER_TTL_S (trimmed by id age
whenever one is added; the stream expires when none was added for that long).

Upserts merge per field, so a newer write replaces only the fields it sets. Replay
(the ledger's ``scripts/replay.lua``) therefore works per lead:

* a lead's parked writes go back together, in write order, in one atomic step (a
  selection by code, shard or limit takes the lead's other parked writes along);
* each goes back only while its request is still DEAD_LETTERED (``answered`` otherwise;
  ``gone`` when a concurrent replay took it), as a new entry with the same ``k`` and ``p``
  plus ``o`` = the original entry id: the drain merges it at the original write's place
  (before any newer write still waiting) and answers the original request id too;
* fields a newer write set that Marketo already applied are never reverted: while a lead
  has parked writes, the settle step records the fields each applied write set
  (``Keys.written_fields``), and the drain drops them from a replayed write;
* a write every one of whose fields was set since is ``superseded``: its request ends
  terminal (FAILED, ``SUPERSEDED``, with the reason) instead of staying parked;
* ``force`` sends every field as parked, and the report names the fields that may be
  reverted by it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from producers.contract import (
    Keys,
    Outcome,
    OutcomeStatus,
    decode_lead,
    entry_order,
    lane_of,
    request_id,
    text,
)
from worker.core.newer_fields import SUPERSEDED_REASON, set_since
from worker.errors import InvalidLead
from worker.ledger.redis import load_scripts

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: Dead-letter records read per XRANGE round trip.
PAGE = 500


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One parked entry. ``payload`` holds lead values: it is never shown."""

    dlq_id: str
    shard: int
    entry_id: str
    origin: str
    key_hash: str
    code: str
    error: str
    attempts: int
    #: The shard whose lease and written-fields records the stream shares (a bulk
    #: stream's home shard; ``shard`` itself for a live stream).
    home: int
    #: The letter was parked from a bulk stream: its replay waits there, marked as bulk.
    bulk: bool
    #: The shard count the letter was read by (its stream number means that layout's
    #: stream): the replay step refuses to run under another (``leadsync reshard``).
    shards: int
    payload: str = field(repr=False)
    #: The stream number of the request id the app holds: this stream's, unless
    #: ``leadsync reshard`` moved the letter here from the old layout (field ``r``).
    request_stream: int = -1

    @property
    def request_id(self) -> str:
        """The request id the web app holds."""
        return request_id(self.request_stream, self.origin)

    @property
    def dedup(self) -> bool:
        try:
            return decode_lead(self.payload).dedup
        except InvalidLead:
            return True

    @property
    def fields(self) -> tuple[str, ...]:
        """The attribute names this write sets (names only)."""
        try:
            return tuple(decode_lead(self.payload).attributes)
        except InvalidLead:
            return ()


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """One page of ``leadsync dlq list``; pass ``next_cursor`` back for the next one."""

    letters: list[DeadLetter]
    next_cursor: str | None


@dataclass(slots=True)
class ReplayReport:
    replayed: int = 0
    superseded: list[str] = field(default_factory=list)
    gone: int = 0
    answered: int = 0
    #: With ``force``: request id -> the fields a newer applied write set, which the replay
    #: may revert (names only: no lead values).
    may_revert: dict[str, list[str]] = field(default_factory=dict)


def _shards(shards: int, only: int | None) -> Iterable[int]:
    """The dead-letter streams to read: every shard's live and bulk ones (a bulk stream
    is numbered ``shards + s``, as its request ids are), or ``only``."""
    if only is None:
        return range(2 * shards)
    if not 0 <= only < 2 * shards:
        raise ValueError(f"shard {only} does not exist (0..{2 * shards - 1}, bulk from {shards})")
    return (only,)


def _letter(shard: int, shards: int, dlq_id: str, fields: dict[str, str]) -> DeadLetter:
    entry_id = fields.get("entry_id", "")
    lane, home = lane_of(shard, shards)
    return DeadLetter(
        dlq_id=dlq_id,
        shard=shard,
        entry_id=entry_id,
        origin=fields.get("o") or entry_id,
        key_hash=fields.get("k", ""),
        code=fields.get("code", ""),
        error=fields.get("error", ""),
        attempts=int(fields.get("attempts") or 0),
        payload=fields.get("p", ""),
        home=home,
        bulk=lane == "bulk",
        shards=shards,
        request_stream=int(fields["r"]) if fields.get("r", "").isdigit() else shard,
    )


def _cursor(shard: int, dlq_id: str) -> str:
    return f"{shard}:{dlq_id}"


def _parse_cursor(cursor: str | None) -> tuple[int, str]:
    if not cursor:
        return 0, "-"
    shard, _, dlq_id = cursor.partition(":")
    if not shard.isdigit() or not dlq_id:
        raise ValueError(f"not a dead-letter cursor: {cursor!r}")
    return int(shard), "(" + dlq_id


async def list_page(
    redis: Redis,
    keys: Keys,
    shards: int,
    *,
    code: str | None = None,
    shard: int | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> DeadLetterPage:
    """Up to ``limit`` parked entries from ``cursor`` on (shard by shard, oldest first),
    read PAGE records per round trip: a big dead-letter stream is never read whole."""
    first_shard, start = _parse_cursor(cursor)
    found: list[DeadLetter] = []
    for s in _shards(shards, shard):
        if s < first_shard:
            continue
        if s > first_shard:
            start = "-"
        while True:
            page: Any = await redis.xrange(keys.dead_letters(s), start, "+", count=PAGE)
            for raw_id, raw_fields in page:
                dlq_id = text(raw_id)
                start = "(" + dlq_id
                letter = _letter(
                    s, shards, dlq_id, {text(k): text(v) for k, v in raw_fields.items()}
                )
                if code in (None, letter.code):
                    found.append(letter)
                    if len(found) >= limit:
                        return DeadLetterPage(found, _cursor(s, dlq_id))
            if len(page) < PAGE:
                break
    return DeadLetterPage(found, None)


async def list_dead_letters(
    redis: Redis,
    keys: Keys,
    shards: int,
    *,
    code: str | None = None,
    shard: int | None = None,
    limit: int | None = None,
) -> list[DeadLetter]:
    """Parked entries, oldest first per shard, filtered by error code and shard."""
    letters: list[DeadLetter] = []
    cursor: str | None = None
    while True:
        want = PAGE if limit is None else min(PAGE, limit - len(letters))
        page = await list_page(
            redis, keys, shards, code=code, shard=shard, limit=want, cursor=cursor
        )
        letters.extend(page.letters)
        cursor = page.next_cursor
        if cursor is None or (limit is not None and len(letters) >= limit):
            return letters


async def replay(
    redis: Redis,
    keys: Keys,
    letters: Sequence[DeadLetter],
    *,
    result_ttl_s: int,
    force: bool = False,
) -> ReplayReport:
    """Put ``letters`` back into their shard streams, lead by lead (see the module
    docstring); the lead's other parked writes come along."""
    script = load_scripts(redis)["replay"]
    report = ReplayReport()
    for group in await _groups(redis, keys, letters):
        first = group[0]
        written = (
            await _written(redis, keys, first.home, first.key_hash)
            if first.key_hash and first.dedup
            else {}
        )
        writes = []
        for letter in group:
            newer = sorted(set_since(letter.fields, written, letter.origin))
            superseded = not force and bool(letter.fields) and len(newer) == len(letter.fields)
            if force and newer:
                report.may_revert[letter.request_id] = newer
            writes.append(
                {
                    "d": letter.dlq_id,
                    "k": letter.key_hash,
                    "p": letter.payload,
                    "o": letter.origin,
                    "f": 1 if force else 0,
                    "s": 1 if superseded else 0,
                    "of": keys.outcome_slot(letter.request_stream, letter.origin)[1],
                    "r": -1 if letter.request_stream == letter.shard else letter.request_stream,
                    "out": _reopened(letter, superseded).pack(),
                    "b": 1 if letter.bulk and letter.key_hash else 0,
                }
            )
        answers = await script(
            keys=[
                keys.stream(first.shard),
                keys.dead_letters(first.shard),
                keys.written_fields(first.home, first.key_hash or "-"),
                keys.config(),
                keys.reshard(),
                *(
                    key
                    for letter in group
                    for key in (
                        keys.outcome_slot(letter.request_stream, letter.origin)[0],
                        keys.outcome(letter.request_stream, letter.origin),
                    )
                ),
            ],
            args=[result_ttl_s, json.dumps(writes, separators=(",", ":")), first.shards],
        )
        for letter, answer in zip(group, answers, strict=True):
            result = text(answer)
            if result == "gone":
                report.gone += 1
            elif result == "superseded":
                report.superseded.append(letter.request_id)
            elif result == "answered":
                report.answered += 1
            else:
                report.replayed += 1
    return report


async def _groups(
    redis: Redis, keys: Keys, letters: Sequence[DeadLetter]
) -> list[list[DeadLetter]]:
    """The letters by lead (shard and key hash), each lead's in write order, with the
    lead's other parked writes added; a dedup=false write is a group of its own."""
    chosen = {(letter.shard, letter.dlq_id): letter for letter in letters}
    wanted = {(letter.shard, letter.key_hash) for letter in letters if letter.key_hash}
    shards = {letter.shard: letter.shards for letter in letters}
    for shard in sorted({shard for shard, _ in wanted}):
        for letter in await list_dead_letters(redis, keys, shards[shard], shard=shard):
            if (shard, letter.key_hash) in wanted:
                chosen.setdefault((shard, letter.dlq_id), letter)
    groups: dict[tuple[int, str], list[DeadLetter]] = {}
    for letter in chosen.values():
        lead = letter.key_hash if letter.key_hash and letter.dedup else f"~{letter.dlq_id}"
        groups.setdefault((letter.shard, lead), []).append(letter)
    return [
        sorted(group, key=lambda letter: entry_order(letter.origin))
        for _, group in sorted(groups.items())
    ]


async def _written(redis: Redis, keys: Keys, shard: int, key_hash: str) -> dict[str, str]:
    stored: Any = await redis.hgetall(keys.written_fields(shard, key_hash))
    return {text(k): text(v) for k, v in stored.items() if not text(k).startswith("~")}


def _reopened(letter: DeadLetter, superseded: bool) -> Outcome:
    """The outcome a replayed write's request gets now: PENDING, or its terminal answer."""
    if not superseded:
        return Outcome(letter.request_id, OutcomeStatus.PENDING, attempts=0)
    return Outcome(
        letter.request_id,
        OutcomeStatus.FAILED,
        error=SUPERSEDED_REASON,
        error_code="SUPERSEDED",
        attempts=letter.attempts,
        finished_at=time.time(),
    )
