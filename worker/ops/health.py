"""Worker heartbeats: one key per pod, refreshed by the drain and tick tasks and by the
Celery main process; ``doctor --liveness`` reads it. On the data path, so it imports
nothing heavy."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis as redis_sync
from redis.exceptions import RedisError

from producers.contract import Keys
from worker.connections import redis_client_sync
from worker.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

#: A heartbeat key outlives the liveness limit, so a stale one reads as "stale", not "absent".
HEARTBEAT_TTL_S = 600
#: Default age after which ``doctor --liveness`` calls a worker dead.
LIVENESS_MAX_AGE_S = 60.0
#: The main process writes at most this often (Celery's own heartbeat fires every 2 s).
MAIN_HEARTBEAT_EVERY_S = 10.0


def heartbeat_key(keys: Keys, hostname: str | None = None) -> str:
    """One key per pod (hostname): every process of the pod refreshes it."""
    return keys.heartbeat(hostname or socket.gethostname())


async def write_heartbeat(redis: Redis, keys: Keys, now_s: float | None = None) -> None:
    """Called by the drain and tick tasks."""
    now_s = time.time() if now_s is None else now_s
    await redis.set(heartbeat_key(keys), repr(now_s), ex=HEARTBEAT_TTL_S)


class MainHeartbeat:
    """The Celery main process's heartbeat (from the ``heartbeat_sent`` signal), so an idle
    pod whose pool gets no tick for a while still counts as alive. Never raises: a Redis
    outage must not disturb the worker's own event loop."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._last_s = 0.0
        self._client: redis_sync.Redis | None = None

    def beat(self) -> None:
        now_s = self._clock()
        if now_s - self._last_s < MAIN_HEARTBEAT_EVERY_S:
            return
        self._last_s = now_s
        try:
            if self._client is None:
                self._client = redis_client_sync(self._settings)
            key = heartbeat_key(Keys(self._settings.key_prefix))
            self._client.set(key, repr(now_s), ex=HEARTBEAT_TTL_S)
        except RedisError as exc:
            logger.warning("heartbeat not written: %s", exc.__class__.__name__)


async def heartbeat_age_s(
    redis: Redis, keys: Keys, hostname: str | None = None, now_s: float | None = None
) -> float | None:
    """Seconds since this pod's last heartbeat, or None when there is none."""
    value = await redis.get(heartbeat_key(keys, hostname))
    if value is None:
        return None
    now_s = time.time() if now_s is None else now_s
    return max(0.0, now_s - float(value))
