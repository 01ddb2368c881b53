"""Idempotency-Key: a retried POST within ``LEADSYNC_API_IDEMPOTENCY_WINDOW_S`` gets the
first answer again (the same request ids) and enqueues nothing.

Every request carrying a key has a fingerprint: the sha256 of its method, route and exact
body bytes (`fingerprint`). The first request with a key claims it atomically (``SET NX``
of a marker holding the fingerprint, with a short expiry of its own), serves the request,
then stores its answer and fingerprint over the marker for the whole window. Another
request with the same key:

- with the same fingerprint, gets the stored answer; while only the marker is there it
  waits up to ``LEADSYNC_API_IDEMPOTENCY_WAIT_S`` for the answer and then gets 409;
- with another fingerprint (the key reused for a different request), gets 422 at once,
  whether the first is stored or still being served, and nothing is enqueued: replaying
  the first answer would report a new upsert as accepted while never enqueuing it.

Only 2xx answers are stored. A 4xx (an invalid lead) or 5xx answer, or a request that
fails (Redis down or full), removes its marker, so a corrected request or a retry under
the same key is served afresh. A process killed between enqueuing and storing the answer
leaves the marker to expire after ``PENDING_TTL_MS``, after which a retry enqueues again
(at least once, never lost). Redis keeps the digest, never the body.
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

REUSED_MESSAGE: Final = (
    "was already used with a different request body (Idempotency-Key reused); "
    "send a new Idempotency-Key for a new request"
)


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


def fingerprint(method: str, route: str, body: bytes) -> str:
    """The request a key was used for: sha256 over method, route and the exact body."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), route.encode()):
        digest.update(len(part).to_bytes(4, "big") + part)
    digest.update(body)
    return digest.hexdigest()


def _stored(value: bytes) -> tuple[str | None, Answer | None]:
    """(fingerprint, answer) of a stored value: a marker is the bare fingerprint (empty
    before fingerprints), an answer ``[status, body, fingerprint]`` (no fingerprint
    before fingerprints: such an answer is replayed as it was)."""
    if not value.startswith(b"["):
        return value.decode() or None, None
    status, body, *rest = json.loads(value)
    return (str(rest[0]) if rest else None), (int(status), body)


async def once(
    client: redis.asyncio.Redis,
    key: str,
    request_fingerprint: str,
    window_s: int,
    wait_s: float,
    serve: Callable[[], Awaitable[Answer]],
    changed: Callable[[Answer], bool] = lambda _answer: True,
) -> Answer:
    """The answer stored under ``key``, or ``serve()``'s when this is the first (stored
    when 2xx and ``changed`` says it wrote something: an answer that wrote nothing, like
    a batch whose every record was refused, is not kept, so a corrected retry under the
    same key is served); ApiError 422 when ``key`` was used for another request, 409 when
    the same request is still being served past ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        previous: bytes | None = await client.set(  # type: ignore[assignment]
            key, request_fingerprint, nx=True, px=PENDING_TTL_MS, get=True
        )
        if previous is None:
            break  # ours: serve it
        claimed_by, answer = _stored(previous)
        if claimed_by is not None and claimed_by != request_fingerprint:
            raise ApiError(422, REUSED_MESSAGE, field="Idempotency-Key")
        if answer is not None:
            return answer
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
    if 200 <= status < 300 and changed((status, body)):
        stored = json.dumps([status, body, request_fingerprint], separators=(",", ":"))
        await client.set(key, stored, ex=window_s)
    else:
        await _forget(client, key)
    return status, body


async def _forget(client: redis.asyncio.Redis, key: str) -> None:
    """Drop our marker so a retry is served; if Redis is gone too, the marker expires."""
    with contextlib.suppress(redis.RedisError, OSError):
        await client.delete(key)
