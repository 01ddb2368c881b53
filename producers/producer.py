"""Enqueue lead upserts into the sharded Redis Stream ledger and read their outcomes.

A web app validates at the edge (an invalid lead raises InvalidLead before anything is
written), derives the lead key and its shard, and appends one entry with ``XADD`` (no
``MAXLEN``: trimming would delete pending work). The returned request id names the shard
and the entry; the worker writes the outcome hash under that id.

The shard count is agreed through ``Keys.config()``: the first process to start stores its
value with ``HSETNX`` and every producer and worker then uses the stored value, so a lead
key maps to the same shard everywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import redis
import redis.asyncio

from producers.config import ProducerConfig
from producers.contract import (
    ENQUEUE_LUA,
    NEWEST_ID_TTL_S,
    Keys,
    LeadUpsert,
    Outcome,
    OutcomeStatus,
    check_known_fields,
    encode_lead,
    entry_time_s,
    key_digest,
    lead_key,
    parse_request_id,
    request_id,
    shard_for,
    validate_lead,
)
from producers.errors import ConfigError, InvalidLead

logger = logging.getLogger(__name__)

#: Leads per pipelined round trip in ``upsert_many``.
BULK_CHUNK: Final = 1000
#: The field of the ``Keys.config()`` hash that holds the agreed shard count.
SHARDS_FIELD: Final = "shards"
#: Keyword arguments a record of ``upsert_many`` may carry.
LEAD_FIELDS: Final = frozenset(
    {"email", "marketo_id", "foreign_sys_person_id", "foreign_sys_type", "attributes", "dedup"}
)


# --- pure helpers shared by the sync and async producers ----------------------------


def resolve_config(
    key_prefix: str | None, shards: int | None, known_fields: Iterable[str] | None = None
) -> tuple[str, int, frozenset[str] | None]:
    """Explicit values win; the rest come from ``ProducerConfig`` (defaults or LEADSYNC_
    env). The known fields come back case-folded, or None when any attribute is accepted."""
    if key_prefix is None or shards is None or known_fields is None:
        config = ProducerConfig.from_env()
        key_prefix = config.key_prefix if key_prefix is None else key_prefix
        shards = config.shards if shards is None else shards
        known_fields = config.known_fields if known_fields is None else known_fields
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError("shards must be a positive integer")
    known = frozenset(name.strip().casefold() for name in known_fields if name.strip())
    return key_prefix, shards, known or None


def adopt_shards(stored: bytes | str | None, wanted: int, config_key: str) -> int:
    """The shard count to use: the stored one (after HSETNX there always is one)."""
    if stored is None:
        # Only possible if the config hash was deleted between HSETNX and HGET.
        return wanted
    text = stored.decode() if isinstance(stored, bytes) else stored
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{config_key} field {SHARDS_FIELD!r} is not a positive integer")
    agreed = int(text)
    if agreed != wanted:
        logger.warning(
            "shard count %d differs from the stored %d in %s; using the stored value",
            wanted,
            agreed,
            config_key,
        )
    return agreed


@dataclass(frozen=True, slots=True)
class Route:
    """Where entries go once the shard count is agreed; stream names are precomputed."""

    keys: Keys
    shards: int
    streams: tuple[str, ...]

    @classmethod
    def build(cls, keys: Keys, shards: int) -> Route:
        return cls(keys, shards, tuple(keys.stream(s) for s in range(shards)))

    def entry(self, lead: LeadUpsert) -> tuple[int, tuple[str | int, ...]]:
        """The shard and the command of one validated lead: XADD, and the lead's
        newest-enqueued id, in one atomic step (a replay checks it for newer writes)."""
        key = lead_key(lead)
        shard = shard_for(key, self.shards)
        digest = key_digest(key)
        return shard, (
            "EVAL",
            ENQUEUE_LUA,
            2,
            self.streams[shard],
            self.keys.newest(shard, digest),
            digest,
            encode_lead(lead),
            NEWEST_ID_TTL_S if lead.dedup else 0,
        )

    def locate(self, value: str) -> tuple[int, str] | None:
        """(shard, entry id) of a request id, or None when it cannot be one of ours."""
        try:
            shard, entry_id = parse_request_id(value)
        except ValueError:
            return None
        return (shard, entry_id) if shard < self.shards else None


def record_lead(record: object, known: frozenset[str] | None = None) -> LeadUpsert:
    """Validate one ``upsert_many`` record; unknown keys are InvalidLead naming the key."""
    if not isinstance(record, Mapping):
        raise InvalidLead("record", "must be a mapping of lead fields")
    for name in record:
        if name not in LEAD_FIELDS:
            # Names only, never values; a non-string key is reported by its type.
            shown = name if isinstance(name, str) else type(name).__name__
            raise InvalidLead(shown, "is not a lead field")
    return check_known_fields(validate_lead(**record), known)


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_outcome(
    request: str, entry_id: str, entries: list[Any], fields: Mapping[Any, Any]
) -> Outcome | None:
    """Interpret ``XRANGE id id`` followed by ``HGETALL outcome`` (in that order).

    The worker writes the outcome and deletes the entry in one atomic step, so when the
    XRANGE found nothing the HGETALL that ran after it sees the outcome unless it expired.
    """
    if fields:
        outcome = Outcome.from_fields(request, fields)
        if outcome.enqueued_at is None:
            outcome = dataclasses.replace(outcome, enqueued_at=entry_time_s(entry_id))
        return outcome
    if entries:
        return Outcome(request, OutcomeStatus.PENDING, enqueued_at=entry_time_s(entry_id))
    return None


def bulk_chunks(
    records: Iterable[object], known: frozenset[str] | None = None
) -> Iterator[list[LeadUpsert | InvalidLead]]:
    """Validated records (or their InvalidLead) in chunks of BULK_CHUNK."""
    chunk: list[LeadUpsert | InvalidLead] = []
    for record in records:
        try:
            chunk.append(record_lead(record, known))
        except InvalidLead as exc:
            chunk.append(exc)
        if len(chunk) >= BULK_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def queue_handshake(pipe: Any, config_key: str, wanted: int) -> None:
    """HSETNX then HGET: store our shard count if none is stored, then read the agreed one."""
    pipe.hsetnx(config_key, SHARDS_FIELD, wanted)
    pipe.hget(config_key, SHARDS_FIELD)


def queue_lookup(pipe: Any, route: Route, shard: int, entry_id: str) -> None:
    """XRANGE before HGETALL: the order :func:`read_outcome` relies on."""
    pipe.xrange(route.streams[shard], entry_id, entry_id)
    pipe.hgetall(route.keys.outcome(shard, entry_id))


def queue_lookups(
    pipe: Any, route: Route, request_ids: Sequence[str]
) -> list[tuple[int, str] | None]:
    """Queue a lookup for every well-formed request id; return where each one lives."""
    located = [route.locate(rid) for rid in request_ids]
    for place in located:
        if place is not None:
            queue_lookup(pipe, route, *place)
    return located


def read_outcomes(
    request_ids: Sequence[str], located: Sequence[tuple[int, str] | None], replies: Sequence[Any]
) -> list[Outcome | None]:
    """Pair the replies of :func:`queue_lookups` with their request ids."""
    answers = iter(replies)
    outcomes: list[Outcome | None] = []
    for rid, place in zip(request_ids, located, strict=True):
        if place is None:
            outcomes.append(None)
            continue
        entries, fields = next(answers), next(answers)
        outcomes.append(read_outcome(rid, place[1], entries, fields))
    return outcomes


def queue_chunk(pipe: Any, route: Route, chunk: list[LeadUpsert | InvalidLead]) -> list[int]:
    """Queue one XADD per valid lead of ``chunk``; return their shards in order."""
    shards = []
    for item in chunk:
        if isinstance(item, LeadUpsert):
            shard, command = route.entry(item)
            pipe.execute_command(*command)
            shards.append(shard)
    return shards


def chunk_results(
    chunk: list[LeadUpsert | InvalidLead], shards: list[int], replies: list[Any]
) -> Iterator[str | InvalidLead]:
    """Request ids (or the InvalidLead) in record order."""
    reply = iter(replies)
    shard_of = iter(shards)
    for item in chunk:
        if isinstance(item, InvalidLead):
            yield item
        else:
            yield request_id(next(shard_of), as_text(next(reply)))


def timed_out(last: Outcome | None, request: str) -> Outcome:
    """What ``wait_outcome`` returns (or raises) when the deadline passes."""
    if last is None:
        raise TimeoutError(f"request {request} is unknown or its outcome expired")
    return last


# --- the synchronous producer ---------------------------------------------------------


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
    ) -> None:
        """Wrap ``client`` and agree on the shard count now (one round trip).
        ``known_fields`` (default LEADSYNC_KNOWN_FIELDS) refuses other attribute names."""
        prefix, wanted, self._known = resolve_config(key_prefix, shards, known_fields)
        keys = Keys(prefix)
        self._client = client
        self._owns_client = owns_client
        pipe = client.pipeline(transaction=False)
        queue_handshake(pipe, keys.config(), wanted)
        _, stored = pipe.execute()
        self._route = Route.build(keys, adopt_shards(stored, wanted, keys.config()))

    @classmethod
    def from_url(
        cls, redis_url: str, *, key_prefix: str | None = None, shards: int | None = None
    ) -> LeadProducer:
        """Connect to ``redis_url``; ``close()`` releases the connections."""
        client: redis.Redis = redis.Redis.from_url(redis_url)
        try:
            return cls(client, key_prefix=key_prefix, shards=shards, owns_client=True)
        except BaseException:
            client.close()
            raise

    @property
    def shards(self) -> int:
        """The agreed shard count."""
        return self._route.shards

    @property
    def keys(self) -> Keys:
        return self._route.keys

    def upsert(
        self,
        *,
        email: str | None = None,
        marketo_id: int | str | None = None,
        foreign_sys_person_id: str | None = None,
        foreign_sys_type: str | None = None,
        attributes: Mapping[str, object] | None = None,
        dedup: bool = True,
    ) -> str:
        """Enqueue one upsert and return its request id (one XADD round trip).

        Raises InvalidLead (with ``.field``) before anything is written; Redis errors
        (for example OOM under ``noeviction``) propagate and nothing is enqueued.
        """
        lead = validate_lead(
            email=email,
            marketo_id=marketo_id,
            foreign_sys_person_id=foreign_sys_person_id,
            foreign_sys_type=foreign_sys_type,
            attributes=attributes,
            dedup=dedup,
        )
        check_known_fields(lead, self._known)
        shard, command = self._route.entry(lead)
        reply = self._client.execute_command(*command)  # type: ignore[no-untyped-call]
        return request_id(shard, as_text(reply))

    def upsert_many(self, records: Iterable[Mapping[str, Any]]) -> list[str | InvalidLead]:
        """Enqueue many upserts, one pipelined round trip per 1000 records.

        Result ``i`` is the request id of record ``i``, or the InvalidLead that rejected it.
        Invalid records do not stop the rest: every valid record IS enqueued. Unknown
        record keys are rejected as InvalidLead naming the key. A Redis error propagates;
        records of earlier chunks stay enqueued.
        """
        results: list[str | InvalidLead] = []
        for chunk in bulk_chunks(records, self._known):
            pipe = self._client.pipeline(transaction=False)
            shards = queue_chunk(pipe, self._route, chunk)
            replies = pipe.execute() if shards else []
            results.extend(chunk_results(chunk, shards, replies))
        return results

    def outcome(self, request_id: str) -> Outcome | None:
        """The outcome of a request: final, PENDING while its entry waits in the ledger,
        or None when it is unknown (never ours, expired, or not a request id at all)."""
        located = self._route.locate(request_id)
        if located is None:
            return None
        shard, entry_id = located
        pipe = self._client.pipeline(transaction=False)
        queue_lookup(pipe, self._route, shard, entry_id)
        entries, fields = pipe.execute()
        return read_outcome(request_id, entry_id, entries, fields)

    def outcomes(self, request_ids: Sequence[str]) -> list[Outcome | None]:
        """Many outcomes in one pipelined round trip (same answers as :meth:`outcome`)."""
        pipe = self._client.pipeline(transaction=False)
        located = queue_lookups(pipe, self._route, request_ids)
        return read_outcomes(request_ids, located, pipe.execute() if located else [])

    def wait_outcome(self, request_id: str, timeout_s: float, *, poll_s: float = 0.05) -> Outcome:
        """Poll until the outcome is final and return it.

        When ``timeout_s`` passes first, return the last PENDING outcome; raise
        TimeoutError if the last look found the request unknown (see :meth:`outcome`).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            last = self.outcome(request_id)
            if last is not None and last.status.is_final:
                return last
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return timed_out(last, request_id)
            time.sleep(min(poll_s, remaining_s))

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


