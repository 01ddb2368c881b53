"""The asyncio producer: carries out the core's requests with a ``redis.asyncio.Redis``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import redis.asyncio

from producers._core import (
    Done,
    LeadFields,
    Pause,
    ProducerCore,
    Raise,
    Route,
    Send,
    Step,
    Ticket,
    advance,
    queue,
)
from producers.config import ProducerConfig
from producers.connect import async_redis_client
from producers.errors import InvalidLead
from producers.keys import Keys
from producers.lanes import Lane
from producers.outcome import Outcome

T = TypeVar("T")


class AsyncLeadProducer:
    """The asyncio twin of :class:`~producers.sync.LeadProducer`, with the same methods.
    Construction does no I/O: the shard count is agreed on first use (concurrent first
    uses may both ask; that is harmless)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        key_prefix: str | None = None,
        shards: int | None = None,
        owns_client: bool = False,
        known_fields: Iterable[str] | None = None,
        replicas: int | None = None,
        replica_wait_s: float | None = None,
        config: ProducerConfig | None = None,
    ) -> None:
        self._core = ProducerCore(
            key_prefix=key_prefix,
            shards=shards,
            known_fields=known_fields,
            replicas=replicas,
            replica_wait_s=replica_wait_s,
            config=config,
        )
        self._client = client
        self._owns_client = owns_client

    @classmethod
    def from_url(
        cls, redis_url: str, *, key_prefix: str | None = None, shards: int | None = None
    ) -> AsyncLeadProducer:
        """Prepare a client for ``redis_url`` (no I/O; the URL forms, Sentinel included,
        and the Redis timeouts as for :meth:`LeadProducer.from_url`); ``await close()``
        releases it."""
        return cls._connect(redis_url, "redis_url", key_prefix, shards)

    @classmethod
    def from_env(
        cls, *, key_prefix: str | None = None, shards: int | None = None
    ) -> AsyncLeadProducer:
        """:meth:`from_url` with LEADSYNC_REDIS_URL (a bad one raises ConfigError naming it)."""
        url = ProducerConfig.from_env().redis_url
        return cls._connect(url, "LEADSYNC_REDIS_URL", key_prefix, shards)

    @classmethod
    def _connect(
        cls, url: str, variable: str, key_prefix: str | None, shards: int | None
    ) -> AsyncLeadProducer:
        config = ProducerConfig.from_env()
        client = async_redis_client(
            url,
            variable=variable,
            socket_timeout=config.redis_socket_timeout_s,
            connect_timeout=config.redis_connect_timeout_s,
        )
        return cls(client, key_prefix=key_prefix, shards=shards, owns_client=True)

    async def _run(self, step: Step[T]) -> T:
        request = advance(step, None)
        while not isinstance(request, Done):
            request = advance(step, await self._answer(request))
        return request.value

    async def _answer(self, request: Send | Pause) -> Any:
        if isinstance(request, Pause):
            await asyncio.sleep(request.seconds)
            return None
        try:
            return await self._execute(request)
        except redis.ResponseError as exc:
            refusal = self._core.refused(str(exc))
            if refusal is None:
                raise
            return Raise(refusal)  # raised inside the step: it may place its records again

    async def _execute(self, request: Send) -> Any:
        if len(request.commands) == 1 and not request.partial:  # one XADD is hot: no pipeline
            return [await self._client.execute_command(*request.commands[0])]  # type: ignore[no-untyped-call]
        pipe = queue(self._client.pipeline(transaction=False), request)
        return await pipe.execute(raise_on_error=not request.partial)

    async def route(self) -> Route:
        """The agreed routing (one round trip the first time)."""
        return await self._run(self._core.agree())

    async def shards(self) -> int:
        """The agreed shard count."""
        return (await self.route()).shards

    @property
    def keys(self) -> Keys:
        return self._core.keys

    async def upsert(self, *, lane: Lane = "live", **lead: Unpack[LeadFields]) -> str:
        """See :meth:`LeadProducer.upsert`."""
        return await self._run(self._core.upsert(lead, lane))

    async def upsert_many(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        lane: Lane = "live",
        ticket: Ticket | None = None,
    ) -> list[str | InvalidLead]:
        """See :meth:`LeadProducer.upsert_many`: the valid records ARE enqueued."""
        return await self._run(self._core.upsert_many(records, lane, ticket))

    async def upsert_batch(
        self, records: Sequence[object], *, lane: Lane = "live"
    ) -> list[str | InvalidLead]:
        """See :meth:`LeadProducer.upsert_batch`: all valid records in one atomic step."""
        return await self._run(self._core.enqueue_batch(records, lane))

    async def outcome(self, request_id: str) -> Outcome | None:
        """See :meth:`LeadProducer.outcome`."""
        return await self._run(self._core.outcome(request_id))

    async def outcomes(self, request_ids: Sequence[str]) -> list[Outcome | None]:
        """Many outcomes in one pipelined round trip (same answers as :meth:`outcome`)."""
        return await self._run(self._core.outcomes(request_ids))

    async def wait_outcomes(
        self,
        request_ids: Sequence[str],
        timeout_s: float,
        *,
        poll_s: float = 0.2,
        on_progress: Callable[[int], None] | None = None,
    ) -> dict[str, Outcome | None]:
        """See :meth:`LeadProducer.wait_outcomes`."""
        return await self._run(
            self._core.wait_outcomes(request_ids, timeout_s, poll_s, on_progress)
        )

    async def wait_outcome(
        self, request_id: str, timeout_s: float, *, poll_s: float = 0.05
    ) -> Outcome:
        """See :meth:`LeadProducer.wait_outcome`."""
        return await self._run(self._core.wait_outcome(request_id, timeout_s, poll_s))

    async def close(self) -> None:
        """Release the connections (only when this producer opened them)."""
        if self._owns_client:
            await self._client.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> AsyncLeadProducer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
