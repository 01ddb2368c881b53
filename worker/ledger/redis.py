"""The Redis Stream ledger: one stream per shard with consumer group ``workers``.

An entry stays in its stream (and in the group's pending list once read) until its
outcome is written. A lease per shard keeps at most one batch per shard in flight, and
every ledger write is fenced by it: :meth:`Ledger.claim`, :meth:`Ledger.bump_attempts`
and :meth:`Ledger.settle` check the caller's lease token inside their Lua step, so a
worker paused past its lease can neither steal, count, commit nor dead-letter entries
another worker now owns (it gets :class:`LeaseLost`). The work stream is never trimmed
with MAXLEN. The scripts live in ``scripts/``, one file per step.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from producers.contract import (
    KEY_RULE_FIELD,
    KEY_RULE_REFRESH_S,
    RESHARD_PHASE,
    SHARDS_FIELD,
    Keys,
    Outcome,
    adopt_shards,
    entry_time_s,
    parse_request_id,
    text,
)
from worker.errors import LeaseLost
from worker.failover import GUARD_LUA, lease_quiet_s
from worker.ledger.base import Claimed, RawEntry, Settlement, ShardBacklog
from worker.lua import COMPARE_AND_DELETE_LUA

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.settings import Settings

logger = logging.getLogger(__name__)

_SCRIPT_DIR = resources.files("worker.ledger").joinpath("scripts")
_LIB = _SCRIPT_DIR.joinpath("lib.lua").read_text(encoding="utf-8")
#: Every step of the ledger (one file each in ``scripts/``), with ``lib.lua`` in front
#: (and the failover guard: only ``acquire_lease`` calls it). Releasing a lease is the
#: shared compare-and-delete (``worker/lua/compare_and_delete.lua``).
SCRIPTS = {
    path.name.removesuffix(".lua"): _LIB + GUARD_LUA + path.read_text(encoding="utf-8")
    for path in sorted(_SCRIPT_DIR.iterdir(), key=lambda p: p.name)
    if path.name.endswith(".lua") and path.name != "lib.lua"
} | {"release_lease": COMPARE_AND_DELETE_LUA}


def _entry(entry_id: Any, fields: Any) -> RawEntry | None:
    """Decode one entry: a field/value mapping (redis-py) or flat list (from Lua)."""
    if not fields:
        return None
    pairs = (
        fields.items() if isinstance(fields, dict) else zip(fields[::2], fields[1::2], strict=True)
    )
    decoded = {text(k): text(v) for k, v in pairs}
    request_stream = decoded.get("r", "")
    return RawEntry(
        text(entry_id),
        decoded.get("k", ""),
        decoded.get("p", ""),
        decoded.get("o") or None,
        decoded.get("f") == "1",
        int(request_stream) if request_stream.isdigit() else None,
    )


def load_scripts(redis: Redis) -> dict[str, AsyncScript]:
    """Every ledger step registered on ``redis`` (EVALSHA, loaded on demand)."""
    return {name: redis.register_script(body) for name, body in SCRIPTS.items()}  # type: ignore[misc]


class Ledger:
    """Reads, leases and settles the shard streams of one key prefix."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        result_ttl_s: int,
        dead_letter_ttl_s: int = 7 * 24 * 3600,
        replicas: int = 0,
        replica_wait_s: float = 1.0,
        lease_quiet_s: float = 0.0,
    ) -> None:
        """``replicas``: how many must confirm (WAIT) a lease, renewal, rest or settle
        before a call relies on it; ``lease_quiet_s``: no lease after a master change for
        this long (``worker.failover``)."""
        self.redis = redis
        self.keys = keys
        self.result_ttl_s = result_ttl_s
        self.dead_letter_ttl_s = dead_letter_ttl_s
        self.replicas = replicas
        self.replica_wait_s = replica_wait_s
        self.lease_quiet_s = lease_quiet_s
        #: The agreed shard count (:meth:`agree_shards`): streams numbered from it on are
        #: the shards' bulk lanes; 0 until agreed (every number is then a live shard).
        self.shards = 0
        self._scripts = load_scripts(redis)

    def home(self, shard: int) -> int:
        """The shard a stream number belongs to: a bulk stream shares its shard's lease,
        rest, written-fields records and id sequence, so a lead's live and bulk writes
        are never in two calls at once and keep their order."""
        return shard - self.shards if self.is_bulk(shard) else shard

    def is_bulk(self, shard: int) -> bool:
        return 0 < self.shards <= shard

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings) -> Ledger:
        return cls(
            redis,
            Keys(settings.key_prefix),
            result_ttl_s=settings.result_ttl_s,
            dead_letter_ttl_s=settings.dead_letter_ttl_s,
            replicas=settings.enqueue_replicas,
            replica_wait_s=settings.replica_wait_s,
            lease_quiet_s=lease_quiet_s(settings),
        )

    async def _step(self, name: str, keys: list[str], args: list[Any]) -> tuple[Any, bool]:
        """Run one step; with replicas wanted, WAIT for them on the same connection (WAIT
        covers the writes made before it on its connection, and every earlier write of
        the master's). The reply, and whether enough replicas confirmed."""
        script = self._scripts[name]
        if not self.replicas:
            return await script(keys=keys, args=args), True
        pipe = self.redis.pipeline(transaction=False)
        await script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.replicas, _ms(self.replica_wait_s))
        reply, seen = await pipe.execute()
        if int(seen) < self.replicas:
            logger.warning(
                "%s: %d of %d replica(s) confirmed in %g s",
                name,
                seen,
                self.replicas,
                self.replica_wait_s,
            )
        return reply, int(seen) >= self.replicas

    # --- setup --------------------------------------------------------------------

    async def agree_shards(self, configured: int) -> int:
        """Adopt the shard count stored in Redis (first writer wins), so producers and
        workers always hash keys onto the same streams."""
        config = self.keys.config()
        await self.redis.hsetnx(config, SHARDS_FIELD, configured)
        self.shards = adopt_shards(await self.redis.hget(config, SHARDS_FIELD), configured, config)
        return self.shards

    async def follow_shards(self) -> str | None:
        """Adopt the stored shard count if ``leadsync reshard`` changed it; the phase of a
        reshard under way (``freeze`` or ``switch``), or None."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.config(), SHARDS_FIELD)
        pipe.hget(self.keys.reshard(), RESHARD_PHASE)
        stored, phase = await pipe.execute()
        if stored is not None and int(text(stored)) != self.shards:
            await self._adopt_shards(int(text(stored)))
        return text(phase) if phase is not None else None

    async def _adopt_shards(self, shards: int) -> None:
        """Number streams by ``shards`` from now on (the count a reshard stored); its
        streams' consumer groups are made if missing."""
        if shards == self.shards or shards < 1:
            return
        logger.warning("shard count changed from %d to %d; following it", self.shards, shards)
        await self.ensure_groups(2 * shards)
        self.shards = shards

    async def store_key_rule(self, rule: str) -> None:
        """Store how lead keys are made (``producers.lead.key_rule``: this worker's
        protocol and REST lookup field): producers read it, so a lead's writes are ordered
        and kept out of concurrent calls by the key Marketo matches on. The worker's word
        wins; a different stored rule is replaced, loudly (keys already enqueued under it
        were ordered by another key: drain before switching protocols)."""
        config = self.keys.config()
        previous = await self.redis.hget(config, KEY_RULE_FIELD)
        if previous is not None and text(previous) != rule:
            logger.warning(
                "lead key rule changed from %s to %s in %s; restart or wait %.0f s for "
                "producers to follow",
                text(previous),
                rule,
                config,
                KEY_RULE_REFRESH_S,
            )
        await self.redis.hset(config, KEY_RULE_FIELD, rule)

    async def ensure_groups(self, shards: int | Iterable[int]) -> int:
        """Create the consumer group of each shard at id 0 (never $: that would skip a
        backlog); return how many were missing."""
        created = 0
        for shard in range(shards) if isinstance(shards, int) else shards:
            try:
                await self.redis.xgroup_create(
                    self.keys.stream(shard), Keys.GROUP, id="0", mkstream=True
                )
                created += 1
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        return created

    # --- lease --------------------------------------------------------------------

    async def acquire_lease(self, shard: int, ttl_s: float) -> str | None:
        """A token when this caller now holds the shard; None when another holder has it
        or the shard rests (on Redis's clock: whoever asks, the rest holds)."""
        token = secrets.token_hex(8)
        reply, confirmed = await self._step(
            "acquire_lease",
            [
                self.keys.lease(self.home(shard)),
                self.keys.rest(self.home(shard)),
                self.keys.failover(),
                self.keys.config(),
                self.keys.reshard(),
            ],
            [token, _ms(ttl_s), repr(self.lease_quiet_s), self.shards or ""],
        )
        if int(reply[0]) != 1:
            if text(reply[1]) == "resharded":
                await self._adopt_shards(int(text(reply[2])))
            return None
        if not confirmed:
            # A lease a failover could roll back (or one taken on a stale master that
            # no replica follows) must not cover a call: give it up.
            await self.release_lease(shard, token)
            return None
        return token

    async def renew_lease(self, shard: int, token: str, ttl_s: float) -> None:
        """Extend the lease; raise LeaseLost when it is no longer ours, or when its
        replicas did not confirm the renewal (the call it would cover must not go)."""
        renewed, confirmed = await self._step(
            "renew_lease", [self.keys.lease(self.home(shard))], [token, _ms(ttl_s)]
        )
        if not renewed:
            raise LeaseLost(shard, "renew")
        if not confirmed:
            raise LeaseLost(shard, "renew (not replicated)")

    async def release_lease(self, shard: int, token: str, *, patience_s: float = 0.0) -> None:
        """Give the lease back. With ``patience_s``, a Redis that does not answer (a
        failover under way) is asked again for that long: a lease left to expire holds
        its shard still for the rest of its TTL."""
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(patience_s),
            wait=wait_fixed(_RELEASE_RETRY_S),
            retry=retry_if_exception_type((RedisConnectionError, RedisTimeoutError)),
            reraise=True,
        ):
            with attempt:
                await self._scripts["release_lease"](
                    keys=[self.keys.lease(self.home(shard))], args=[token]
                )

    # --- reading --------------------------------------------------------------------

    async def claim(
        self,
        shard: int,
        token: str,
        consumer: str,
        *,
        count: int,
        lease_ttl_s: float,
        cursor: str = "0-0",
    ) -> Claimed:
        """Up to ``count`` entries for the lease holder: pending entries first (from
        ``cursor`` on; any consumer's, since the lease makes this caller the only one
        working the shard), and never-delivered ones only once the whole pending list
        was claimed. Renews the lease. A consumer group lost with Redis's data is
        recreated at id 0 (and reported in ``groups_recreated``)."""
        recreated = False
        try:
            reply = await self._claim(shard, token, consumer, count, lease_ttl_s, cursor)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            recreated = await self.ensure_groups([shard]) > 0
            await self.redis.hset(self.keys.groups_recreated(), str(shard), f"{time.time():.3f}")
            await self.redis.expire(self.keys.groups_recreated(), 7 * 24 * 3600)
            logger.error(
                "shard %d: consumer group was missing (Redis lost its data?); recreated at 0",
                shard,
            )
            reply = await self._claim(shard, token, consumer, count, lease_ttl_s, cursor)
        if int(reply[0]) != 1:
            raise LeaseLost(shard, "claim")
        entries = [e for e in (_entry(i, f) for i, f in reply[2]) if e is not None]
        return Claimed(entries, text(reply[1]), recreated)

    async def _claim(
        self, shard: int, token: str, consumer: str, count: int, ttl_s: float, cursor: str
    ) -> Any:
        # A bulk stream is read only while its shard's live stream is empty: a live write
        # waiting (newer or older than the bulk ones) goes first.
        home = self.home(shard)
        return await self._scripts["claim"](
            keys=[self.keys.lease(home), self.keys.stream(shard), self.keys.stream(home)],
            args=[token, _ms(ttl_s), Keys.GROUP, consumer, cursor, count],
        )

    # --- writing ----------------------------------------------------------------------

    async def bump_attempts(self, shard: int, token: str, entry_ids: Sequence[str]) -> list[int]:
        """Count one more call for each entry (before it is sent: a crash counts too)."""
        if not entry_ids:
            return []
        keys = [self.keys.lease(self.home(shard)), self.keys.attempts(shard)]
        places: dict[str, int] = {}
        args: list[Any] = [token, self.dead_letter_ttl_s]
        for entry_id in entry_ids:
            part, field = self.keys.attempts_slot(shard, entry_id)
            if part not in places:
                keys.append(part)
                places[part] = len(keys)  # Lua's KEYS is 1-based
            args += [places[part], field, entry_id]
        reply = await self._scripts["bump_attempts"](keys=keys, args=args)
        if int(reply[0]) != 1:
            raise LeaseLost(shard, "attempt count")
        return [int(n) for n in reply[1:]]

    async def settle(self, shard: int, token: str, settlement: Settlement) -> int:
        """Write a cycle's outcomes, acknowledgements, dead letters and refunds in one
        fenced atomic step; return how many outcomes were written (a terminal outcome
        is never rewritten). Raise LeaseLost, writing nothing, when the lease is gone."""
        if not settlement:
            return 0
        home = self.home(shard)
        keys = [
            self.keys.lease(home),
            self.keys.stream(shard),
            self.keys.attempts(shard),
            self.keys.dead_letters(shard),
        ]

        places: dict[str, int] = {}

        def index(key: str) -> int:
            if key not in places:
                keys.append(key)
                places[key] = len(keys)  # Lua's KEYS is 1-based
            return places[key]

        def outcome(o: Outcome) -> list[object]:
            # The id's own stream: a moved letter's replay answers an id of the old layout.
            stream, entry_id = parse_request_id(o.request_id)
            bucket, field = self.keys.outcome_slot(stream, entry_id)
            return [index(bucket), field, o.pack(), index(self.keys.outcome(stream, entry_id))]

        def counter(entry_id: str) -> list[object]:
            part, field = self.keys.attempts_slot(shard, entry_id)
            return [index(part), field]

        plan = {
            "o": [outcome(o) for o in settlement.outcomes],
            "a": [[e, *counter(e)] for e in settlement.acks],
            "d": [
                [
                    entry.entry_id,
                    entry.first_id,
                    entry.key_hash,
                    entry.payload,
                    error,
                    code,
                    attempts,
                    index(self.keys.written_fields(home, entry.key_hash)) if entry.key_hash else 0,
                    -1 if entry.request_stream is None else entry.request_stream,
                ]
                for entry, error, code, attempts in settlement.dead
            ],
            "r": [counter(e) for e in settlement.refunds],
            "w": [
                [index(self.keys.written_fields(home, key_hash)), write_id, list(fields)]
                for key_hash, write_id, fields in settlement.written
            ],
            # A bulk entry settled: its lead waits for one bulk write less.
            "b": [
                index(self.keys.written_fields(home, key_hash))
                for key_hash in (settlement.settled_keys if self.is_bulk(shard) else ())
                if key_hash
            ],
        }
        # Not confirmed: logged; the next lease waits for the replicas before any call.
        written, _ = await self._step(
            "settle",
            keys,
            [
                token,
                Keys.GROUP,
                self.result_ttl_s,
                self.dead_letter_ttl_s,
                json.dumps(plan, separators=(",", ":")),
            ],
        )
        if int(written) < 0:
            raise LeaseLost(shard, "settle")
        return int(written)

    async def written_fields(
        self, shard: int, key_hashes: Iterable[str]
    ) -> dict[str, dict[str, str]]:
        """For leads with parked writes: each field a later applied write set, with the id
        of the newest write that set it (see ``settle.lua``)."""
        hashes = sorted(set(key_hashes))
        if not hashes:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for key_hash in hashes:
            pipe.hgetall(self.keys.written_fields(self.home(shard), key_hash))
        replies = await pipe.execute()
        return {
            key_hash: {text(k): text(v) for k, v in reply.items() if not text(k).startswith("~")}
            for key_hash, reply in zip(hashes, replies, strict=True)
            if reply
        }

    async def attempts(self, shard: int, entry_ids: Sequence[str]) -> list[int]:
        """The calls counted for each entry (0 when none): its sub-hash's counter, or one
        the previous version kept in the stream's one hash."""
        if not entry_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.hget(*self.keys.attempts_slot(shard, entry_id))
        pipe.hmget(self.keys.attempts(shard), list(entry_ids))
        *parts, legacy = await pipe.execute()
        return [int(p or 0) + int(v or 0) for p, v in zip(parts, legacy, strict=True)]

    async def prune_consumers(self, shards: int, idle_s: float) -> int:
        """Delete consumers that hold nothing and were idle ``idle_s``: every worker process
        joins the group under its own name, and dead names would pile up. A consumer with
        pending entries is kept (deleting it would make them unclaimable)."""
        removed = 0
        for shard in range(shards):
            stream = self.keys.stream(shard)
            try:
                consumers = await self.redis.xinfo_consumers(stream, Keys.GROUP)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                    raise
                continue
            for consumer in consumers:
                if int(consumer["pending"]) == 0 and int(consumer["idle"]) >= idle_s * 1000:
                    await self.redis.xgroup_delconsumer(stream, Keys.GROUP, consumer["name"])
                    removed += 1
        return removed

    # --- resting after faults --------------------------------------------------------

    async def rest(self, shard: int, delay_s: float) -> float:
        """Keep every sender off the shard for ``delay_s`` from now on Redis's clock (the
        stored time decides; the key's expiry only collects it). A longer rest already
        set stays. Returns how long the shard now rests."""
        # Not confirmed: logged; no lease is confirmed before the replicas have it.
        left, _ = await self._step(
            "rest", [self.keys.rest(self.home(shard))], [repr(delay_s), repr(_REST_GC_S)]
        )
        return float(text(left))

    async def rest_streak(self, shard: int) -> int:
        """One more failed cycle in a row for this shard; the new count."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(self.keys.rest_streak(self.home(shard)))
        pipe.expire(self.keys.rest_streak(self.home(shard)), 3600)
        streak, _ = await pipe.execute()
        return int(streak)

    async def clear_rest_streak(self, shard: int) -> None:
        await self.redis.delete(self.keys.rest_streak(self.home(shard)))

    # --- inspection ------------------------------------------------------------------

    async def backlogs(self, shards: int, now_s: float | None = None) -> list[ShardBacklog]:
        """XLEN, oldest entry, lease and rest of every shard in one round trip."""
        return await self.backlogs_of(range(shards), now_s)

    async def backlogs_of(
        self, shards: Iterable[int], now_s: float | None = None
    ) -> list[ShardBacklog]:
        now_s = time.time() if now_s is None else now_s
        shards = list(shards)
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()  # a rest is stored on Redis's clock
        for shard in shards:
            pipe.xlen(self.keys.stream(shard))
            pipe.xrange(self.keys.stream(shard), count=1)
            pipe.exists(self.keys.lease(self.home(shard)))
            pipe.get(self.keys.rest(self.home(shard)))
        (seconds, micros), *replies = await pipe.execute()
        redis_now_s = float(seconds) + micros / 1_000_000
        backlogs = []
        for position, shard in enumerate(shards):
            length, oldest, leased, rest_until = replies[4 * position : 4 * position + 4]
            age = None
            if oldest:
                age = max(0.0, now_s - entry_time_s(text(oldest[0][0])))
            resting = rest_until is not None and float(text(rest_until)) > redis_now_s
            backlogs.append(ShardBacklog(shard, int(length), age, bool(leased) or resting))
        return backlogs


#: How often a lease release is tried again while Redis does not answer.
_RELEASE_RETRY_S = 0.25
#: A rest key outlives its stored time by this much; the stored time decides.
_REST_GC_S = 60.0


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