# --- the asynchronous producer --------------------------------------------------------


class AsyncLeadProducer:
    """The asyncio twin of :class:`LeadProducer`. Construction does no I/O: the shard
    count is agreed on first use (concurrent first uses may both ask; that is harmless)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        key_prefix: str | None = None,
        shards: int | None = None,
        owns_client: bool = False,
        known_fields: Iterable[str] | None = None,
    ) -> None:
        prefix, self._wanted, self._known = resolve_config(key_prefix, shards, known_fields)
        self._keys = Keys(prefix)
        self._client = client
        self._owns_client = owns_client
        self._route: Route | None = None

    @classmethod
    def from_url(
        cls, redis_url: str, *, key_prefix: str | None = None, shards: int | None = None
    ) -> AsyncLeadProducer:
        """Prepare a client for ``redis_url`` (no I/O); ``await close()`` releases it."""
        client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(redis_url)
        return cls(client, key_prefix=key_prefix, shards=shards, owns_client=True)

    async def route(self) -> Route:
        """The agreed routing (one round trip the first time)."""
        if self._route is None:
            config = self._keys.config()
            pipe = self._client.pipeline(transaction=False)
            queue_handshake(pipe, config, self._wanted)
            _, stored = await pipe.execute()
            self._route = Route.build(self._keys, adopt_shards(stored, self._wanted, config))
        return self._route

    async def shards(self) -> int:
        """The agreed shard count."""
        return (await self.route()).shards

    @property
    def keys(self) -> Keys:
        return self._keys

    async def upsert(
        self,
        *,
        email: str | None = None,
        marketo_id: int | str | None = None,
        foreign_sys_person_id: str | None = None,
        foreign_sys_type: str | None = None,
        attributes: Mapping[str, object] | None = None,
        dedup: bool = True,
    ) -> str:
        """See :meth:`LeadProducer.upsert`."""
        lead = validate_lead(
            email=email,
            marketo_id=marketo_id,
            foreign_sys_person_id=foreign_sys_person_id,
            foreign_sys_type=foreign_sys_type,
            attributes=attributes,
            dedup=dedup,
        )
        check_known_fields(lead, self._known)
        shard, command = (self._route or await self.route()).entry(lead)
        reply = await self._client.execute_command(*command)  # type: ignore[no-untyped-call]
        return request_id(shard, as_text(reply))

    async def upsert_many(self, records: Iterable[Mapping[str, Any]]) -> list[str | InvalidLead]:
        """See :meth:`LeadProducer.upsert_many`: the valid records ARE enqueued."""
        route = self._route or await self.route()
        results: list[str | InvalidLead] = []
        for chunk in bulk_chunks(records, self._known):
            pipe = self._client.pipeline(transaction=False)
            shards = queue_chunk(pipe, route, chunk)
            replies = await pipe.execute() if shards else []
            results.extend(chunk_results(chunk, shards, replies))
        return results

    async def outcome(self, request_id: str) -> Outcome | None:
        """See :meth:`LeadProducer.outcome`."""
        route = self._route or await self.route()
        located = route.locate(request_id)
        if located is None:
            return None
        shard, entry_id = located
        pipe = self._client.pipeline(transaction=False)
        queue_lookup(pipe, route, shard, entry_id)
        entries, fields = await pipe.execute()
        return read_outcome(request_id, entry_id, entries, fields)

    async def outcomes(self, request_ids: Sequence[str]) -> list[Outcome | None]:
        """Many outcomes in one pipelined round trip (same answers as :meth:`outcome`)."""
        route = await self.route()
        pipe = self._client.pipeline(transaction=False)
        located = queue_lookups(pipe, route, request_ids)
        return read_outcomes(request_ids, located, await pipe.execute() if located else [])

    async def wait_outcome(
        self, request_id: str, timeout_s: float, *, poll_s: float = 0.05
    ) -> Outcome:
        """See :meth:`LeadProducer.wait_outcome`."""
        deadline = time.monotonic() + timeout_s
        while True:
            last = await self.outcome(request_id)
            if last is not None and last.status.is_final:
                return last
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return timed_out(last, request_id)
            await asyncio.sleep(min(poll_s, remaining_s))

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
