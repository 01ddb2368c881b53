"""The sans-I/O core shared by :class:`~producers.sync.LeadProducer` and
:class:`~producers.aio.AsyncLeadProducer` (in the style of h11: no sockets here).

Every producer operation is a generator, a :data:`Step`. It yields what it needs done,
either a :class:`Send` (Redis commands for one pipelined round trip, answered with their
replies in order) or a :class:`Pause` (answered with None), and returns its result. The
two producers only carry the requests out, one blocking and one with ``await``; every
rule (validation, routing, the shard-count handshake, reading outcomes, polling for
one) lives here once.

The shard count is agreed through ``Keys.config()``: the first process to start stores
its value with ``HSETNX`` and every producer and worker then uses the stored value, so a
lead key maps to the same shard everywhere. Unless known fields are configured, the same
round trip reads the lead fields a worker learned from Marketo's describe
(``producers.known_fields``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypedDict, TypeVar

from producers import wire
from producers.config import ProducerConfig
from producers.errors import (
    Backpressure,
    ConfigError,
    InvalidLead,
    NotReplicated,
    Rekeyed,
    Resharded,
    Retryable,
)
from producers.keys import Keys
from producers.known_fields import (
    LEARNED_AT_FIELD,
    KnownFields,
    configured,
    decode_known_fields,
)
from producers.lanes import Lane, check_lane, stream_index
from producers.lead import (
    SOAP_KEY_RULE,
    LeadUpsert,
    check_known_fields,
    key_digest,
    lead_key,
    shard_for,
    validate_lead,
)
from producers.outcome import Outcome, OutcomeStatus

logger = logging.getLogger("producers.producer")

#: Leads per pipelined round trip in ``upsert_many``.
BULK_CHUNK: Final = 1000
#: The field of the ``Keys.config()`` hash that holds the agreed shard count.
SHARDS_FIELD: Final = "shards"
#: Fields of the ``Keys.reshard()`` hash while ``leadsync reshard`` changes the count: the
#: target count, and the phase (``freeze``: intake refused while the streams drain;
#: ``switch``: no lease either, while the last calls end). ``scripts/fence.lua``, the
#: lease and the replay steps read them.
RESHARD_TO: Final = "to"
RESHARD_PHASE: Final = "phase"
#: The field of the ``Keys.config()`` hash where a worker stores its key rule
#: (``producers.lead.key_rule``): how a lead's key is made, so producers order writes by
#: the key Marketo matches on.
KEY_RULE_FIELD: Final = "key_rule"
#: A producer looks at the stored key rule again after this long (a worker that starts
#: later, or changes protocol, is followed without a restart); the learned fields too.
KEY_RULE_REFRESH_S: Final = 60.0
#: What a refusal during ``leadsync reshard`` suggests waiting: its freeze lasts about
#: one call.
RESHARD_RETRY_AFTER_S: Final = 1.0
#: What NotReplicated suggests waiting: about the time Sentinel takes to switch masters.
REPLICA_RETRY_AFTER_S: Final = 2.0
#: Enqueue attempts of one step while the stored shard count keeps changing under it
#: (each RESHARDED answer places the records again by the new count).
RESHARD_ATTEMPTS: Final = 3
#: Outcomes read per pipelined round trip while waiting for many.
OUTCOME_CHUNK: Final = 1000
#: Keyword arguments a record of ``upsert_many`` may carry.
LEAD_FIELDS: Final = frozenset(
    {"email", "marketo_id", "foreign_sys_person_id", "foreign_sys_type", "attributes", "dedup"}
)

T = TypeVar("T")
U = TypeVar("U")

#: One Redis command with its arguments, as ``execute_command`` takes it.
Command = tuple[str | int | float, ...]


class LeadFields(TypedDict, total=False):
    """The keyword arguments of ``upsert``: what :func:`validate_lead` checks."""

    email: str | None
    marketo_id: int | str | None
    foreign_sys_person_id: str | None
    foreign_sys_type: str | None
    attributes: Mapping[str, object] | None
    dedup: bool


@dataclass(frozen=True, slots=True)
class Send:
    """Run these commands in one round trip (pipelined, no transaction); reply in order.
    ``partial``: a command's error comes back in its place instead of being raised."""

    commands: tuple[Command, ...]
    partial: bool = False


