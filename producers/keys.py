"""Every Redis key name leadsync uses, in one place."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import ClassVar, Final

#: The span of enqueue times whose outcomes share one bucket hash (part of the stored
#: format: readers find an outcome by it). 10 s keeps a bucket listpack-encoded up to
#: ~50 upserts/s per shard and still shares it between a few upserts at 1 per 10 s.
OUTCOME_BUCKET_MS: Final = 10_000
#: A stream's attempt counters are spread over this many sub-hashes by entry id
#: (``Keys.attempts_slot``), so that each stays a listpack hash (~15 B a counter; Redis
#: turns a hash of more than ``hash-max-listpack-entries`` fields, 512 by default, into a
#: regular hash at ~90 B a field): 16 keep ~1,500 pending counters per stream under 128
#: fields each, the lowest that setting is commonly given.
ATTEMPTS_PARTS: Final = 16


@dataclass(frozen=True, slots=True)
class Keys:
    """Redis key names. A shard's keys share the hash tag ``{s}`` so that its atomic
    steps (commit = outcomes + XACK + XDEL) also work on Redis Cluster."""

    prefix: str = "leadsync"

    GROUP: ClassVar[str] = "workers"

    def stream(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}:outbox"

    def lease(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}:lease"

    def attempts(self, shard: int) -> str:
        """The previous version's attempt counters: one hash per stream. Still read and
        emptied (a counter moves to its sub-hash at its next count, and goes at settle),
        so an upgrade forgets no attempt."""
        return f"{self.prefix}:{{{shard}}}:attempts"

    def attempts_slot(self, shard: int, entry_id: str) -> tuple[str, str]:
        """Where the attempt counter of the stream's entry ``entry_id`` is kept: (sub-hash,
        field). The sub-hash is one of ATTEMPTS_PARTS, by a CRC-32 of the id; the field is
        the id as one integer, ``ms << 20 | seq``, which a listpack stores in 9 bytes where
        the id's text takes 15 (the id itself when it does not fit: never the same field)."""
        ms, _, seq = entry_id.partition("-")
        part = zlib.crc32(entry_id.encode("ascii")) % ATTEMPTS_PARTS
        packed = int(ms) << 20 | int(seq or 0)
        field = str(packed) if int(seq or 0) < 1 << 20 and packed < 1 << 63 else entry_id
        return f"{self.prefix}:{{{shard}}}:attempts:{part}", field

    def outcome(self, shard: int, entry_id: str) -> str:
        """The previous version's outcome: one hash per request. Still read (and removed
        when an outcome is written over it), so an upgrade loses no outcome."""
        return f"{self.prefix}:{{{shard}}}:outcome:{entry_id}"

    def outcome_slot(self, shard: int, entry_id: str) -> tuple[str, str]:
        """Where an outcome is stored: (bucket hash, field). A bucket holds the outcomes of
        the shard's entries enqueued in one OUTCOME_BUCKET_MS window (Redis keeps a hash
        of up to 512 short fields listpack-encoded: ~30 B per outcome, where a key per
        outcome costs ~230 B), and expires LEADSYNC_RESULT_TTL_S after its last write;
        the field is the entry id's place in the window."""
        ms, _, seq = entry_id.partition("-")
        bucket, offset = divmod(int(ms), OUTCOME_BUCKET_MS)
        return f"{self.prefix}:{{{shard}}}:outcomes:{bucket}", f"{offset}-{seq or 0}"

    def written_fields(self, shard: int, key_hash: str) -> str:
        """While a lead has parked writes: each field a later write set, with the id of
        the newest write that set it (a replay never reverts those)."""
        return f"{self.prefix}:{{{shard}}}:fields:{key_hash}"

    def sequence(self, shard: int) -> str:
        """The last entry id given in the shard's two streams (live and bulk): their ids
        are one sequence (``producers/scripts/next_id.lua``)."""
        return f"{self.prefix}:{{{shard}}}:seq"

    def dead_letters(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}:dlq"

    def rest(self, shard: int) -> str:
        """Until when the shard rests after transient faults (Unix seconds)."""
        return f"{self.prefix}:{{{shard}}}:rest"

    def rest_streak(self, shard: int) -> str:
        """Failed cycles in a row of the shard (the rest grows with it)."""
        return f"{self.prefix}:{{{shard}}}:rest-streak"

    def admission(self) -> str:
        """HASH used, max: Redis's memory as the enqueue steps last read it (100 ms TTL;
        ``producers/scripts/admit.lua``)."""
        return f"{self.prefix}:admission"

    def failover(self) -> str:
        """HASH run_id, changed_at: the master the granting steps last ran on
        (``worker/failover.lua``)."""
        return f"{self.prefix}:failover"

    def groups_recreated(self) -> str:
        """Shard -> when its consumer group was found missing and recreated."""
        return f"{self.prefix}:groups-recreated"

    def config(self) -> str:
        return f"{self.prefix}:config"

    def reshard(self) -> str:
        """HASH to, phase while ``leadsync reshard`` changes the shard count (the enqueue,
        lease and replay steps read it). It expires unless the command keeps renewing it,
        so a command that dies never leaves intake refused."""
        return f"{self.prefix}:reshard"

    def known_fields(self) -> str:
        """The lead fields a worker learned from Marketo's describe (a hash: each
        case-folded spelling -> the name, plus ``@learned_at``, ``@source``, ``@count``;
        ``producers.known_fields``), replaced whole at each refresh."""
        return f"{self.prefix}:fields"

    def control(self, name: str) -> str:
        return f"{self.prefix}:control:{name}"

    def ticket(self, name: str) -> str:
        """HASH t, n, i: the last step enqueued under the ticket ``name`` (a backfill's
        journal) and the stream numbers and entry ids it wrote, so that the step sent
        again after a crash is answered with them instead of written twice."""
        return f"{self.prefix}:ticket:{name}"

    def ring(self, shard: int) -> str:
        """Set while a drain message for the shard waits for a worker (the tick rings once)."""
        return self.control(f"ring:{shard}")

    def prune_turn(self) -> str:
        """Held by the tick that removes gone consumers, at most once per interval."""
        return self.control("prune")

    def heartbeat(self, hostname: str) -> str:
        """When a pod's worker processes last showed they are alive."""
        return self.stats(f"heartbeat:{hostname}")

    def rest_token(self, client_digest: str) -> str:
        """The cluster's REST access token of one LaunchPoint service (hashed client id)."""
        return f"{self.prefix}:{{limits}}:rest-token:{client_digest}"

    def stats(self, name: str) -> str:
        return f"{self.prefix}:stats:{name}"

    def api_keys(self) -> str:
        """The HTTP API's keys: sha256 hex of a key -> its record (name, scopes, rate)."""
        return f"{self.prefix}:api:keys"

    def api_key_names(self) -> str:
        """The HTTP API's key names -> the sha256 hex of the key (one key per name)."""
        return f"{self.prefix}:api:key-names"

    def api_rate(self, key_digest: str, second: int) -> str:
        """Requests of one API key in one wall-clock second (its per-key rate)."""
        return f"{self.prefix}:api:rate:{key_digest}:{second}"

    def api_auth_failures(self, client_digest: str) -> str:
        """Failed authentications of one client (hashed address, or hashed presented key)
        in the current window of LEADSYNC_API_AUTH_FAILURE_WINDOW_S."""
        return f"{self.prefix}:api:auth-failures:{client_digest}"

    def api_idempotency(self, key_name: str, route: str, idempotency_digest: str) -> str:
        """The answer to an Idempotency-Key of one API key on one route (or a marker while
        the first request with it is being served)."""
        return f"{self.prefix}:api:idem:{key_name}:{route}:{idempotency_digest}"


@dataclass(frozen=True, slots=True)
class LimiterKeys:
    """Key names of the limiter. One hash tag for all: one Lua step touches them all."""

    prefix: str

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{{limits}}:{name}"

    @property
    def window(self) -> str:
        return self._key("window")

    @property
    def slots(self) -> str:
        return self._key("slots")

    @property
    def cooldown(self) -> str:
        return self._key("cooldown")

    @property
    def hold(self) -> str:
        return self._key("hold")

    @property
    def spacing(self) -> str:
        return self._key("spacing")

    @property
    def failover(self) -> str:
        """The same key as ``Keys.failover()``: leases and permits share one guard."""
        return Keys(self.prefix).failover()

    def quota(self, day: str) -> str:
        return self._key(f"quota:{day}")

    def bulk_quota(self, day: str) -> str:
        """The bulk lane's calls in the quota day (its own budget, LEADSYNC_BULK_DAILY_CALLS)."""
        return self._key(f"bulk-quota:{day}")
