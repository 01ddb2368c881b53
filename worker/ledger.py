"""The Redis Stream ledger: one stream per shard with consumer group ``workers``.

An entry stays in its stream (and in the group's pending list once read) until
its outcome is written: :meth:`Ledger.commit` writes outcomes, XACKs and XDELs
in one Lua call, so nothing is acknowledged before its outcome exists. A lease
per shard keeps at most one batch per shard in flight. The work stream is never
trimmed with MAXLEN.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from producers.contract import Keys, Outcome
from worker.errors import LedgerError

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

_LUA = resources.files("worker").joinpath("ledger.lua").read_text(encoding="utf-8")
_SCRIPTS = dict(part.split("\n", 1) for part in _LUA.split("--@ ")[1:])


@dataclass(frozen=True, slots=True)
class RawEntry:
    """A stream entry as read: its id, hashed lead key and JSON payload. ``origin`` is
    the entry id whose request this entry answers too (set by ``leadsync dlq replay``)."""

    entry_id: str
    key_hash: str
    payload: str
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class Committed:
    """One entry's final record: the outcome and the hashed lead key it belongs to."""

    entry_id: str
    key_hash: str
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class ShardBacklog:
    """What a shard holds: entries not yet committed and the age of the oldest.
    ``leased`` is true while a cycle holds the shard or the shard rests after faults."""

    shard: int
    entries: int
    oldest_age_s: float | None
    leased: bool


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(raw: Sequence[Any]) -> list[RawEntry]:
    """Decode [(id, {field: value})] pairs; ids whose entry was deleted come back empty."""
    entries = []
    for entry_id, fields in raw:
        if not fields:
            continue
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        entries.append(
            RawEntry(
                _text(entry_id),
                decoded.get("k", ""),
                decoded.get("p", ""),
                decoded.get("o") or None,
            )
        )
    return entries


