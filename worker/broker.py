"""kombu's Redis transports, with one fault turned into what it is.

When the broker connection drops, Celery's consumer collects the connection (which
detaches it from its transport) and then closes it. If the first close of the channel
failed half-way (Redis unreachable while a BRPOP was in flight), the second close and
every late ack of a message taken on that channel ask the detached transport for its
connection parameters and raise ``AttributeError`` (kombu 5.7, ``_connparams`` reads
``self.connection.client.hostname``). Celery treats that as a bug, not a broker fault,
and the worker process exits in the middle of a Sentinel failover.

These channels raise :class:`redis.exceptions.ConnectionError` instead: a connection
error, which Celery ignores while closing and logs for a late ack. The unacked message
comes back after the visibility timeout; a drain delivered twice is harmless (its shard
lease makes the second one wait or find nothing).

:func:`install` points kombu's ``redis``, ``rediss`` and ``sentinel`` aliases at these
classes (the URL scheme picks the transport again on every reconnect, so an explicit
``broker_transport`` would be dropped at the first failover).
"""

from __future__ import annotations

from typing import Any, Final

import kombu.transport
from kombu.transport import TRANSPORT_ALIASES, redis
from redis.exceptions import ConnectionError as RedisConnectionError

DETACHED: Final = "the broker connection was closed (Celery reconnects)"


class _DetachedIsAConnectionError:
    """Mixin for kombu's Redis channels: a detached transport is a connection fault."""

    connection: Any

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise RedisConnectionError(DETACHED)
        return super()._connparams(asynchronous)  # type: ignore[misc,no-any-return]


class Channel(_DetachedIsAConnectionError, redis.Channel):
    pass


class Transport(redis.Transport):
    Channel = Channel


class SentinelChannel(_DetachedIsAConnectionError, redis.SentinelChannel):
    pass


class SentinelTransport(redis.SentinelTransport):
    Channel = SentinelChannel


ALIASES: Final = {
    "redis": f"{__name__}:Transport",
    "rediss": f"{__name__}:Transport",
    "sentinel": f"{__name__}:SentinelTransport",
}


def install() -> None:
    """Make kombu resolve the Redis URL schemes to these transports (idempotent)."""
    TRANSPORT_ALIASES.update(ALIASES)
    # kombu caches the class an alias resolved to; forget any resolved before this.
    cache = getattr(kombu.transport, "_transport_cache", {})
    for alias in ALIASES:
        cache.pop(alias, None)
