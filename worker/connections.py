"""Redis clients, made one way: through :mod:`producers.connect` (the one factory: plain
``redis://``, ``rediss://``, ``unix://`` and ``redis+sentinel://`` URLs), with the
configured connect and socket timeouts (LEADSYNC_REDIS_CONNECT_TIMEOUT_S,
LEADSYNC_REDIS_SOCKET_TIMEOUT_S), so no worker, probe or command hangs on an unreachable
Redis, and without retries inside redis-py: a failed call raises, leadsync's loops do the
waiting and the next call asks the sentinels afresh, so a process follows a Sentinel
failover in seconds (see producers/connect.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import redis
import redis.asyncio

from producers.contract import async_redis_client, is_sentinel_url, parse_sentinel_url
from producers.contract import redis_client as sync_redis_client
from worker.settings import Settings, env_name

#: A pooled connection idle this long is checked with PING before use.
HEALTH_CHECK_INTERVAL_S = 25


def redis_client(settings: Settings) -> redis.asyncio.Redis:
    """An asyncio client for ``settings.redis_url``."""
    return async_redis_client(
        settings.redis_url,
        variable=env_name("redis_url"),
        socket_timeout=settings.redis_socket_timeout_s,
        connect_timeout=settings.redis_connect_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
    )


def redis_client_sync(settings: Settings) -> redis.Redis:
    """A blocking client for ``settings.redis_url`` (the main-process heartbeat)."""
    return sync_redis_client(
        settings.redis_url,
        variable=env_name("redis_url"),
        socket_timeout=settings.redis_socket_timeout_s,
        connect_timeout=settings.redis_connect_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
    )


@dataclass(frozen=True, slots=True)
class CeleryRedis:
    """How Celery (kombu) reaches a Redis: its URL, the transport options leadsync's URL
    adds (``master_name`` and ``sentinel_kwargs`` for Sentinel) and its TLS options."""

    url: str
    transport_options: dict[str, Any] = field(default_factory=dict)
    #: broker_use_ssl for a TLS Sentinel master (kombu's sentinel:// has no rediss form).
    use_ssl: dict[str, Any] | None = None


def celery_redis(
    url: str, settings: Settings, variable: str = "LEADSYNC_BROKER_URL"
) -> CeleryRedis:
    """Translate leadsync's URL forms into kombu's. A plain URL (redis://, rediss://, or
    another transport) passes through; ``redis+sentinel://u:p@h1:p1,h2:p2/master/db``
    becomes ``sentinel://u:p@h1:p1/db;sentinel://u:p@h2:p2/db`` with the transport options
    ``master_name`` and ``sentinel_kwargs`` (sentinel auth, TLS and the Redis timeouts),
    and TLS to the master goes in ``broker_use_ssl`` (kombu's Sentinel transport then uses
    SentinelManagedSSLConnection)."""
    if not is_sentinel_url(url):
        return CeleryRedis(url)
    parsed = parse_sentinel_url(url, variable)
    auth = ""
    if parsed.username is not None or parsed.password is not None:
        auth = quote(parsed.username or "", safe="")
        if parsed.password is not None:
            auth += ":" + quote(parsed.password, safe="")
        auth += "@"
    hosts = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parsed.sentinels]
    kombu_url = ";".join(f"sentinel://{auth}{host}/{parsed.db}" for host in hosts)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        **parsed.sentinel_kwargs(),
    }
    options: dict[str, Any] = {"master_name": parsed.master, "sentinel_kwargs": sentinel_kwargs}
    use_ssl = None
    if parsed.ssl:
        use_ssl = {"ssl_cert_reqs": "required", **parsed.ssl_options}
    return CeleryRedis(kombu_url, options, use_ssl)
