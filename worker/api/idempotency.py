"""Idempotency-Key: a retried POST within ``LEADSYNC_API_IDEMPOTENCY_WINDOW_S`` gets the
first answer again (the same request ids) and enqueues nothing.

The first request with a key claims it atomically (``SET NX`` of an empty marker, with
a short expiry of its own), serves the request, then stores its answer over the marker
for the whole window. A request that finds the marker waits up to
``LEADSYNC_API_IDEMPOTENCY_WAIT_S`` for the answer and then gets 409. A request that
fails (Redis down or full) removes its marker, so a retry is served afresh; a process
killed between enqueuing and storing the answer leaves the marker to expire after
``PENDING_TTL_MS``, after which a retry enqueues again (at least once, never lost).
Answers with status 5xx are never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Final

import redis.asyncio

from worker.api.errors import ApiError

#: How long a claimed key stays claimed without an answer (a killed process's marker).
PENDING_TTL_MS: Final = 60_000
POLL_S: Final = 0.02
MAX_KEY_CHARS: Final = 255

#: One stored answer: (status, body).
Answer = tuple[int, object]


def check_key(value: str) -> str:
    """The Idempotency-Key's digest; ApiError 400 when the header is not 1 to 255
    printable ASCII characters."""
    if not 0 < len(value) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in value):
        raise ApiError(
            400,
            f"must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
            field="Idempotency-Key",
        )
    return hashlib.sha256(value.encode()).hexdigest()


async def once(
    client: redis.asyncio.Redis,
    key: str,
    window_s: int,
    wait_s: float,
    serve: Callable[[], Awaitable[Answer]],
) -> Answer:
    """The answer stored under ``key``, or ``serve()``'s (stored) when this is the first."""
    deadline = time.monotonic() + wait_s
    while True:
        previous: bytes | None = await client.set(  # type: ignore[assignment]
            key, "", nx=True, px=PENDING_TTL_MS, get=True
        )
        if previous is None:
            break  # ours: serve it
        if previous:
            status, body = json.loads(previous)
            return int(status), body
        if time.monotonic() >= deadline:
            raise ApiError(
                409,
                "a request with this Idempotency-Key is still being served; retry shortly",
                field="Idempotency-Key",
                headers={"Retry-After": "1"},
            )
        await asyncio.sleep(POLL_S)
    try:
        status, body = await serve()
    except BaseException:
        await _forget(client, key)
        raise
    if status < 500:
        await client.set(key, json.dumps([status, body], separators=(",", ":")), ex=window_s)
    else:
        await _forget(client, key)
    return status, body


async def _forget(client: redis.asyncio.Redis, key: str) -> None:
    """Drop our marker so a retry is served; if Redis is gone too, the marker expires."""
    with contextlib.suppress(redis.RedisError, OSError):
        await client.delete(key)