class Ledger:
    """Reads, leases and commits the shard streams of one key prefix."""

    def __init__(self, redis: Redis, keys: Keys, *, result_ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.result_ttl_s = result_ttl_s
        self._scripts = {name: redis.register_script(body) for name, body in _SCRIPTS.items()}

    # --- setup --------------------------------------------------------------------

    async def agree_shards(self, configured: int) -> int:
        """Adopt the shard count stored in Redis (first writer wins), so producers and
        workers always hash keys onto the same streams."""
        await self.redis.hsetnx(self.keys.config(), "shards", configured)
        stored = int(await self.redis.hget(self.keys.config(), "shards") or configured)
        if stored != configured:
            logger.warning(
                "using %d shards stored in Redis instead of the configured %d", stored, configured
            )
        return stored

    async def ensure_groups(self, shards: int) -> None:
        """Create every shard's consumer group at id 0 (never $: that would skip a backlog)."""
        for shard in range(shards):
            try:
                await self.redis.xgroup_create(
                    self.keys.stream(shard), Keys.GROUP, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # --- lease --------------------------------------------------------------------

    async def acquire_lease(self, shard: int, ttl_s: float) -> str | None:
        """A token when this caller now holds the shard, else None."""
        token = secrets.token_hex(8)
        taken = await self.redis.set(self.keys.lease(shard), token, nx=True, px=int(ttl_s * 1000))
        return token if taken else None

    async def renew_lease(self, shard: int, token: str, ttl_s: float) -> bool:
        renewed = await self._scripts["renew_lease"](
            keys=[self.keys.lease(shard)], args=[token, int(ttl_s * 1000)]
        )
        return bool(renewed)

    async def release_lease(self, shard: int, token: str) -> None:
        await self._scripts["release_lease"](keys=[self.keys.lease(shard)], args=[token])

    # --- reading --------------------------------------------------------------------

    async def read(
        self, shard: int, consumer: str, count: int, *, claim_pending: bool = True
    ) -> list[RawEntry]:
        """Entries left pending by earlier cycles first (any consumer: the lease makes this
        caller the only one working the shard), then never-delivered ones. Claim pending
        entries once per cycle: a second claim would return what this cycle already read."""
        stream = self.keys.stream(shard)
        entries: list[RawEntry] = []
        cursor = "0-0"
        try:
            while claim_pending and len(entries) < count:
                reply: Any = await self.redis.xautoclaim(
                    stream,
                    Keys.GROUP,
                    consumer,
                    min_idle_time=0,
                    start_id=cursor,
                    count=count - len(entries),
                )
                cursor = _text(reply[0])
                entries.extend(_entries(reply[1]))
                if cursor == "0-0":
                    break
            if len(entries) < count:
                fresh: Any = await self.redis.xreadgroup(
                    Keys.GROUP, consumer, {stream: ">"}, count=count - len(entries)
                )
                for _stream, items in fresh or []:
                    entries.extend(_entries(items))
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                raise LedgerError(
                    f"shard {shard} has no consumer group: Redis lost its data or was never set up "
                    "(run `leadsync doctor`)"
                ) from None
            raise
        return entries

    # --- writing ----------------------------------------------------------------------

    async def commit(self, shard: int, committed: Sequence[Committed]) -> int:
        """Write outcomes, XACK and XDEL in one atomic step. Idempotent: an outcome that is
        already final is kept, and the latest state per lead only moves forward."""
        if not committed:
            return 0
        keys = [self.keys.stream(shard), self.keys.attempts(shard)]
        args: list[str | int] = [Keys.GROUP, self.result_ttl_s]
        for item in committed:
            fields = item.outcome.to_fields()
            keys += [
                self.keys.outcome(shard, item.entry_id),
                self.keys.latest(shard, item.key_hash or "-"),
            ]
            args += [item.entry_id, 1 if item.key_hash else 0, len(fields)]
            for name, value in fields.items():
                args += [name, value]
        written = await self._scripts["commit"](keys=keys, args=args)
        return int(written)

    async def dead_letter(
        self, shard: int, entries: Sequence[tuple[RawEntry, Outcome, str]]
    ) -> None:
        """Move entries to the shard's dead-letter stream with their last error, in the same
        atomic step that records their DEAD_LETTERED outcome and acknowledges them."""
        for entry, outcome, error in entries:
            await self._scripts["dead_letter"](
                keys=[
                    self.keys.stream(shard),
                    self.keys.dead_letters(shard),
                    self.keys.attempts(shard),
                    self.keys.outcome(shard, entry.entry_id),
                ],
                args=[
                    Keys.GROUP,
                    entry.entry_id,
                    entry.key_hash,
                    entry.payload,
                    error,
                    outcome.error_code or "",
                    outcome.attempts,
                    self.result_ttl_s,
                    *[x for pair in outcome.to_fields().items() for x in pair],
                ],
            )

    async def bump_attempts(self, shard: int, entry_ids: Sequence[str]) -> list[int]:
        """Count one more call for each entry (before it is sent: a crash counts too)."""
        pipe = self.redis.pipeline(transaction=False)
        key = self.keys.attempts(shard)
        for entry_id in entry_ids:
            pipe.hincrby(key, entry_id, 1)
        return [int(n) for n in await pipe.execute()]

    async def refund_attempts(self, shard: int, entry_ids: Sequence[str]) -> None:
        """Give an attempt back when the call was refused for limits, quota or credentials."""
        pipe = self.redis.pipeline(transaction=False)
        key = self.keys.attempts(shard)
        for entry_id in entry_ids:
            pipe.hincrby(key, entry_id, -1)
        await pipe.execute()

    async def attempts(self, shard: int, entry_ids: Sequence[str]) -> list[int]:
        if not entry_ids:
            return []
        values = await self.redis.hmget(self.keys.attempts(shard), list(entry_ids))
        return [int(v or 0) for v in values]

    async def prune_consumers(self, shards: int, idle_s: float) -> int:
        """Delete consumers that hold nothing and were idle ``idle_s``: every worker process
        joins the group under its own name, and dead names would pile up. A consumer with
        pending entries is kept (deleting it would make them unclaimable)."""
        removed = 0
        for shard in range(shards):
            stream = self.keys.stream(shard)
            try:
                consumers = await self.redis.xinfo_consumers(stream, Keys.GROUP)
            except ResponseError:
                continue
            for consumer in consumers:
                if int(consumer["pending"]) == 0 and int(consumer["idle"]) >= idle_s * 1000:
                    await self.redis.xgroup_delconsumer(stream, Keys.GROUP, consumer["name"])
                    removed += 1
        return removed

    # --- inspection ------------------------------------------------------------------

    async def backlogs(self, shards: int, now_s: float | None = None) -> list[ShardBacklog]:
        """XLEN, oldest entry and lease of every shard in one round trip."""
        return await self.backlogs_of(range(shards), now_s)

    async def backlogs_of(
        self, shards: Iterable[int], now_s: float | None = None
    ) -> list[ShardBacklog]:
        now_s = time.time() if now_s is None else now_s
        shards = list(shards)
        pipe = self.redis.pipeline(transaction=False)
        for shard in shards:
            pipe.xlen(self.keys.stream(shard))
            pipe.xrange(self.keys.stream(shard), count=1)
            pipe.exists(self.keys.lease(shard), self.keys.control(f"backoff:{shard}"))
        replies = await pipe.execute()
        backlogs = []
        for position, shard in enumerate(shards):
            length, oldest, leased = replies[3 * position : 3 * position + 3]
            age = None
            if oldest:
                oldest_ms = int(_text(oldest[0][0]).partition("-")[0])
                age = max(0.0, now_s - oldest_ms / 1000.0)
            backlogs.append(ShardBacklog(shard, int(length), age, bool(leased)))
        return backlogs
