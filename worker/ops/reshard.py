"""Changing the shard count (``leadsync reshard N``) without breaking an ordering rule.

A lead key's shard is its hash modulo the count, so a new count moves most keys to
another shard; request ids, dead letters and a bulk stream's number name streams of one
layout. The count therefore changes only while the old layout holds nothing:

1. **Checks.** The bulk lane must be empty (a backfill resumes after the reshard, its
   rows are never sent twice) and no dead letter may wait (a letter's replay and request
   id name its stream in the old layout): replay or drop them first.
2. **Freeze.** The reshard hash (``Keys.reshard()``) holds the target: every enqueue step
   refuses new work with BACKPRESSURE (retryable, nothing written; the HTTP API answers
   503 with Retry-After and stays ready), the workers keep draining and send partial
   calls without the flush wait.
3. **Drain.** Until every stream of the old layout is empty (settled entries are
   deleted, so an empty stream has nothing pending either).
4. **Switch.** No lease is taken any more; once none is held and no shard rests (a call
   whose outcome is unknown may still be applied by Marketo), one atomic step
   (``scripts/reshard_look.lua``) checks all of it again and stores the new count. The
   consumer groups of the new layout are made before.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from producers.contract import Keys, text
from worker.errors import ReshardError
from worker.ledger.redis import Ledger
from worker.lua import script
from worker.obs.stats import stored_shards

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: How long the reshard hash outlives the command's last renewal.
RESHARD_HOLD_MS: Final = 10_000
#: The largest count accepted (one KEDA trigger and two streams per shard).
MAX_SHARDS: Final = 1024

_LOOK_LUA: Final = script("worker.ops", "reshard_look.lua")
_BEGIN_LUA: Final = script("worker.ops", "reshard_begin.lua")


@dataclass(frozen=True, slots=True)
class LayoutLook:
    """One look at the old layout (``scripts/reshard_look.lua``)."""

    live: int
    bulk: int
    dead_letters: int
    leases: int
    resting: int
    switched: bool

    @property
    def entries(self) -> int:
        return self.live + self.bulk

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


async def _look(redis: Redis, keys: Keys, old: int, new: int, *, switch: bool) -> LayoutLook:
    streams = [key for s in range(2 * old) for key in (keys.stream(s), keys.dead_letters(s))]
    shards = [key for s in range(old) for key in (keys.lease(s), keys.rest(s))]
    reply = await redis.eval(  # type: ignore[misc]
        _LOOK_LUA,
        2 + len(streams) + len(shards),
        keys.config(),
        keys.reshard(),
        *streams,
        *shards,
        old,
        new,
        "1" if switch else "0",
    )
    live, bulk, letters, leases, resting, switched = (int(v) for v in reply)
    return LayoutLook(live, bulk, letters, leases, resting, bool(switched))


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
    if await redis.hget(keys.reshard(), "to") != str(new).encode():
        return False
    return bool(await redis.delete(keys.reshard()))


async def reshard(
    redis: Redis,
    keys: Keys,
    new: int,
    *,
    timeout_s: float,
    poll_s: float = 0.2,
    on_look: Callable[[str, LayoutLook], None] | None = None,
) -> ReshardReport:
    """Change the stored shard count to ``new`` (see the module docstring). Raises
    ReshardError when something stands in the way or the old layout did not empty
    within ``timeout_s``; the old count then stays in force. ``on_look`` hears the
    phase and each look while it waits."""
    if not 1 <= new <= MAX_SHARDS:
        raise ReshardError(f"the shard count must be 1..{MAX_SHARDS}")
    old = await stored_shards(redis, keys)
    under_way = await redis.hget(keys.reshard(), "to")
    if old is None:  # nothing stored yet: the first writer's count is this one
        await redis.hsetnx(keys.config(), "shards", new)
        return ReshardReport(None, new, changed=True)
    if old == new and under_way is None:
        return ReshardReport(old, new, changed=False)
    if under_way is None:
        look = await _look(redis, keys, old, new, switch=False)
        if look.bulk or look.dead_letters:
            raise ReshardError(
                f"the old layout holds {look.bulk} bulk entries and {look.dead_letters} "
                "dead letters: their request ids name its streams. Let the bulk lane drain "
                "(stop the backfill; `leadsync backfill` resumes without resending) and "
                "replay or drop the dead letters (`leadsync dlq`), then reshard"
            )
    started = time.monotonic()
    deadline = started + timeout_s
    switched = False
    try:
        phase = await _hold(redis, keys, new, "start")
        while True:
            look = await _look(redis, keys, old, new, switch=phase == "switch")
            if on_look is not None:
                on_look(phase, look)
            if look.switched:
                switched = True
                return ReshardReport(old, new, changed=True, frozen_s=time.monotonic() - started)
            if phase == "freeze" and not look.entries:
                if look.dead_letters:
                    raise ReshardError(
                        f"{look.dead_letters} writes were dead-lettered while the streams "
                        "drained; replay or drop them (`leadsync dlq`), then reshard"
                    )
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