@dataclass(frozen=True, slots=True)
class Pause:
    """Sleep this long, then go on."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Raise:
    """An answer that is an error (a refusal): raised inside the step at its request, so
    the step may handle it (a RESHARDED refusal is: the step places its records again)."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """What :func:`advance` returns once a step has its result."""

    value: T


#: A producer operation: yields requests, receives their answers, returns its result.
Step = Generator[Send | Pause, Any, T]


def advance(step: Step[T], answer: Any) -> Send | Pause | Done[T]:
    """Give ``step`` the answer to its last request (None to start it; a :class:`Raise`
    is raised inside it); return its next request, or Done with its result."""
    try:
        if isinstance(answer, Raise):
            return step.throw(answer.error)
        return step.send(answer)
    except StopIteration as finished:
        return Done(finished.value)


def send(*commands: Command) -> Send:
    return Send(commands)


class Pipeline(Protocol):
    def execute_command(self, *args: Any) -> Any: ...


P = TypeVar("P", bound=Pipeline)


def queue(pipe: P, request: Send) -> P:
    """Queue every command of ``request`` on a redis-py pipeline (sync or asyncio)."""
    for command in request.commands:
        pipe.execute_command(*command)
    return pipe


# --- configuration and the shard-count handshake ---------------------------------------


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
    stored_text = wire.text(stored)
    if not stored_text.isdigit() or int(stored_text) < 1:
        raise ConfigError(f"{config_key} field {SHARDS_FIELD!r} is not a positive integer")
    agreed = int(stored_text)
    if agreed != wanted:
        logger.warning(
            "shard count %d differs from the stored %d in %s; using the stored value",
            wanted,
            agreed,
            config_key,
        )
    return agreed


@dataclass(frozen=True, slots=True)
class Admission:
    """When the enqueue steps refuse new work with Backpressure: a shard's live stream
    holding ``max_shard_backlog`` entries (its bulk stream ``max_bulk_backlog``), or Redis
    at ``memory_high_water`` of its maxmemory; bulk already at ``memory_high_water -
    live_memory_reserve``, so live intake keeps that reserve (0 turns a bound off)."""

    max_shard_backlog: int = 0
    memory_high_water: float = 0.0
    max_bulk_backlog: int = 0
    live_memory_reserve: float = 0.0

    @classmethod
    def from_config(cls, config: ProducerConfig) -> Admission:
        return cls(
            config.max_shard_backlog,
            config.memory_high_water,
            config.max_bulk_backlog,
            config.live_memory_reserve,
        )

    def bounds(self, lane: Lane) -> tuple[int, float]:
        """(max backlog per stream, memory high water) for ``lane``."""
        if lane == "live":
            return self.max_shard_backlog, self.memory_high_water
        high_water = self.memory_high_water
        if high_water > 0:
            high_water = max(high_water - self.live_memory_reserve, 0.01)
        return self.max_bulk_backlog, high_water


@dataclass(frozen=True, slots=True)
class Ticket:
    """Makes one enqueue step safe to send again: ``name`` names the sender's sequence of
    steps (a backfill's journal), ``step`` this step (its rows). When the last step
    enqueued under ``name`` was ``step``, sending it again writes nothing and answers the
    request ids it got then (kept 30 days). It covers one atomic step: at most
    BULK_CHUNK records."""

    name: str
    step: str


@dataclass(frozen=True, slots=True)
class Placed:
    """Where one validated lead goes: its stream's number (the request id's first part),
    the keys its enqueue step touches, and what the entry holds."""

    index: int
    stream: str
    sequence: str
    fields: str
    digest: str
    payload: str


@dataclass(frozen=True, slots=True)
class Route:
    """Where entries go once the shard count is agreed; stream names are precomputed
    (live streams 0..shards-1, then the bulk streams)."""

    keys: Keys
    shards: int
    streams: tuple[str, ...]
    key_rule: str = SOAP_KEY_RULE
    #: The attribute names accepted (configured, or learned from Marketo's describe);
    #: None accepts any.
    known: KnownFields | None = None
    #: When new work is refused (``scripts/admit.lua``).
    admission: Admission = dataclasses.field(default_factory=lambda: Admission())

    @classmethod
    def build(
        cls,
        keys: Keys,
        shards: int,
        key_rule: str = SOAP_KEY_RULE,
        known: KnownFields | None = None,
        admission: Admission | None = None,
    ) -> Route:
        streams = tuple(keys.stream(s) for s in range(2 * shards))
        return cls(keys, shards, streams, key_rule, known, admission or Admission())

    def place(self, lead: LeadUpsert, lane: Lane = "live") -> Placed:
        """Where ``lead`` goes in ``lane``. Raises InvalidLead when the lead lacks the key
        the rule needs (REST: the lookup field's value), before anything is written."""
        key = lead_key(lead, self.key_rule)
        shard = shard_for(key, self.shards)
        digest = key_digest(key)
        index = stream_index(shard, self.shards, lane)
        return Placed(
            index,
            self.streams[index],
            self.keys.sequence(shard),
            self.keys.written_fields(shard, digest),
            digest,
            wire.encode_lead(lead),
        )

    def entry(self, placed: Placed, lane: Lane = "live") -> Command:
        """The one atomic step (``enqueue.lua``) that enqueues ``placed``."""
        return (
            "EVAL",
            wire.ENQUEUE_LUA,
            6,
            placed.stream,
            self.keys.admission(),
            placed.sequence,
            placed.fields,
            self.keys.config(),
            self.keys.reshard(),
            placed.digest,
            placed.payload,
            *self.admission.bounds(lane),
            1 if lane == "bulk" else 0,
            self.shards,
            self.key_rule,
        )

    def batch(
        self, placed: Sequence[Placed], lane: Lane = "live", ticket: Ticket | None = None
    ) -> Command:
        """One atomic command for many leads of one lane (``enqueue_batch.lua``): all
        admitted, or none; under ``ticket``, written once."""
        keys = [key for p in placed for key in (p.stream, p.sequence, p.fields)]
        argv = [arg for p in placed for arg in (p.digest, p.payload)]
        if ticket is not None:
            keys.append(self.keys.ticket(ticket.name))
            argv += [ticket.step, " ".join(str(p.index) for p in placed)]
        return (
            "EVAL",
            wire.ENQUEUE_BATCH_LUA,
            3 + len(keys),
            self.keys.admission(),
            self.keys.config(),
            self.keys.reshard(),
            *keys,
            *self.admission.bounds(lane),
            1 if lane == "bulk" else 0,
            self.shards,
            self.key_rule,
            *argv,
        )

    def locate(self, value: str) -> tuple[int, str] | None:
        """(stream number, entry id) of a request id, or None when it cannot be one of
        ours. Any number is looked up: an id made under an earlier shard count (before
        ``leadsync reshard``) names a stream this layout may not have, and its outcome
        stays where it was written."""
        try:
            return wire.parse_request_id(value)
        except ValueError:
            return None

    def lookup(self, shard: int, entry_id: str) -> tuple[Command, Command, Command]:
        """XRANGE before the outcome's HGET (and the previous version's HGETALL): the
        order :func:`read_outcome` relies on."""
        stream = self.streams[shard] if shard < len(self.streams) else self.keys.stream(shard)
        return (
            ("XRANGE", stream, entry_id, entry_id),
            ("HGET", *self.keys.outcome_slot(shard, entry_id)),
            ("HGETALL", self.keys.outcome(shard, entry_id)),
        )


# --- reading outcomes ------------------------------------------------------------------


def read_outcome(
    request: str,
    entry_id: str,
    entries: Sequence[Any],
    packed: bytes | str | None,
    fields: Mapping[Any, Any],
) -> Outcome | None:
    """Interpret the replies of :meth:`Route.lookup`: ``XRANGE id id``, then the packed
    outcome (``HGET``), then the previous version's hash (``HGETALL``), in that order.

    The worker writes the outcome and deletes the entry in one atomic step, so when the
    XRANGE found nothing the reads that ran after it see the outcome unless it expired.
    An HTTP API id (``<request id>.<tag>``) is read as its request id and answered under
    the id as given.
    """
    plain = request.partition(".")[0]
    if packed:
        outcome = Outcome.unpack(plain, packed)
    elif fields:
        outcome = Outcome.from_fields(plain, fields)
        if outcome.enqueued_at is None:
            outcome = dataclasses.replace(outcome, enqueued_at=wire.entry_time_s(entry_id))
    elif entries:
        outcome = Outcome(plain, OutcomeStatus.PENDING, enqueued_at=wire.entry_time_s(entry_id))
    else:
        return None
    return outcome if plain == request else dataclasses.replace(outcome, request_id=request)


def timed_out(last: Outcome | None, request: str) -> Outcome:
    """What ``wait_outcome`` returns (or raises) when the deadline passes."""
    if last is None:
        raise TimeoutError(f"request {request} is unknown or its outcome expired")
    return last


# --- validating records ----------------------------------------------------------------


#: Known fields as the validating functions take them: a route's (configured or learned)
#: or case-folded names; None accepts any attribute.
Known = KnownFields | frozenset[str] | None


def check_fields(lead: LeadUpsert, known: Known) -> LeadUpsert:
    """``lead``, or InvalidLead naming an attribute outside ``known``."""
    if isinstance(known, KnownFields):
        return known.check(lead)
    return check_known_fields(lead, known)


def record_lead(record: object, known: Known = None) -> LeadUpsert:
    """Validate one ``upsert_many`` record; unknown keys are InvalidLead naming the key."""
    if not isinstance(record, Mapping):
        raise InvalidLead("record", "must be a mapping of lead fields")
    for name in record:
        if name not in LEAD_FIELDS:
            # Names only, never values; a non-string key is reported by its type.
            shown = name if isinstance(name, str) else type(name).__name__
            raise InvalidLead(shown, "is not a lead field")
    return check_fields(validate_lead(**record), known)


def bulk_chunks(
    records: Iterable[object], known: Known = None
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


def routed_batch(
    route: Route,
    items: Sequence[LeadUpsert | InvalidLead],
    lane: Lane,
    ticket: Ticket | None = None,
) -> tuple[tuple[list[Placed | InvalidLead], list[Placed]], Command | None]:
    """Every item placed by ``route`` (or refused), the valid ones, and the one atomic
    command that enqueues them (None when none is valid)."""
    routed = [route_or_refuse(route, item, lane) for item in items]
    valid = [item for item in routed if not isinstance(item, InvalidLead)]
    return (routed, valid), route.batch(valid, lane, ticket) if valid else None


def batch_ids(valid: Sequence[Placed], reply: Any) -> list[str]:
    """The request ids of a batch step's reply: the entry ids it wrote, or (TICKET) the
    stream numbers and entry ids its ticket's step wrote before."""
    if isinstance(reply, list | tuple) and len(reply) == 3 and wire.text(reply[0]) == "TICKET":
        numbers, ids = wire.text(reply[1]).split(), wire.text(reply[2]).split()
        return [wire.request_id(int(n), i) for n, i in zip(numbers, ids, strict=True)]
    return [wire.request_id(p.index, wire.text(i)) for p, i in zip(valid, reply, strict=True)]


def route_or_refuse(
    route: Route, item: LeadUpsert | InvalidLead, lane: Lane = "live"
) -> Placed | InvalidLead:
    """Where a valid lead goes, or why it cannot go (a refusal stays one; a lead without
    the key the rule needs becomes one)."""
    if isinstance(item, InvalidLead):
        return item
    try:
        return route.place(item, lane)
    except InvalidLead as exc:
        return exc


# --- the operations --------------------------------------------------------------------


class ProducerCore:
    """The state of one producer (prefix, wanted shard count, known fields and, once
    agreed, the route) and its operations as :data:`Step` generators.

    Known fields: an explicit ``known_fields=`` wins (``()`` accepts any attribute and
    learns nothing), then LEADSYNC_KNOWN_FIELDS; with neither, the fields a worker
    learned from Marketo's describe, read with the handshake and looked at again every
    KEY_RULE_REFRESH_S; until some are stored, any attribute is accepted."""

    def __init__(
        self,
        *,
        key_prefix: str | None = None,
        shards: int | None = None,
        known_fields: Iterable[str] | None = None,
        key_rule: str | None = None,
        replicas: int | None = None,
        replica_wait_s: float | None = None,
        config: ProducerConfig | None = None,
    ) -> None:
        """``config`` (default: read from LEADSYNC_* now) supplies what is not passed.
        ``known_fields`` (default LEADSYNC_KNOWN_FIELDS, else the learned fields)
        refuses other attribute names; ``key_rule`` (default from LEADSYNC_MARKETO_API and
        _LOOKUP_FIELD) is used until a worker has stored its own; ``replicas`` (default
        LEADSYNC_ENQUEUE_REPLICAS) must confirm every enqueue within ``replica_wait_s``."""
        config = config or ProducerConfig.from_env()
        prefix, self.wanted, self.known = resolve_config(
            config.key_prefix if key_prefix is None else key_prefix,
            config.shards if shards is None else shards,
            config.known_fields if known_fields is None else known_fields,
        )
        self.replicas = config.enqueue_replicas if replicas is None else replicas
        self.replica_wait_s = config.replica_wait_s if replica_wait_s is None else replica_wait_s
        self.admission = Admission.from_config(config)
        self.backpressure_retry_s = config.backpressure_retry_s
        self.keys = Keys(prefix)
        self.route: Route | None = None
        self.wanted_rule = key_rule or config.key_rule
        self._rule_read_at = 0.0
        #: Whether this producer follows the fields learned from Marketo's describe.
        self.learns = known_fields is None and self.known is None
        self._fields_version: str | None = None

    def agree(self) -> Step[Route]:
        """The agreed routing: HSETNX then HGET the shard count, the first time only
        (concurrent first uses may both ask; that is harmless), and the key rule a worker
        stored (looked at again every KEY_RULE_REFRESH_S). A producer that learns its
        fields reads them in the same round trip; at each look after, it reads their
        version and, when it changed, the fields once more."""
        config = self.keys.config()
        fields_key = self.keys.known_fields()
        if self.route is None:
            replies = yield send(
                ("HSETNX", config, SHARDS_FIELD, self.wanted),
                ("HGET", config, SHARDS_FIELD),
                ("HGET", config, KEY_RULE_FIELD),
                *((("HGETALL", fields_key),) if self.learns else ()),
            )
            shards = adopt_shards(replies[1], self.wanted, config)
            known = self._adopt_fields(replies[3]) if self.learns else configured(self.known)
            self.route = Route.build(
                self.keys, shards, self._adopt_rule(replies[2]), known, self.admission
            )
        elif time.monotonic() - self._rule_read_at > KEY_RULE_REFRESH_S:
            replies = yield send(
                ("HGET", config, KEY_RULE_FIELD),
                *((("HGET", fields_key, LEARNED_AT_FIELD),) if self.learns else ()),
            )
            route = self.route
            adopted = self._adopt_rule(replies[0])
            if adopted != route.key_rule:
                route = dataclasses.replace(route, key_rule=adopted)
            version = wire.text(replies[1]) if self.learns and replies[1] else None
            if self.learns and version != self._fields_version:
                (stored,) = yield send(("HGETALL", fields_key))
                route = dataclasses.replace(route, known=self._adopt_fields(stored))
            self.route = route
        return self.route

    def _adopt_rule(self, stored: bytes | str | None) -> str:
        self._rule_read_at = time.monotonic()
        return wire.text(stored) if stored else self.wanted_rule

    def _adopt_fields(self, stored: object) -> KnownFields | None:
        self._fields_version, known = decode_known_fields(stored)
        return known

    def upsert(self, fields: LeadFields, lane: Lane = "live") -> Step[str]:
        """Validate (InvalidLead before anything is written: configured known fields
        before any I/O, learned ones after the handshake), then one XADD round trip."""
        lane = check_lane(lane)
        lead = check_known_fields(validate_lead(**fields), self.known)
        if self.learns:
            lead = check_fields(lead, (yield from self.agree()).known)

        def one(route: Route) -> tuple[Placed, Command]:
            placed = route.place(lead, lane)
            return placed, route.entry(placed, lane)

        placed, reply, seen = yield from self._placed(one)
        rid = wire.request_id(placed.index, wire.text(reply))
        self._confirmed([rid], seen)
        return rid

    def upsert_many(
        self,
        records: Iterable[Mapping[str, Any]],
        lane: Lane = "live",
        ticket: Ticket | None = None,
    ) -> Step[list[str | InvalidLead]]:
        """Request ids (or the InvalidLead) in record order, one round trip per chunk of
        BULK_CHUNK records, each chunk ONE atomic step (``enqueue_batch.lua``): admitted
        whole or refused whole, so a refused older write of a lead can never be retried
        after a newer one of the same chunk got in. Backpressure or NotReplicated stops
        at the first chunk refused or unconfirmed: ``results`` hold every record before
        it (a refused chunk is not in them; an unconfirmed one is)."""
        lane = check_lane(lane)
        route = yield from self.agree()
        results: list[str | InvalidLead] = []
        chunks: Iterable[list[LeadUpsert | InvalidLead]] = bulk_chunks(records, route.known)
        if ticket is not None:  # one step: materialized to be sure (streamed otherwise)
            chunks = list(chunks)
            if len(chunks) > 1:
                raise ValueError(f"a ticket covers one step: at most {BULK_CHUNK} records")
        for chunk in chunks:
            (routed, valid), ids, seen = yield from self._placed(
                lambda route: routed_batch(route, chunk, lane, ticket),  # noqa: B023  # called at once
                partial=True,
            )
            if not valid:
                results.extend(routed)  # type: ignore[arg-type]  # all InvalidLead
                continue
            if isinstance(ids, Exception):
                refusal = self.refused(str(ids))
                if refusal is None:
                    raise ids
                refusal.results = list(results)  # type: ignore[attr-defined]
                raise refusal
            made = iter(batch_ids(valid, ids))
            results.extend(item if isinstance(item, InvalidLead) else next(made) for item in routed)
            self._confirmed(results, seen)
        return results

    def enqueue_batch(
        self, records: Sequence[object], lane: Lane = "live"
    ) -> Step[list[str | InvalidLead]]:
        """Validate every record as :meth:`upsert_many` does and enqueue the valid ones in
        ONE atomic step (all or none, whatever Redis refuses): the HTTP API's batch. A
        request id or the InvalidLead per record, in record order."""
        lane = check_lane(lane)
        route = yield from self.agree()
        items = [item for chunk in bulk_chunks(records, route.known) for item in chunk]
        (routed, valid), ids, seen = yield from self._placed(
            lambda route: routed_batch(route, items, lane)
        )
        if not valid:
            return list(routed)  # type: ignore[arg-type]
        made = iter(wire.request_id(p.index, wire.text(i)) for p, i in zip(valid, ids, strict=True))
        results = [item if isinstance(item, InvalidLead) else next(made) for item in routed]
        self._confirmed(results, seen)
        return results

    def _placed(
        self, place: Callable[[Route], tuple[U, Command | None]], *, partial: bool = False
    ) -> Step[tuple[U, Any, int | None]]:
        """Place records by the agreed route and run the one enqueue command ``place``
        builds (None: nothing to send): what ``place`` made, the command's reply and how
        many replicas confirmed. When ``leadsync reshard`` changed the shard count since
        the route was agreed (the step answers RESHARDED, nothing written), adopt the
        stored count and place them again."""
        for attempt in range(RESHARD_ATTEMPTS):
            route = yield from self.agree()
            made, command = place(route)
            if command is None:
                return made, None, None
            try:
                (reply,), seen = yield from self._enqueue((command,), partial=partial)
            except (Resharded, Rekeyed) as moved:
                if attempt + 1 == RESHARD_ATTEMPTS:
                    raise
                self._follow(moved)
                continue
            return made, reply, seen
        raise AssertionError("unreachable")  # pragma: no cover

    def _follow(self, moved: Resharded | Rekeyed) -> None:
        """Place by the stored layout from now on: the count ``leadsync reshard`` stored,
        or the key rule a worker stored."""
        route = self.route
        assert route is not None  # agreed before any enqueue
        shards, rule = route.shards, route.key_rule
        if isinstance(moved, Resharded):
            logger.info("shard count changed from %d to %d; placing by it", shards, moved.shards)
            shards = moved.shards
        else:
            logger.info("lead key rule changed from %s to %s; placing by it", rule, moved.rule)
            rule = moved.rule
            self._rule_read_at = time.monotonic()
        self.route = Route.build(self.keys, shards, rule, route.known, self.admission)

    def _enqueue(
        self, commands: tuple[Command, ...], *, partial: bool = False
    ) -> Step[tuple[list[Any], int | None]]:
        """Run enqueue commands in one round trip and, with replicas wanted, ``WAIT`` on
        the same connection after them (WAIT covers the writes of its own connection):
        the replies and how many replicas confirmed (None when none are wanted).
        ``partial``: a refused command's error in its place (see :class:`Send`)."""
        if not commands:
            return [], None
        if not self.replicas:
            replies = list((yield Send(commands, partial)))
            seen = None
        else:
            timeout_ms = max(1, round(self.replica_wait_s * 1000))
            *replies, confirmed = yield Send(
                (*commands, ("WAIT", self.replicas, timeout_ms)), partial
            )
            seen = int(confirmed)
        for reply in replies:  # a partial send answers a refusal in place
            if isinstance(reply, Exception) and isinstance(
                moved := self.refused(str(reply)), Resharded | Rekeyed
            ):
                raise moved
        return replies, seen

    def refused(self, message: str) -> Retryable | None:
        """An enqueue Redis refused for now, nothing written: Backpressure from the
        admission step (``scripts/admit.lua``) or while the shard count changes,
        Resharded when it changed (``scripts/fence.lua``), or NotReplicated from a
        master that counts too few replicas (min-replicas-to-write) and will take it
        once one follows. None for any other error."""
        # A pipeline's error names the command first: look inside, never show it.
        if "RESHARDED" in message:
            stored = message[message.index("RESHARDED") + len("RESHARDED") :].split()
            if stored and stored[0].isdigit() and int(stored[0]) > 0:
                return Resharded(int(stored[0]))
        if "REKEYED" in message:
            rule = message[message.index("REKEYED") + len("REKEYED") :].split()
            if rule:
                return Rekeyed(rule[0])
        if "BACKPRESSURE" in message:
            reason = message[message.index("BACKPRESSURE") + len("BACKPRESSURE") :].strip()
            retry_s = (
                RESHARD_RETRY_AFTER_S
                if reason.startswith("resharding")
                else self.backpressure_retry_s
            )
            return Backpressure(f"refused for now ({reason}); retry", retry_s)
        if "NOREPLICAS" in message:
            return NotReplicated([], max(self.replicas, 1), 0, REPLICA_RETRY_AFTER_S, refused=True)
        return None

    def _confirmed(self, results: list[Any], seen: int | None) -> None:
        """NotReplicated when fewer replicas confirmed than wanted."""
        if seen is not None and seen < self.replicas:
            raise NotReplicated(results, self.replicas, seen, REPLICA_RETRY_AFTER_S)

    def outcome(self, request: str) -> Step[Outcome | None]:
        """One outcome: final, PENDING while its entry waits, or None when unknown."""
        return (yield from self.outcomes([request]))[0]

    def outcomes(self, requests: Sequence[str]) -> Step[list[Outcome | None]]:
        """Many outcomes in one pipelined round trip."""
        route = yield from self.agree()
        located = [route.locate(rid) for rid in requests]
        commands = [command for place in located if place for command in route.lookup(*place)]
        replies = iter((yield Send(tuple(commands))) if commands else ())
        return [
            None
            if place is None
            else read_outcome(rid, place[1], next(replies), next(replies), next(replies))
            for rid, place in zip(requests, located, strict=True)
        ]

    def wait_outcomes(
        self,
        requests: Sequence[str],
        timeout_s: float,
        poll_s: float,
        on_progress: Callable[[int], None] | None = None,
    ) -> Step[dict[str, Outcome | None]]:
        """Poll many requests, :data:`OUTCOME_CHUNK` per round trip, until every outcome is
        final or ``timeout_s`` passes; the last look at each (None: unknown).
        ``on_progress`` hears how many are final after each round."""
        deadline = time.monotonic() + timeout_s
        latest: dict[str, Outcome | None] = {}
        waiting = list(requests)
        while True:
            still: list[str] = []
            for start in range(0, len(waiting), OUTCOME_CHUNK):
                part = waiting[start : start + OUTCOME_CHUNK]
                for rid, outcome in zip(part, (yield from self.outcomes(part)), strict=True):
                    latest[rid] = outcome
                    if outcome is None or not outcome.status.is_final:
                        still.append(rid)
            waiting = still
            if on_progress is not None:
                on_progress(len(requests) - len(waiting))
            remaining_s = deadline - time.monotonic()
            if not waiting or remaining_s <= 0:
                return latest
            yield Pause(min(poll_s, remaining_s))

    def wait_outcome(self, request: str, timeout_s: float, poll_s: float) -> Step[Outcome]:
        """Poll until the outcome is final. When ``timeout_s`` passes first, the last
        PENDING outcome; TimeoutError if the last look found the request unknown."""
        deadline = time.monotonic() + timeout_s
        while True:
            last = yield from self.outcome(request)
            if last is not None and last.status.is_final:
                return last
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return timed_out(last, request)
            yield Pause(min(poll_s, remaining_s))
