"""The dead-letter streams: list what is parked and put it back to be retried.

An entry that rode in LEADSYNC_MAX_ATTEMPTS cycles is moved to its shard's dead-letter
stream (``Keys.dead_letters(shard)``, fields entry_id, o = the original entry id, k, p =
the entry's OWN payload, error, code, attempts) and its request gets the outcome
DEAD_LETTERED. Dead letters are kept LEADSYNC_DEAD_LETTER_TTL_S (trimmed by id age
whenever one is added; the stream expires when none was added for that long).

Replay (the ledger's ``scripts/replay.lua``), atomically per dead letter:

* only while the original request is still DEAD_LETTERED (``answered`` otherwise);
* unless forced, only when no newer upsert of the lead was ENQUEUED since the dead
  entry (``superseded``): the producer records the newest enqueued id per lead in the
  same step as its XADD, so a newer upsert still waiting in the stream counts too;
* adds a new entry with the same ``k`` and ``p`` plus ``o`` = the original entry id: the
  drain merges it at the original write's place and also answers the original request
  id (the one the web app holds); the new entry starts with no attempts;
* sets the original outcome back to PENDING and deletes the dead-letter record (a
  concurrent replay of the same record is a no-op: ``gone``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from producers.contract import (
    NEWEST_ID_TTL_S,
    Keys,
    Outcome,
    OutcomeStatus,
    decode_lead,
    request_id,
)
from producers.wire import text
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
    payload: str = field(repr=False)

    @property
    def request_id(self) -> str:
        """The request id the web app holds."""
        return request_id(self.shard, self.origin)

    @property
    def dedup(self) -> bool:
        try:
            return decode_lead(self.payload).dedup
        except InvalidLead:
            return True


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


def _shards(shards: int, only: int | None) -> Iterable[int]:
    if only is None:
        return range(shards)
    if not 0 <= only < shards:
        raise ValueError(f"shard {only} does not exist (0..{shards - 1})")
    return (only,)


def _letter(shard: int, dlq_id: str, fields: dict[str, str]) -> DeadLetter:
    entry_id = fields.get("entry_id", "")
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
                letter = _letter(s, dlq_id, {text(k): text(v) for k, v in raw_fields.items()})
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
    """Put ``letters`` back into their shard streams (see the module docstring)."""
    script = load_scripts(redis)["replay"]
    report = ReplayReport()
    for letter in letters:
        pending = Outcome(
            letter.request_id,
            OutcomeStatus.PENDING,
            attempts=0,
        )
        answer = await script(
            keys=[
                keys.stream(letter.shard),
                keys.dead_letters(letter.shard),
                keys.outcome(letter.shard, letter.origin),
                keys.newest(letter.shard, letter.key_hash or "-"),
            ],
            args=[
                letter.dlq_id,
                letter.entry_id,
                letter.key_hash,
                letter.payload,
                letter.origin,
                result_ttl_s,
                1 if force else 0,
                NEWEST_ID_TTL_S if letter.key_hash and letter.dedup else 0,
                *[x for pair in pending.to_fields().items() for x in pair],
            ],
        )
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
