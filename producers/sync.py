"""The blocking producer: carries out the core's requests with a ``redis.Redis``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import redis

from producers._core import (
    Done,
    LeadFields,
    Pause,
    ProducerCore,
    Raise,
    Send,
    Step,
    Ticket,
    advance,
    queue,
)
from producers.config import ProducerConfig
from producers.connect import redis_client
from producers.errors import InvalidLead
from producers.keys import Keys
from producers.lanes import Lane
from producers.outcome import Outcome

T = TypeVar("T")


class LeadProducer:
    """Enqueue lead upserts from a web app (thread-safe: redis-py pools connections).

    >>> with LeadProducer.from_url("redis://localhost:6379/0") as producer:  # doctest: +SKIP
    ...     rid = producer.upsert(email="ann@example.com", attributes={"FirstName": "Ann"})
    ...     producer.wait_outcome(rid, timeout_s=10).status
    <OutcomeStatus.CREATED: 'CREATED'>
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str | None = None,
        shards: int | None = None,
        owns_client: bool = False,
        known_fields: Iterable[str] | None = None,
        replicas: int | None = None,
        replica_wait_s: float | None = None,
        config: ProducerConfig | None = None,
    ) -> None:
        """Wrap ``client`` and agree on the shard count now (one round trip).
        ``known_fields`` (default LEADSYNC_KNOWN_FIELDS) refuses other attribute names;
        ``replicas`` and ``replica_wait_s`` (default LEADSYNC_ENQUEUE_REPLICAS and
        LEADSYNC_REPLICA_WAIT_S) must confirm every enqueue; ``config`` (default: read
        from LEADSYNC_*) supplies every other setting."""
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
        self._route = self._run(self._core.agree())

    @classmethod
    def from_url(
        cls, redis_url: str, *, key_prefix: str | None = None, shards: int | None = None
    ) -> LeadProducer:
        """Connect to ``redis_url`` (with LEADSYNC_REDIS_SOCKET_TIMEOUT_S and
        LEADSYNC_REDIS_CONNECT_TIMEOUT_S); ``close()`` releases the connections.

        ``redis://``, ``rediss://``, ``unix://`` or, for Redis Sentinel,
        ``redis+sentinel://[user:password@]host:port[,host:port...]/<master>[/<db>]``
        (``rediss+sentinel://`` for TLS; options in :mod:`producers.connect`). A bad URL
        raises ConfigError saying what is wrong, never the URL (it may hold a password)."""
        return cls._connect(redis_url, "redis_url", key_prefix, shards)

    @classmethod
    def from_env(cls, *, key_prefix: str | None = None, shards: int | None = None) -> LeadProducer:
        """:meth:`from_url` with LEADSYNC_REDIS_URL (a bad one raises ConfigError naming it)."""
        url = ProducerConfig.from_env().redis_url
        return cls._connect(url, "LEADSYNC_REDIS_URL", key_prefix, shards)

    @classmethod
    def _connect(
        cls, url: str, variable: str, key_prefix: str | None, shards: int | None
    ) -> LeadProducer:
        config = ProducerConfig.from_env()
        client = redis_client(
            url,
            variable=variable,
            socket_timeout=config.redis_socket_timeout_s,
            connect_timeout=config.redis_connect_timeout_s,
        )
        try:
            return cls(client, key_prefix=key_prefix, shards=shards, owns_client=True)
        except BaseException:
            client.close()
            raise

    def _run(self, step: Step[T]) -> T:
        request = advance(step, None)
        while not isinstance(request, Done):
            request = advance(step, self._answer(request))
        return request.value

    def _answer(self, request: Send | Pause) -> Any:
        if isinstance(request, Pause):
            time.sleep(request.seconds)
            return None
        try:
            return self._execute(request)
        except redis.ResponseError as exc:
            refusal = self._core.refused(str(exc))
            if refusal is None:
                raise
            return Raise(refusal)  # raised inside the step: it may place its records again

    def _execute(self, request: Send) -> Any:
        if len(request.commands) == 1 and not request.partial:  # one XADD is hot: no pipeline
            return [self._client.execute_command(*request.commands[0])]  # type: ignore[no-untyped-call]
        pipe = queue(self._client.pipeline(transaction=False), request)
        return pipe.execute(raise_on_error=not request.partial)

    @property
    def shards(self) -> int:
        """The agreed shard count."""
        return self._route.shards

    @property
    def keys(self) -> Keys:
        return self._route.keys

    def upsert(self, *, lane: Lane = "live", **lead: Unpack[LeadFields]) -> str:
        """Enqueue one upsert and return its request id (one XADD round trip). The
        keywords: email, marketo_id, foreign_sys_person_id, foreign_sys_type,
        attributes (name -> str, number or bool) and dedup (default True); ``lane``:
        "live" (default) or "bulk" for a backfill (sent only while no live batch waits,
        under its own daily call budget, never out of order with the lead's live writes).

        Raises InvalidLead (with ``.field``) before anything is written; Redis errors
        (for example OOM under ``noeviction``) propagate and nothing is enqueued. With
        LEADSYNC_ENQUEUE_REPLICAS, raises NotReplicated (retryable, ``retry_after_s``)
        when too few replicas confirmed the write in LEADSYNC_REPLICA_WAIT_S.
        """
        return self._run(self._core.upsert(lead, lane))

    def upsert_many(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        lane: Lane = "live",
        ticket: Ticket | None = None,
    ) -> list[str | InvalidLead]:
        """Enqueue many upserts, one atomic step (one round trip) per 1000 records.

        Result ``i`` is the request id of record ``i``, or the InvalidLead that rejected it.
        Invalid records do not stop the rest: every valid record IS enqueued. Unknown
        record keys are rejected as InvalidLead naming the key. A Redis error propagates;
        records of earlier chunks stay enqueued. Backpressure (Redis filling up) and
        NotReplicated stop at a chunk; their ``results`` hold the records before it.

        ``ticket`` (at most 1000 records: one step) makes sending the same records again
        safe: the step the ticket names is written once, and sent again it answers the
        request ids it got (``leadsync backfill`` resumes after a crash this way).
        """
        return self._run(self._core.upsert_many(records, lane, ticket))

    def upsert_batch(
        self, records: Sequence[object], *, lane: Lane = "live"
    ) -> list[str | InvalidLead]:
        """Enqueue the valid records in ONE atomic step (all or none when Redis refuses),
        as the HTTP API's batch route does; result ``i`` as for :meth:`upsert_many`."""
        return self._run(self._core.enqueue_batch(records, lane))

    def outcome(self, request_id: str) -> Outcome | None:
        """The outcome of a request: final, PENDING while its entry waits in the ledger,
        or None when it is unknown (never ours, expired, or not a request id at all)."""
        return self._run(self._core.outcome(request_id))

    def outcomes(self, request_ids: Sequence[str]) -> list[Outcome | None]:
        """Many outcomes in one pipelined round trip (same answers as :meth:`outcome`)."""
        return self._run(self._core.outcomes(request_ids))

    def wait_outcomes(
        self,
        request_ids: Sequence[str],
        timeout_s: float,
        *,
        poll_s: float = 0.2,
        on_progress: Callable[[int], None] | None = None,
    ) -> dict[str, Outcome | None]:
        """Poll many requests until every outcome is final or ``timeout_s`` passes; the
        last look at each (None: unknown). ``on_progress`` hears how many are final."""
        return self._run(self._core.wait_outcomes(request_ids, timeout_s, poll_s, on_progress))

    def wait_outcome(self, request_id: str, timeout_s: float, *, poll_s: float = 0.05) -> Outcome:
        """Poll until the outcome is final and return it.

        When ``timeout_s`` passes first, return the last PENDING outcome; raise
        TimeoutError if the last look found the request unknown (see :meth:`outcome`).
        """
        return self._run(self._core.wait_outcome(request_id, timeout_s, poll_s))

    def close(self) -> None:
        """Release the connections (only when this producer opened them)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> LeadProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
