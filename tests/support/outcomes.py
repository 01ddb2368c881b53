"""Stored outcomes as tests read them, in either stored form: the packed value in its
bucket hash (``Keys.outcome_slot``) or the previous version's hash (``Keys.outcome``)."""

from __future__ import annotations

from typing import Any

from producers.contract import Keys, Outcome
from producers.wire import parse_request_id


def decode(request: str, packed: Any, fields: Any) -> Outcome | None:
    """The outcome of ``request`` from the replies of HGET (slot) and HGETALL (legacy)."""
    if packed:
        return Outcome.unpack(request, packed)
    return Outcome.from_fields(request, fields) if fields else None


async def stored(redis: Any, keys: Keys, request: str) -> Outcome | None:
    """The outcome stored for a request id (async client), or None."""
    shard, entry_id = parse_request_id(request)
    packed = await redis.hget(*keys.outcome_slot(shard, entry_id))
    return decode(request, packed, await redis.hgetall(keys.outcome(shard, entry_id)))


def stored_sync(redis: Any, keys: Keys, request: str) -> Outcome | None:
    """:func:`stored` for a synchronous client."""
    shard, entry_id = parse_request_id(request)
    packed = redis.hget(*keys.outcome_slot(shard, entry_id))
    return decode(request, packed, redis.hgetall(keys.outcome(shard, entry_id)))


async def status_of(redis: Any, keys: Keys, request: str) -> str | None:
    """The stored status of a request id, or None."""
    outcome = await stored(redis, keys, request)
    return None if outcome is None else outcome.status.value
