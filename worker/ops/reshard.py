"""Changing the shard count (``leadsync reshard N``) without breaking an ordering rule.

A lead key's shard is its hash modulo the count, so a new count moves most keys to
another shard; request ids, dead letters and a bulk stream's number name streams of one
layout. The count therefore changes only while the old layout holds nothing:

1. **Checks.** The bulk lane must be empty (its request ids name its streams by number;
   a backfill resumes after the reshard without sending a row twice).
2. **Freeze.** The reshard hash (``Keys.reshard()``) holds the target: every enqueue step
   refuses new work with BACKPRESSURE (retryable, nothing written; the HTTP API answers
   503 with Retry-After and stays ready), the workers keep draining and send partial
   calls without the flush wait.
3. **Drain.** Until every stream of the old layout is empty (settled entries are
   deleted, so an empty stream has nothing pending either).
4. **Switch.** No lease is taken any more; once none is held and no shard rests (a call
   whose outcome is unknown may still be applied by Marketo), one atomic step
   (``scripts/reshard_switch.lua``) checks all of it again, moves every dead letter to
   its lead's dead-letter stream in the new layout (with the stream number of the request
   id the app holds, so a replay answers that id) and the lead's written-fields record to
   its new shard, and stores the new count. The consumer groups of the new layout are made
   before.

From then on every step fences on the stored count: an enqueue placed by another count is
refused (RESHARDED n: the producer places it again by n), a lease asked by a worker with
another count is refused (the worker follows the new count), a replay of letters read by
another count is refused. So no lead has writes in streams of two layouts and every
ordering rule of one layout holds.

The reshard hash expires unless the command renews it (every poll): a command that dies
leaves intake refused for at most RESHARD_HOLD_MS, and the count unchanged. A timeout or
an error before the switch removes it at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from producers.contract import (
    KEY_RULE_FIELD,
    RESHARD_TO,
    SHARDS_FIELD,
    SOAP_KEY_RULE,
    InvalidLead,
    Keys,
    decode_lead,
    lead_key,
    shard_for,
    stream_index,
    text,
)
from worker.errors import ReshardError
from worker.ledger.redis import Ledger
from worker.lua import script
from worker.obs.stats import stored_shards
from worker.ops.dead_letters import DeadLetter, list_dead_letters

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: How long the reshard hash outlives the command's last renewal.
RESHARD_HOLD_MS: Final = 10_000
#: The largest count accepted (one KEDA trigger and two streams per shard).
MAX_SHARDS: Final = 1024

_LOOK: Final = script("worker.ops", "reshard_look.lua")
_LOOK_LUA: Final = _LOOK + "\nreturn look(tonumber(ARGV[1]))\n"
_SWITCH_LUA: Final = (
    script("worker.ledger", "lib.lua") + _LOOK + script("worker.ops", "reshard_switch.lua")
)
_BEGIN_LUA: Final = script("worker.ops", "reshard_begin.lua")


@dataclass(frozen=True, slots=True)
class LayoutLook:
    """One look at the old layout (``scripts/reshard_look.lua``)."""

    live: int
    bulk: int
    dead_letters: int
    leases: int
    resting: int
    switched: bool = False

    @property
    def entries(self) -> int:
        return self.live + self.bulk

    @property
    def quiet(self) -> bool:
        """Nothing of the layout waits, runs or may still be applied by Marketo."""
        return not (self.entries or self.leases or self.resting)

    def describe(self) -> str:
        return (
            f"{self.live} live and {self.bulk} bulk entries, {self.dead_letters} dead letters, "
            f"{self.leases} leases held, {self.resting} shards resting"
        )


@dataclass(frozen=True, slots=True)
class ReshardReport:
    """What ``leadsync reshard`` did: the counts, and how long intake was refused."""

    old: int | None
    new: int
    changed: bool
    frozen_s: float = 0.0
    #: Dead letters moved to their leads' streams in the new layout.
    moved_letters: int = 0


def _layout_keys(keys: Keys, old: int) -> list[str]:
    """What ``reshard_look.lua`` reads: the config and reshard hashes, each stream of the
    old layout with its dead-letter stream, each shard's lease and rest."""
    streams = [key for s in range(2 * old) for key in (keys.stream(s), keys.dead_letters(s))]
    shards = [key for s in range(old) for key in (keys.lease(s), keys.rest(s))]
    return [keys.config(), keys.reshard(), *streams, *shards]


async def _look(redis: Redis, keys: Keys, old: int) -> LayoutLook:
    layout = _layout_keys(keys, old)
    reply = await redis.eval(_LOOK_LUA, len(layout), *layout, old)  # type: ignore[misc]
    live, bulk, letters, leases, resting = (int(v) for v in reply)
    return LayoutLook(live, bulk, letters, leases, resting)


def _new_home(letter: DeadLetter, rule: str, new: int) -> int:
    """The shard of the letter's lead under ``new`` (shard 0 for a payload that cannot
    be read: its replay fails by itself wherever it waits)."""
    try:
        return shard_for(lead_key(decode_lead(letter.payload), rule), new)
    except InvalidLead:
        return 0


