"""Redis clients, made one way: every one has the configured connect and socket
timeouts (LEADSYNC_REDIS_CONNECT_TIMEOUT_S, LEADSYNC_REDIS_SOCKET_TIMEOUT_S), so no worker,
probe or command hangs on an unreachable Redis."""

from __future__ import annotations

import redis
import redis.asyncio

from worker.settings import Settings

#: A pooled connection idle this long is checked with PING before use.
HEALTH_CHECK_INTERVAL_S = 25


def redis_client(settings: Settings) -> redis.asyncio.Redis:
    """An asyncio client for ``settings.redis_url``."""
    return redis.asyncio.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
    )


def redis_client_sync(settings: Settings) -> redis.Redis:
    """A blocking client for ``settings.redis_url`` (the main-process heartbeat)."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
    )
