"""The dead-letter streams: list what is parked and put it back to be retried.

An entry that rode in LEADSYNC_MAX_ATTEMPTS calls is moved to its shard's dead-letter
stream (``Keys.dead_letters(shard)``, fields entry_id, k, p, error, code, attempts) and
its request gets the outcome DEAD_LETTERED. Replay, in one atomic step per entry:

* adds a new entry to the shard stream with the same ``k`` and ``p`` plus ``o`` = the
  original entry id, so the drain commit writes the outcome of the ORIGINAL request id
  too (the one the web app holds); the new entry starts with no attempts;
* sets the original outcome back to PENDING;
* remembers new id -> original id in ``<dlq key>:origins``, so an entry that is
  dead-lettered again and replayed again still answers the original request;
* deletes the dead-letter record (a concurrent replay of the same record is a no-op).

Last write wins: a parked entry whose lead was since written by a newer committed
upsert is left parked (``superseded``) unless forced, because replaying it would
overwrite newer values in Marketo.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from producers.contract import Keys, Outcome, OutcomeStatus, entry_time_s, request_id

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: Dead-letter records read per XRANGE round trip.
PAGE = 500

_REPLAY_LUA = """
-- KEYS[1] stream, KEYS[2] dlq, KEYS[3] origins hash, KEYS[4] origin outcome, KEYS[5] latest
-- ARGV: dlq id, dead entry id, key hash, payload, origin id, ttl s, force (1/0),
--       outcome field/value pairs
local function newer(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
if #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) == 0 then return 'gone' end
if ARGV[7] ~= '1' and ARGV[3] ~= '' then
  local seen = redis.call('HGET', KEYS[5], 'entry_id')
  if seen and newer(seen, ARGV[5]) then return 'superseded' end
end
local id = redis.call('XADD', KEYS[1], '*', 'k', ARGV[3], 'p', ARGV[4], 'o', ARGV[5])
local ttl = tonumber(ARGV[6])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[3], id, ARGV[5])
redis.call('EXPIRE', KEYS[3], ttl)
local fields = {}
for j = 8, #ARGV do fields[#fields + 1] = ARGV[j] end
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], unpack(fields))
redis.call('EXPIRE', KEYS[4], ttl)
redis.call('XDEL', KEYS[2], ARGV[1])
return id
"""


def origins_key(keys: Keys, shard: int) -> str:
    """Replayed entry id -> original entry id (same hash tag as the shard's streams)."""
    return f"{keys.dead_letters(shard)}:origins"


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


@dataclass(slots=True)
class ReplayReport:
    replayed: int = 0
    superseded: list[str] = field(default_factory=list)
    gone: int = 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _shards(shards: int, only: int | None) -> Iterable[int]:
    if only is None:
        return range(shards)
    if not 0 <= only < shards:
        raise ValueError(f"shard {only} does not exist (0..{shards - 1})")
    return (only,)


async def _read_shard(redis: Redis, keys: Keys, shard: int) -> list[DeadLetter]:
    stream = keys.dead_letters(shard)
    raw: list[tuple[str, dict[str, str]]] = []
    start = "-"
    while True:
        page: Any = await redis.xrange(stream, start, "+", count=PAGE)
        raw.extend((_text(i), {_text(k): _text(v) for k, v in f.items()}) for i, f in page)
        if len(page) < PAGE:
            break
        start = "(" + raw[-1][0]
    if not raw:
        return []
    entry_ids = [fields.get("entry_id", "") for _, fields in raw]
    origins = await redis.hmget(origins_key(keys, shard), entry_ids)
    return [
        DeadLetter(
            dlq_id=dlq_id,
            shard=shard,
            entry_id=entry_id,
            origin=_text(origin) if origin else entry_id,
            key_hash=fields.get("k", ""),
            code=fields.get("code", ""),
            error=fields.get("error", ""),
            attempts=int(fields.get("attempts") or 0),
            payload=fields.get("p", ""),
        )
        for (dlq_id, fields), entry_id, origin in zip(raw, entry_ids, origins, strict=True)
    ]


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
    found: list[DeadLetter] = []
    for s in _shards(shards, shard):
        found.extend(d for d in await _read_shard(redis, keys, s) if code in (None, d.code))
        if limit is not None and len(found) >= limit:
            return found[:limit]
    return found


async def replay(
    redis: Redis,
    keys: Keys,
    letters: Sequence[DeadLetter],
    *,
    result_ttl_s: int,
    force: bool = False,
) -> ReplayReport:
    """Put ``letters`` back into their shard streams (see the module docstring)."""
    script = redis.register_script(_REPLAY_LUA)
    report = ReplayReport()
    for letter in letters:
        pending = Outcome(
            letter.request_id,
            OutcomeStatus.PENDING,
            attempts=0,
            enqueued_at=entry_time_s(letter.origin),
        )
        answer = await script(
            keys=[
                keys.stream(letter.shard),
                keys.dead_letters(letter.shard),
                origins_key(keys, letter.shard),
                keys.outcome(letter.shard, letter.origin),
                keys.latest(letter.shard, letter.key_hash or "-"),
            ],
            args=[
                letter.dlq_id,
                letter.entry_id,
                letter.key_hash,
                letter.payload,
                letter.origin,
                result_ttl_s,
                1 if force else 0,
                *[x for pair in pending.to_fields().items() for x in pair],
            ],
        )
        result = _text(answer)
        if result == "gone":
            report.gone += 1
        elif result == "superseded":
            report.superseded.append(letter.request_id)
        else:
            report.replayed += 1
    return report