async def _switch(
    redis: Redis, keys: Keys, old: int, new: int, dead_letter_ttl_s: int
) -> tuple[LayoutLook, int]:
    """List the old layout's dead letters and run the switch step with their moves; the
    look it made and how many letters moved (0 unless it switched)."""
    stored_rule = await redis.hget(keys.config(), KEY_RULE_FIELD)
    rule = text(stored_rule) if stored_rule else SOAP_KEY_RULE
    letters = await list_dead_letters(redis, keys, old)
    layout = _layout_keys(keys, old)
    extra: list[str] = []

    def index(key: str) -> int:
        extra.append(key)
        return len(layout) + len(extra)  # Lua's KEYS is 1-based

    moves, records = [], {}
    for letter in letters:
        home = _new_home(letter, rule, new)
        target = stream_index(home, new, "bulk" if letter.bulk else "live")
        moves.append(
            [letter.shard, letter.dlq_id, index(keys.dead_letters(target)), letter.request_stream]
        )
        if letter.key_hash:
            before = keys.written_fields(letter.home, letter.key_hash)
            records[before] = keys.written_fields(home, letter.key_hash)
    fields = [[index(before), index(after)] for before, after in records.items()]
    plan = json.dumps({"l": moves, "f": fields}, separators=(",", ":"))
    reply = await redis.eval(  # type: ignore[misc]
        _SWITCH_LUA, len(layout) + len(extra), *layout, *extra, old, new, dead_letter_ttl_s, plan
    )
    live, bulk, letters_left, leases, resting, switched = (int(v) for v in reply)
    look = LayoutLook(live, bulk, letters_left, leases, resting, bool(switched))
    return look, len(letters) if look.switched else 0


async def _hold(redis: Redis, keys: Keys, new: int, how: str, phase: str = "freeze") -> str:
    """``start`` (or resume), ``renew`` or ``move`` the reshard to ``phase``; the phase
    it is in now (``scripts/reshard_begin.lua``)."""
    held, current = await redis.eval(  # type: ignore[misc]
        _BEGIN_LUA, 1, keys.reshard(), new, phase, how, RESHARD_HOLD_MS
    )
    if int(held) != 1 and not current:
        raise ReshardError(
            "the reshard was given up (`leadsync reshard --abort`) or its hold lapsed; "
            "nothing changed"
        )
    if int(held) != 1:
        raise ReshardError(
            f"a reshard to {text(current)} is under way; finish it with "
            f"`leadsync reshard {text(current)}` (or wait {RESHARD_HOLD_MS // 1000} s after "
            "its command stopped)"
        )
    return text(current)


async def abort(redis: Redis, keys: Keys, new: int) -> bool:
    """Give up a reshard to ``new`` that did not switch: intake and leases go on under the
    old count. Whether one was under way."""
    if await redis.hget(keys.reshard(), RESHARD_TO) != str(new).encode():
        return False
    return bool(await redis.delete(keys.reshard()))


async def reshard(
    redis: Redis,
    keys: Keys,
    new: int,
    *,
    timeout_s: float,
    poll_s: float = 0.2,
    dead_letter_ttl_s: int = 7 * 24 * 3600,
    on_look: Callable[[str, LayoutLook], None] | None = None,
) -> ReshardReport:
    """Change the stored shard count to ``new`` (see the module docstring). Raises
    ReshardError when something stands in the way or the old layout did not empty
    within ``timeout_s``; the old count then stays in force. ``on_look`` hears the
    phase and each look while it waits."""
    if not 1 <= new <= MAX_SHARDS:
        raise ReshardError(f"the shard count must be 1..{MAX_SHARDS}")
    old = await stored_shards(redis, keys)
    under_way = await redis.hget(keys.reshard(), RESHARD_TO)
    if old is None:  # nothing stored yet: the first writer's count is this one
        await redis.hsetnx(keys.config(), SHARDS_FIELD, new)
        return ReshardReport(None, new, changed=True)
    if old == new and under_way is None:
        return ReshardReport(old, new, changed=False)
    if under_way is None:
        look = await _look(redis, keys, old)
        if look.bulk:
            raise ReshardError(
                f"the bulk lane holds {look.bulk} entries, whose request ids name its streams "
                "by number: let it drain (stop the backfill; `leadsync backfill` resumes "
                "without resending a row), then reshard"
            )
    started = time.monotonic()
    deadline = started + timeout_s
    switched = False
    try:
        phase = await _hold(redis, keys, new, "start")
        while True:
            look = await _look(redis, keys, old)
            if on_look is not None:
                on_look(phase, look)
            if phase == "switch" and look.quiet:
                look, moved = await _switch(redis, keys, old, new, dead_letter_ttl_s)
                if look.switched:
                    switched = True
                    return ReshardReport(
                        old, new, True, time.monotonic() - started, moved_letters=moved
                    )
            if phase == "freeze" and not look.entries:
                # Groups first: the first drain under the new count finds its streams.
                await Ledger(redis, keys, result_ttl_s=1).ensure_groups(2 * new)
                phase = await _hold(redis, keys, new, "move", "switch")
                continue
            if time.monotonic() > deadline:
                raise ReshardError(
                    f"the old layout did not quiet down in {timeout_s:g} s "
                    f"({phase}: {look.describe()}); nothing changed, the count stays {old}"
                )
            await asyncio.sleep(poll_s)
            phase = await _hold(redis, keys, new, "renew")
    finally:
        if not switched:
            await abort(redis, keys, new)
