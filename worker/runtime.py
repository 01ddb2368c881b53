"""Per-process resources of a worker: one event loop, one Redis client, one aiohttp
session, made lazily in the process that uses them (after the prefork fork) and
closed at process shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable
from typing import TypeVar

from producers.contract import Keys
from worker.connections import redis_client
from worker.drain import Drainer
from worker.ledger import Ledger
from worker.limits import RedisLimiter
from worker.marketo import MarketoApi
from worker.marketo.factory import api_for
from worker.obs import metrics
from worker.settings import Settings
from worker.transport import AiohttpTransport, Transport

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Runtime:
    """Everything a drain or tick needs, bound to one event loop. The constructor only
    assigns; :meth:`start` does the I/O (the HTTP session, the shard agreement, the
    consumer groups)."""

    api: MarketoApi
    drainer: Drainer

    def __init__(self, settings: Settings, *, transport: Transport | None = None) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.redis = redis_client(settings)
        self.keys = Keys(settings.key_prefix)
        self.ledger = Ledger.for_settings(self.redis, settings)
        self.limiter = RedisLimiter(self.redis, settings)
        self._transport = transport

    def start(self) -> Runtime:
        """Open the HTTP session, agree the shard count and make sure every consumer
        group exists; then the drainer is ready."""
        if self._transport is None:
            self._transport = self.run(self._make_transport())
        self.api = api_for(
            self.settings, self._transport, self.redis, on_token_fetch=metrics.record_identity_call
        )
        self.run(self.ledger.agree_shards(self.settings.shards))
        self.run(self.ledger.store_key_rule(self.settings.key_rule))
        self.run(self.ledger.ensure_groups(2 * self.shards))  # live and bulk streams
        self.drainer = Drainer(
            ledger=self.ledger,
            api=self.api,
            limiter=self.limiter,
            settings=self.settings,
            consumer=self.consumer,
        )
        return self

    @property
    def shards(self) -> int:
        """The agreed shard count: the ledger's, which follows ``leadsync reshard``."""
        return self.ledger.shards

    async def _make_transport(self) -> Transport:
        # The session must be created inside the loop that will use it.
        return AiohttpTransport.create(
            request_timeout_s=self.settings.request_timeout_s,
            connect_timeout_s=self.settings.connect_timeout_s,
            max_response_bytes=self.settings.max_response_bytes,
        )

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def close(self) -> None:
        async def _close() -> None:
            if self._transport is not None:
                await self._transport.close()
            await self.redis.aclose()

        try:
            self.run(_close())
        finally:
            self.loop.close()


_runtime: Runtime | None = None


def get_runtime(settings: Settings) -> Runtime:
    """The process's runtime, made on first use."""
    global _runtime
    if _runtime is None or _runtime.loop.is_closed():
        _runtime = Runtime(settings).start()
    return _runtime


def close_runtime() -> None:
    global _runtime
    if _runtime is not None:
        _runtime.close()
        _runtime = None
