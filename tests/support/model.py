"""Model-based testing kit: a scripted Marketo, a reference model of what the pipeline
promises, and ONE adapter (:class:`System`) through which every call into leadsync's
internals goes.

When the ledger API changes, only :class:`System` (and the two key-name helpers it uses)
should need porting; the scripted Marketo and the reference model only speak wire bytes
(SOAP or REST, one :class:`Wire` each) and request ids.

Every upsert the test enqueues is a partial record: it sets a non-empty subset of
:data:`FIELDS` (``Seq``, ``Val``, ``City``, ``Company``), so writes of one lead carry
different fields and Marketo merges them per field. Each write has a number (its *seq*,
growing with every enqueue) and every value it sets names it (:func:`field_value`:
``Seq`` is the number itself, any other value ``<seq>:<tag>``), so the value Marketo
holds for a field says which write set it (:func:`origin`), whatever was merged or
dropped on the way. A poisoned upsert also carries ``Bad``, a field the scripted Marketo
does not know: over SOAP the whole call faults with 20105 naming it (leadsync fails the
records carrying it and sends the rest again); over REST Marketo skips that record with
reason 1006 and applies the others in the same call (no isolation).

Over REST the scripted Marketo finds a lead by the call's ``lookupField`` only, as Sync
Leads does: a record's lead is its email (``email:<address>``) whether or not the app
knew the lead's Marketo id, and a record carrying ``id`` outside updateOnly, or a second
record of one lead in a call, is skipped (1003, 1036) as Marketo does.

The scripted Marketo runs behind a :class:`~worker.transport.MockTransport`, or (with
:class:`SplitReplies`) behind a real socket that writes every reply in several pieces, read
by the production :class:`~worker.transport.AiohttpTransport`. Every request carries a
post number (:data:`POST_HEADER`, added by :class:`RecordingTransport`), so a call Marketo
received names the post that sent it and the task that posted it.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, Protocol, get_args
from urllib.parse import parse_qs

import redis.asyncio
from prometheus_client import REGISTRY

from marketo_sim import rest as sim_rest
from marketo_sim import soap as sim_soap
from producers.contract import Keys, Lane, OutcomeStatus, parse_request_id, shard_for
from producers.keys import ATTEMPTS_PARTS
from producers.producer import AsyncLeadProducer
from tests.support.wire_server import Reply
from worker.core.fields import rest_name, soap_name
from worker.drain import Drainer, DrainReport
from worker.errors import CallTimeout
from worker.ledger import Ledger
from worker.limits import RedisLimiter
from worker.marketo.factory import api_for
from worker.ops.dead_letters import list_dead_letters, replay
from worker.settings import Settings
from worker.transport import HttpReply, MockTransport, Transport

SEQ: Final = "Seq"
VAL: Final = "Val"
CITY: Final = "City"
COMPANY: Final = "Company"
BAD: Final = "Bad"
#: The fields a write may set (a non-empty subset each), in the order they are written.
FIELDS: Final[tuple[str, ...]] = (SEQ, VAL, CITY, COMPANY)


def field_value(seq: int, name: str, tag: str) -> str:
    """The value write ``seq`` sets ``name`` to: it names the write (:func:`origin`)."""
    return str(seq) if name == SEQ else f"{seq}:{tag}"


def origin(value: str) -> int:
    """The seq of the write that set ``value`` (-1 for a value no write of the test set)."""
    head = value.partition(":")[0]
    return int(head) if head.isdigit() else -1


#: One write as the model-based test asks for it: (email, tag, dedup, poisoned, lane,
#: the fields it sets, whether it names the lead's Marketo id when one is known).
WriteSpec = tuple[str, str, bool, bool, Lane, tuple[str, ...], bool]


def tag(value: str | None) -> str | None:
    """What the test asked a write to set, without the seq that names the write."""
    return None if value is None else value.partition(":")[2]


#: The outcomes that say Marketo applied the write.
SUCCESS: Final = frozenset({OutcomeStatus.CREATED, OutcomeStatus.UPDATED})
#: Outcomes that never change once written.
TERMINAL: Final = frozenset({OutcomeStatus.CREATED, OutcomeStatus.UPDATED, OutcomeStatus.FAILED})

PausePoint = Literal["after_claim", "after_send", "after_commit"]
PAUSE_POINTS: Final[tuple[PausePoint, ...]] = ("after_claim", "after_send", "after_commit")


# --- the scripted Marketo ----------------------------------------------------------------

#: What the next call does. "ok" applies and answers; the "fault_*" / "page_502" /
#: throttle / quota / auth behaviours answer before processing anything; the "lost_*"
#: behaviours apply the call and then lose the answer; "gateway_504" is a gateway giving
#: up at once (HTTP 504, text/html) while Marketo goes on with the call: its keys stay in
#: flight until Marketo applies it later (:meth:`ScriptedMarketo.apply_late`), within
#: LEADSYNC_UNKNOWN_OUTCOME_REST_S.
Behaviour = Literal[
    "ok",
    "fault_10001",
    "page_502",
    "lost_truncated",
    "lost_timeout",
    "throttle_20023",
    "throttle_20024",
    "quota_20015",
    "auth_20014",
    "gateway_504",
]
BEHAVIOURS: Final[tuple[Behaviour, ...]] = get_args(Behaviour)

#: The behaviours after which leadsync cannot know whether Marketo applied the call (the
#: request was written, no usable answer came back): OutcomeUnknown. Their dedup=false
#: records are parked (DEAD_LETTERED, OUTCOME_UNKNOWN): a resend would be a second lead.
UNKNOWN_OUTCOME: Final = frozenset({"page_502", "lost_truncated", "lost_timeout", "gateway_504"})
#: The error code of a record parked after a call whose outcome is unknown.
OUTCOME_UNKNOWN_CODE: Final = "OUTCOME_UNKNOWN"
#: The error code of a replayed write every field of which a newer applied write set.
SUPERSEDED_CODE: Final = "SUPERSEDED"

#: Known product defects (issue 18) invariant 2 can be narrowed for (``Reference.excused``):
#: none now. Fixed, kept as a name for LEADSYNC_MODEL_STRICT triage: a bulk or replayed
#: write was sent without the fields of a newer write of its lead that "may have been
#: applied" (its call's answer was lost) and then ended FAILED for an unknown field,
#: which no call ever applies (worker/drain/choice.py, NEVER_APPLIED_CODES).
FAILED_MAYBE_WRITTEN: Final = "failed-maybe-written"
EXCUSES: Final[frozenset[str]] = frozenset()

GATEWAY_504_PAGE: Final = b"<html><body><h1>504 Gateway Time-out</h1></body></html>"

#: The request header that numbers each post (:class:`RecordingTransport`).
POST_HEADER: Final = "X-Model-Post"

#: The "fault_*" / throttle / quota / auth behaviours, as each protocol says them. Both
#: columns mean the same to the worker (``test_model_drain`` checks it): 10001 / 611
#: transient, 20023 / 606 and 20024 / 615 throttled (cluster cooldown), 20015 / 607 daily
#: quota, 20014 / 603 credentials refused (hold).
SOAP_FAULTS: Final[dict[str, int]] = {
    "fault_10001": 10001,
    "throttle_20023": 20023,
    "throttle_20024": 20024,
    "quota_20015": 20015,
    "auth_20014": 20014,
}
REST_FAULTS: Final[dict[str, int]] = {
    "fault_10001": 611,
    "throttle_20023": 606,
    "throttle_20024": 615,
    "quota_20015": 607,
    "auth_20014": 603,
}

WireProtocol = Literal["soap", "rest"]
PROTOCOLS: Final[tuple[WireProtocol, ...]] = get_args(WireProtocol)

#: The fields the scripted Marketo knows (SOAP spelling); any other is an unknown field.
KNOWN_FIELDS: Final = frozenset(FIELDS)

#: The REST side of the scripted Marketo: its base URL, client and the one token it issues.
REST_URL: Final = "http://marketo.test"
CLIENT_ID: Final = "model-client"
CLIENT_SECRET: Final = "model-secret"
TOKEN: Final = "t-1:int"


#: Why Marketo skipped a record (REST): (code, message) per reason.
Reasons = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a call: its lead key, its attributes in SOAP spelling, the names (as
    sent) of the fields Marketo does not know, and (REST) why Marketo skips it."""

    key: str
    attributes: dict[str, str]
    unknown: tuple[str, ...] = ()
    skip: Reasons = ()


@dataclass(frozen=True, slots=True)
class Request:
    dedup: bool
    records: list[Record]


@dataclass(frozen=True, slots=True)
class Applied:
    lead_id: int
    created: bool


@dataclass(frozen=True, slots=True)
class Skipped:
    """REST only: the record was not applied (an unknown field, or Marketo refused how it
    names its lead), with Marketo's reasons."""

    reasons: Reasons


class Wire(Protocol):
    """How one protocol reads a call and says its answers."""

    protocol: WireProtocol
    #: The error code a record carrying an unknown field ends FAILED with.
    unknown_field_code: str

    def read(self, body: bytes, headers: Mapping[str, str]) -> Request | HttpReply:
        """The call, or an answer given without one (REST's identity endpoint)."""
        ...

    def fault(self, behaviour: str) -> HttpReply: ...

    def unknown_fields_fault(self, names: Sequence[str]) -> HttpReply | None:
        """The whole-call fault for unknown fields, or None: Marketo skips the records."""
        ...

    def answer(self, results: Sequence[Applied | Skipped], *, truncated: bool) -> HttpReply: ...


class SoapWire:
    """syncMultipleLeads: an unknown field faults the whole call (20105 names it)."""

    protocol: Final = "soap"
    unknown_field_code: Final = "20105"

    def read(self, body: bytes, headers: Mapping[str, str]) -> Request | HttpReply:
        request = sim_soap.parse_request_bytes(body)
        records = []
        for record in request.records:
            attributes = {a.name: a.value for a in record.attributes}
            unknown = tuple(name for name in attributes if name not in KNOWN_FIELDS)
            records.append(Record(record.key or "?", attributes, unknown))
        return Request(request.dedup is not False, records)

    def fault(self, behaviour: str) -> HttpReply:
        fault = sim_soap.SimFault(SOAP_FAULTS[behaviour])
        return HttpReply(500, "text/xml", sim_soap.render_fault(fault))

    def unknown_fields_fault(self, names: Sequence[str]) -> HttpReply | None:
        fault = sim_soap.SimFault(20105, f"unknown fields for import: {', '.join(names)}")
        return HttpReply(500, "text/xml", sim_soap.render_fault(fault))

    def answer(self, results: Sequence[Applied | Skipped], *, truncated: bool) -> HttpReply:
        statuses = []
        for result in results:
            assert isinstance(result, Applied), "SOAP never skips a record"
            status: Literal["CREATED", "UPDATED"] = "CREATED" if result.created else "UPDATED"
            statuses.append(sim_soap.SyncStatus(result.lead_id, status))
        render = sim_soap.render_truncated if truncated else sim_soap.render_success
        return HttpReply(200, "text/xml", render(statuses))


class RestWire:
    """``POST /rest/v1/leads.json`` (fields by REST API name) and the identity endpoint.
    A record's lead is the value of the call's lookupField (the email: the only lookup
    field this Marketo offers), as Sync Leads matches it, whatever else the record holds.
    An unknown field skips its record with reason 1006, and the other records of the call
    are applied; so are they when Marketo skips a record for an ``id`` outside updateOnly
    with lookupField id (1003) or for a lead already in the call (1036)."""

    protocol: Final = "rest"
    unknown_field_code: Final = "1006"

    def __init__(self) -> None:
        self.identity_calls = 0
        self._calls = 0
        self._known = frozenset(rest_name(name) for name in KNOWN_FIELDS)

    def read(self, body: bytes, headers: Mapping[str, str]) -> Request | HttpReply:
        if headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return self._identity(body)
        self._calls += 1
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._error(601)
        try:
            parsed = sim_rest.parse_sync_leads(
                body, lookup_fields=frozenset({"email"}), max_records=300
            )
        except sim_rest.RestError as error:
            return self._error(error.code, error.message)
        dedup = parsed.action != "createDuplicate"
        records = []
        seen: set[str] = set()
        for record in parsed.records:
            lookup = parsed.lookup_field  # "email": parse_sync_leads refuses any other
            fields = {name: value for name, value in record.items() if name not in (lookup, "id")}
            attributes = {soap_name(name): str(value) for name, value in fields.items()}
            unknown = tuple(name for name in fields if name not in self._known)
            key = f"{lookup}:{str(record.get(lookup, '?')).strip().lower()}"
            skip: list[tuple[str, str]] = [
                (self.unknown_field_code, f"Field '{n}' not found") for n in unknown
            ]
            if "id" in record and (parsed.action != "updateOnly" or lookup != "id"):
                skip.append(
                    ("1003", "Invalid data: id is allowed only with updateOnly and lookupField id")
                )
            # A record skipped for what it holds is not matched: it takes no lead's place.
            if dedup and not skip and key in seen:
                skip.append(("1036", "Duplicate object found in input"))
            if not skip:
                seen.add(key)
            records.append(Record(key, attributes, unknown, tuple(skip)))
        return Request(dedup, records)

    def _identity(self, body: bytes) -> HttpReply:
        self.identity_calls += 1
        form = parse_qs(body.decode())
        expected = {
            "grant_type": ["client_credentials"],
            "client_id": [CLIENT_ID],
            "client_secret": [CLIENT_SECRET],
        }
        if form != expected:
            return HttpReply(401, "application/json", b'{"error":"unauthorized"}')
        document = {"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600, "scope": "x"}
        return HttpReply(200, "application/json", json.dumps(document).encode())

    def _request_id(self) -> str:
        return f"{self._calls:04x}#model"

    def _error(self, code: int, message: str | None = None) -> HttpReply:
        error = sim_rest.RestError(code, message)
        return HttpReply(200, "application/json", sim_rest.render_error(self._request_id(), error))

    def fault(self, behaviour: str) -> HttpReply:
        return self._error(REST_FAULTS[behaviour])

    def unknown_fields_fault(self, names: Sequence[str]) -> HttpReply | None:
        return None

    def answer(self, results: Sequence[Applied | Skipped], *, truncated: bool) -> HttpReply:
        items = []
        for result in results:
            if isinstance(result, Skipped):
                reasons = tuple(sim_rest.Reason(code, text) for code, text in result.reasons)
                item = sim_rest.RecordResult("skipped", reasons=reasons)
            else:
                item = sim_rest.RecordResult(
                    "created" if result.created else "updated", result.lead_id
                )
            items.append(item.to_json())
        whole = sim_rest.render_success(self._request_id(), items)
        body = sim_rest.render_truncated(whole) if truncated else whole
        return HttpReply(200, "application/json", body)


def wire_for(protocol: WireProtocol) -> Wire:
    return RestWire() if protocol == "rest" else SoapWire()


@dataclass(frozen=True, slots=True)
class Call:
    """One call Marketo received, and what it did with it."""

    dedup: bool
    keys: tuple[str, ...]
    seqs: tuple[int, ...]
    behaviour: str
    applied: bool
    #: The keys of the records Marketo skipped (REST: an unknown field, 1003, 1036).
    skipped: tuple[str, ...] = ()
    #: The post that carried it (:data:`POST_HEADER`), when numbered.
    post: int | None = None
    #: Per record, the writes it carried a value of (:func:`origin`).
    origins: tuple[frozenset[int], ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    """What Marketo answers one request: ``reply``, whole, unless ``lost``: "timeout" (no
    answer ever comes) or "truncated" (``reply`` is cut short; ``whole`` is the full one)."""

    reply: HttpReply
    lost: Literal["truncated", "timeout"] | None = None
    whole: HttpReply | None = None


@dataclass(frozen=True, slots=True)
class LateCall:
    """A call a gateway answered 504 for, that Marketo has not applied yet."""

    index: int  # in ScriptedMarketo.calls
    dedup: bool
    records: list[Record]
    #: Its keys in ``in_flight`` (dedup=true records) until it is applied.
    held: tuple[str, ...]


@dataclass
class ScriptedMarketo:
    """An async MockTransport handler. Keeps, per lead (dedup=true records, by lead key),
    the attributes it holds and, for every record it applied, in order, the newest write
    the record carried (:func:`_seq`)."""

    wire: Wire = field(default_factory=SoapWire)
    script: list[Behaviour] = field(default_factory=list)
    leads: dict[str, dict[str, str]] = field(default_factory=dict)
    applied: dict[str, list[int]] = field(default_factory=dict)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    #: The gateway_504 calls not applied yet, oldest first.
    late: list[LateCall] = field(default_factory=list)
    #: Invariant 1: a field of a lead was set to an older write's value than it held.
    order_violations: list[str] = field(default_factory=list)
    #: Invariant 4: a lead key was in two calls at once.
    overlap_violations: list[str] = field(default_factory=list)
    #: Invariant 7: (the post of the "ok" call that applied and answered a write, what
    #: was sent again).
    resent: list[tuple[int | None, str]] = field(default_factory=list)
    #: A write as sent (lead, seq: ``_sent_writes``) -> the post of the last "ok" call
    #: that applied and answered it.
    _answered_ok: dict[tuple[str, int], int | None] = field(default_factory=dict)
    _ids: dict[str, int] = field(default_factory=dict)
    _next_id: int = 1

    @property
    def protocol(self) -> WireProtocol:
        return self.wire.protocol

    def lead_id(self, key: str) -> int | None:
        """The id of the lead ``key`` names, once Marketo has created it."""
        return self._ids.get(key)

    def _lead_id(self, key: str | None) -> tuple[int, bool]:
        if key is not None and key in self._ids:
            return self._ids[key], False
        lead_id, self._next_id = self._next_id, self._next_id + 1
        if key is not None:
            self._ids[key] = lead_id
        return lead_id, True

    async def __call__(self, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        answer = await self.respond(body, headers)
        if answer.lost == "timeout":
            raise CallTimeout("scripted: Marketo applied the call, the answer never came")
        return answer.reply

    async def respond(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        """What Marketo does with one request, whatever carries it."""
        request = self.wire.read(body, headers)
        if isinstance(request, HttpReply):
            return Answer(request)
        number = headers.get(POST_HEADER)
        post = int(number) if number is not None else None
        dedup = request.dedup
        keys = tuple(record.key for record in request.records) if dedup else ()
        busy = [k for k in keys if self.in_flight[k]]
        if busy:
            self.overlap_violations.append(f"keys {busy} are already in a call in flight")
        for record in request.records:
            for sent in _sent_writes(record):
                if sent in self._answered_ok:
                    self.resent.append(
                        (
                            self._answered_ok[sent],
                            f"{record.key} write {sent[1]} sent again in post {post}",
                        )
                    )
        self.in_flight.update(keys)
        held = False
        try:
            await asyncio.sleep(0)  # a concurrent caller may run here
            answer, held = self._answer(dedup, request.records, post)
            return answer
        finally:
            if not held:
                self.in_flight.subtract(keys)

    def _answer(self, dedup: bool, records: list[Record], post: int | None) -> tuple[Answer, bool]:
        """The answer, and whether the call stays in flight (a late call)."""
        behaviour: Behaviour = self.script.pop(0) if self.script else "ok"
        keys = tuple(r.key for r in records)
        seqs = tuple(_seq(r) for r in records)
        origins = tuple(frozenset(origin(v) for v in r.attributes.values()) for r in records)
        call = Call(dedup, keys, seqs, behaviour, applied=False, post=post, origins=origins)
        if behaviour in SOAP_FAULTS:
            self.calls.append(call)
            return Answer(self.wire.fault(behaviour)), False
        if behaviour == "page_502":
            self.calls.append(call)
            return Answer(
                HttpReply(502, "text/html", b"<html><body>502 Bad Gateway</body></html>")
            ), False
        if behaviour == "gateway_504":
            self.calls.append(call)
            held = keys if dedup else ()
            self.late.append(LateCall(len(self.calls) - 1, dedup, records, held))
            return Answer(HttpReply(504, "text/html", GATEWAY_504_PAGE)), True
        processed = self._process(dedup, records)
        if isinstance(processed, HttpReply):
            self.calls.append(replace(call, behaviour="record_fault"))
            return Answer(processed), False
        results, skipped = processed
        self.calls.append(replace(call, applied=True, skipped=skipped))
        whole = self.wire.answer(results, truncated=False)
        if behaviour == "lost_timeout":
            return Answer(whole, lost="timeout"), False
        if behaviour == "lost_truncated":
            cut = self.wire.answer(results, truncated=True)
            return Answer(cut, lost="truncated", whole=whole), False
        for record, result in zip(records, results, strict=True):
            # A skipped record was not applied: the drain may send its writes again apart
            # (the oldest of a merged record alone), to fail only the one at fault.
            if isinstance(result, Applied):
                for sent in _sent_writes(record):
                    self._answered_ok[sent] = post
        return Answer(whole), False

    def _process(
        self, dedup: bool, records: list[Record]
    ) -> tuple[list[Applied | Skipped], tuple[str, ...]] | HttpReply:
        """Apply a call: its results and the keys skipped, or the whole-call fault."""
        unknown = sorted({name for r in records for name in r.unknown})
        if unknown:
            whole_call = self.wire.unknown_fields_fault(unknown)
            if whole_call is not None:
                return whole_call
        results = [
            Skipped(r.skip) if r.skip else self._apply(dedup, r.key, r.attributes) for r in records
        ]
        return results, tuple(r.key for r in records if r.skip)

    def apply_late(self, select: Callable[[LateCall], bool] = lambda _call: True) -> int:
        """Marketo finishes the late calls ``select`` picks (as an "ok" call would apply
        them; nobody hears of it); their keys leave ``in_flight``. How many it applied."""
        due = [call for call in self.late if select(call)]
        for late in due:
            self.late.remove(late)
            processed = self._process(late.dedup, late.records)
            if not isinstance(processed, HttpReply):
                self.calls[late.index] = replace(
                    self.calls[late.index], applied=True, skipped=processed[1]
                )
            self.in_flight.subtract(late.held)
        return len(due)

    def _apply(self, dedup: bool, key: str, attrs: dict[str, str]) -> Applied:
        if not dedup:
            self.duplicates.append(dict(attrs))
            lead_id, _ = self._lead_id(None)
            return Applied(lead_id, created=True)
        # Per field, not per record: a replayed write without the fields a newer write
        # set since is older than what Marketo holds, and reverts nothing.
        held = self.leads.setdefault(key, {})
        for name, value in attrs.items():
            before = held.get(name)
            if before is not None and origin(value) < origin(before):
                self.order_violations.append(
                    f"{key}: {name} set to {value!r} (write {origin(value)}) over {before!r} "
                    f"(write {origin(before)}); records applied {self.applied.get(key)}"
                )
        self.applied.setdefault(key, []).append(_seq(Record(key, attrs)))
        held.update(attrs)
        lead_id, created = self._lead_id(key)
        return Applied(lead_id, created)


def _rode_unknown(write: Write, calls: Sequence[Call]) -> bool:
    """Whether ``write`` went out in a call whose outcome leadsync could not know."""
    return any(
        key == write.key and write.seq in origins
        for call in calls
        if call.behaviour in UNKNOWN_OUTCOME
        for key, origins in zip(call.keys, call.origins, strict=True)
    )


def _seq(record: Record) -> int:
    """The newest write a record carries a value of (-1: none)."""
    return max((origin(v) for v in record.attributes.values()), default=-1)


def _sent_writes(record: Record) -> set[tuple[str, int]]:
    """The writes a record carries a value of, each named by its lead and seq (a merged
    record carries only the newest value of each field: an older write whose every field
    a newer one in the record set is not named, as it is not sent)."""
    return {(record.key, origin(v)) for v in record.attributes.values() if origin(v) >= 0}


@dataclass
class SplitReplies:
    """The scripted Marketo behind a real socket: the ``handler`` of
    ``tests.support.wire_server.wire_server``. Every reply is written in 3 to 6 pieces,
    2 to 10 ms apart (by turns, so runs repeat); an answer lost to a timeout is a dropped
    connection (the request was read, nothing comes back), and every other answer lost to
    truncation is cut on the socket (its Content-Length promises more) instead of being a
    whole reply whose document is cut short."""

    marketo: ScriptedMarketo
    #: Post number -> the reply body written whole for it (invariant 7).
    written: dict[int, bytes] = field(default_factory=dict)
    #: The scripted Marketo raised (a bug of the test kit, not a lost answer).
    errors: list[str] = field(default_factory=list)
    _replies: int = 0

    async def __call__(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        try:
            answer = await self.marketo.respond(body, headers)
        except Exception as exc:
            self.errors.append(repr(exc))
            return Reply(drop=True)
        self._replies += 1
        turn = self._replies
        if answer.lost == "timeout":
            return Reply(drop=True)
        reply, cut_at = answer.reply, None
        if answer.lost == "truncated" and answer.whole is not None and turn % 2:
            reply = answer.whole
            cut_at = len(reply.body) // 2
        number = headers.get(POST_HEADER)
        if cut_at is None and number is not None:
            self.written[int(number)] = reply.body
        return Reply(
            reply.status,
            reply.content_type or "application/octet-stream",
            reply.body,
            pieces=3 + turn % 4,
            gap_s=0.002 * (1 + turn % 5),
            cut_at=cut_at,
        )


# --- the reference model -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """One accepted upsert, as the test asked for it."""

    request_id: str
    key: str  # the lead Marketo matches it to, "email:<address>"
    seq: int
    attributes: Mapping[str, str]
    dedup: bool
    #: The lead's Marketo id, sent with the email (REST: an app that kept the ``lead_id``
    #: of an earlier outcome), or None (the email alone).
    marketo_id: int | None = None
    lane: Lane = "live"

    @property
    def poisoned(self) -> bool:
        return BAD in self.attributes


@dataclass
class Reference:
    """What the pipeline promises, fed with every write and every outcome observed."""

    writes: dict[str, Write] = field(default_factory=dict)
    status: dict[str, OutcomeStatus | None] = field(default_factory=dict)
    #: Parked requests that a replay reopened (they may go PENDING, then terminal).
    reopened: set[str] = field(default_factory=set)
    #: Request id -> how many calls Marketo had received when it was last replayed.
    replayed_at: dict[str, int] = field(default_factory=dict)
    #: Request id -> the error code of its outcome, as last observed.
    codes: dict[str, str | None] = field(default_factory=dict)
    #: Lead key -> the Marketo id its successful outcomes named (what an app keeps).
    lead_ids: dict[str, int] = field(default_factory=dict)
    next_seq: int = 1
    #: The error code a FAILED outcome carries: the protocol's unknown-field code (SOAP's
    #: 20105 for the whole call, REST's 1006 per record), the only reason a write fails.
    unknown_field_code: str = "20105"
    #: The known product defects invariant 2 is narrowed for (:data:`EXCUSES`); the test
    #: turns each off with LEADSYNC_MODEL_STRICT.
    excused: frozenset[str] = EXCUSES

    def new_write(
        self,
        key: str,
        value: str,
        *,
        dedup: bool,
        poisoned: bool,
        fields: Iterable[str] = (SEQ, VAL),
        marketo_id: int | None = None,
        lane: Lane = "live",
    ) -> Write:
        """The next write: it sets ``fields`` (a non-empty subset of :data:`FIELDS`), each
        to a value naming the write (``value`` is what it says besides)."""
        seq = self.next_seq
        attributes = {name: field_value(seq, name, value) for name in fields}
        assert attributes, "a write sets at least one field"
        if poisoned:
            attributes[BAD] = field_value(seq, BAD, "x")
        write = Write("", key, seq, attributes, dedup, marketo_id, lane)
        self.next_seq += 1
        return write

    def learn_lead_ids(self, lead_ids: Mapping[str, int | None]) -> None:
        """Keep the Marketo id a successful dedup write's outcome named, as an app keeps
        ``lead_id`` to send with the lead's later writes."""
        for rid, lead_id in lead_ids.items():
            write = self.writes.get(rid)
            success = self.status.get(rid) in SUCCESS
            if lead_id is not None and write is not None and write.dedup and success:
                self.lead_ids.setdefault(write.key, lead_id)

    def accept(self, write: Write) -> None:
        self.writes[write.request_id] = write
        self.status[write.request_id] = None

    def observe(
        self,
        outcomes: Mapping[str, OutcomeStatus | None],
        error_codes: Mapping[str, str | None] | None = None,
    ) -> list[str]:
        """Invariant 3: a terminal outcome never changes; a parked one only reopens by
        replay; an outcome once seen never disappears; only a write carrying an unknown
        field fails (never one merged with it), with the protocol's code (from ``error_codes``
        when given), and such a write never succeeds; or a replayed write every field of
        which a newer write Marketo applied set fails SUPERSEDED (replay merges per field:
        it would revert newer values)."""
        problems = []
        for rid, now in outcomes.items():
            before = self.status.get(rid)
            if before is not None and now is None:
                problems.append(f"{rid}: outcome {before} disappeared")
            elif before in TERMINAL and now != before:
                problems.append(f"{rid}: terminal outcome {before} was rewritten to {now}")
            elif (
                before is OutcomeStatus.DEAD_LETTERED
                and now is not OutcomeStatus.DEAD_LETTERED
                and rid not in self.reopened
            ):
                problems.append(f"{rid}: parked outcome became {now} without a replay")
            code = error_codes.get(rid) if error_codes is not None else None
            if now is OutcomeStatus.FAILED and code == SUPERSEDED_CODE:
                if not self._superseded(rid, outcomes):
                    problems.append(
                        f"{rid}: FAILED {code} but no newer applied write set its fields"
                    )
            elif now is OutcomeStatus.FAILED:
                # Issue 18: a write fails by itself, never for a bad write of its lead
                # merged with it (the drain sends the good writes again without it).
                poisoned = self.writes[rid].poisoned
                if not poisoned and not (error_codes is None and self._superseded(rid, outcomes)):
                    problems.append(f"{rid}: FAILED but it carries no unknown field")
                if error_codes is not None and code != self.unknown_field_code:
                    problems.append(
                        f"{rid}: FAILED with code {code}, not {self.unknown_field_code}"
                    )
            if now in SUCCESS and self.writes[rid].poisoned:
                problems.append(f"{rid}: {now} although it carries an unknown field")
            if now is not OutcomeStatus.DEAD_LETTERED and now is not None:
                self.reopened.discard(rid)
            if now is not None:
                self.status[rid] = now
                if error_codes is not None:
                    self.codes[rid] = code
        return problems

    def reopen(self, request_ids: Iterable[str], *, calls_so_far: int) -> None:
        """A replay reopened these parked requests after ``calls_so_far`` calls."""
        for rid in request_ids:
            self.reopened.add(rid)
            self.replayed_at[rid] = calls_so_far

    def parked_after_unknown_outcome(
        self,
        calls: Sequence[Call],
        outcomes: Mapping[str, OutcomeStatus | None],
        error_codes: Mapping[str, str | None],
    ) -> list[str]:
        """Invariant 3, for a call whose outcome leadsync cannot know (``UNKNOWN_OUTCOME``):
        its dedup=false records end DEAD_LETTERED with OUTCOME_UNKNOWN (a resend would be a
        second lead), and stay so until a replay reopens them. (Its dedup=true records stay
        pending: a later cycle sends them again, or a newer write supersedes them.)"""
        rid_of = {w.seq: rid for rid, w in self.writes.items()}
        problems = []
        for index, call in enumerate(calls):
            if call.dedup or call.behaviour not in UNKNOWN_OUTCOME:
                continue
            for seq in call.seqs:
                rid = rid_of.get(seq)
                if rid is None or self.replayed_at.get(rid, -1) > index:
                    continue
                status, code = outcomes.get(rid), error_codes.get(rid)
                if status is not OutcomeStatus.DEAD_LETTERED or code != OUTCOME_UNKNOWN_CODE:
                    problems.append(
                        f"{rid} (dedup=false, Seq {seq}) was in a {call.behaviour} call: "
                        f"{status} ({code}), not DEAD_LETTERED ({OUTCOME_UNKNOWN_CODE})"
                    )
        return problems

    def lead_ids_agree(
        self, lead_ids: Mapping[str, int | None], marketo: ScriptedMarketo
    ) -> list[str]:
        """Invariant 3, per record: a dedup write that succeeded names its own lead's
        Marketo id (an answer matched to the wrong record shows here)."""
        problems = []
        for rid, status in self.status.items():
            write = self.writes[rid]
            if status in SUCCESS and write.dedup:
                own = marketo.lead_id(write.key)
                if lead_ids.get(rid) != own:
                    problems.append(f"{rid}: {status} with lead id {lead_ids.get(rid)}, not {own}")
        return problems

    def _superseded(self, rid: str, outcomes: Mapping[str, OutcomeStatus | None]) -> bool:
        """Newer accepted dedup writes of the same lead set every field of this one. The
        reference sees only outcomes, and a newer write Marketo applied (or may have: a
        call whose answer was lost) can end with any of them, or still be pending to go
        out after this one; invariant 2 checks what Marketo ends with."""
        write = self.writes[rid]
        if not write.dedup:
            return False
        newer: set[str] = set()
        for other in self.writes.values():
            status = outcomes.get(other.request_id) or self.status.get(other.request_id)
            later = other.dedup and other.key == write.key and other.seq > write.seq
            if later and status is not None:
                newer.update(other.attributes)
        return set(write.attributes) <= newer

    def counts(self, write: Write) -> bool:
        """Whether Marketo must end with ``write``'s fields merged in (invariant 2): every
        accepted dedup=true write does, except one that ended FAILED for its own bad data
        (it carries an unknown field) or as SUPERSEDED (every field it set was set by a
        newer write). A dedup=false write makes a lead of its own."""
        if not write.dedup:
            return False
        status = self.status.get(write.request_id)
        if status in SUCCESS:
            return True
        if status is not OutcomeStatus.FAILED:
            return False  # still parked or pending: unsettled() reports it
        return not write.poisoned and self.codes.get(write.request_id) != SUPERSEDED_CODE

    def _dropped_for_a_failed_write(
        self, want: Write, name: str, value: str | None, calls: Sequence[Call]
    ) -> bool:
        """Excuse :data:`FAILED_MAYBE_WRITTEN`: ``want``'s value of ``name`` was dropped (an
        older value, or none, shows) because ``want`` went out as a bulk or replayed write
        without the fields a newer write of its lead set that Marketo may have applied
        (it rode in a call whose outcome was unknown, or was parked), though that newer
        write then ended FAILED for an unknown field, so Marketo never took it."""
        if FAILED_MAYBE_WRITTEN not in self.excused:
            return False
        if value is not None and origin(value) >= want.seq:
            return False
        if want.lane != "bulk" and want.request_id not in self.replayed_at:
            return False  # only a bulk or replayed write loses fields set since
        return any(
            newer.key == want.key
            and newer.dedup
            and newer.seq > want.seq
            and name in newer.attributes
            and self.status.get(newer.request_id) is OutcomeStatus.FAILED
            and self.codes.get(newer.request_id) == self.unknown_field_code
            and (newer.request_id in self.replayed_at or _rode_unknown(newer, calls))
            for newer in self.writes.values()
        )

    def expected_fields(self, key: str) -> dict[str, Write]:
        """Field -> the write whose value Marketo must hold: the per-field merge, in write
        order, of every write of the lead that :meth:`counts`."""
        merged: dict[str, Write] = {}
        for write in sorted(self.writes.values(), key=lambda w: w.seq):
            if write.key == key and self.counts(write):
                merged.update(dict.fromkeys(write.attributes, write))
        return merged

    def expected_vs_marketo(self, marketo: ScriptedMarketo) -> list[str]:
        """Invariant 2 (after settling): per lead and field, Marketo holds the value of the
        newest write that :meth:`counts` and set the field. A newer write's value may show
        instead only if that write does not count yet Marketo applied it (its call's answer
        was lost), so leadsync could not know."""
        problems = []
        by_seq = {w.seq: w for w in self.writes.values()}
        keys = {w.key for w in self.writes.values() if w.dedup}
        for key in sorted(keys):
            expected = self.expected_fields(key)
            actual = marketo.leads.get(key, {})
            for name in sorted(set(expected) | set(actual)):
                want = expected.get(name)
                value = actual.get(name)
                if want is not None and value == want.attributes[name]:
                    continue
                shown = by_seq.get(origin(value)) if value is not None else None
                unconfirmed = (
                    shown is not None
                    and shown.key == key
                    and shown.attributes.get(name) == value
                    and not self.counts(shown)
                    and (want is None or shown.seq > want.seq)
                )
                if unconfirmed or (
                    want is not None
                    and self._dropped_for_a_failed_write(want, name, value, marketo.calls)
                ):
                    continue
                writes = sorted(
                    (w for w in self.writes.values() if w.dedup and w.key == key),
                    key=lambda w: w.seq,
                )
                history = [
                    (w.seq, sorted(w.attributes), self._shown_status(w.request_id)) for w in writes
                ]
                problems.append(
                    f"{key}: {name} is {value!r} in Marketo, expected "
                    f"{want.attributes[name] if want else None!r} (writes: {history})"
                )
        return problems

    def _shown_status(self, rid: str) -> str:
        status, code = self.status.get(rid), self.codes.get(rid)
        name = status.value if status is not None else "None"
        return f"{name} {code}" if code else name

    def unsettled(self, superseded: Iterable[str]) -> list[str]:
        """After settling every request is terminal, or parked because a replay would
        overwrite a newer committed write."""
        skipped = set(superseded)
        return [
            f"{rid}: {status} after settling"
            for rid, status in self.status.items()
            if status not in TERMINAL
            and not (status is OutcomeStatus.DEAD_LETTERED and rid in skipped)
        ]


# --- the adapter: every call into leadsync internals is below this line -----------------------

#: A drain over every shard at once: one call filled from all of them, all leased.
EVERY_SHARD: Final = -1


#: Invariant 5: the kinds of key that may live without a TTL. Anything else must expire.
ALLOWED_WITHOUT_TTL: Final = frozenset(
    {
        "shard stream",  # pending work; entries leave on commit
        "attempts hash",  # bounded: its fields must be pending entry ids
        "config hash",  # one small hash
        "failover guard",  # one small hash: the master's run_id must outlive anything else
        "limiter hold",  # cleared by a probe or an operator
        "dead-letter stream",  # bounded: every record is a parked request
        "id sequence",  # one short string per shard
    }
)


@dataclass
class Post:
    """One request leadsync sent: its number, the task that sent it, what came back."""

    number: int
    task: asyncio.Task[Any] | None
    reply: bytes | None = None
    error: str | None = None


class RecordingTransport:
    """Wraps the transport the API uses: numbers every request (:data:`POST_HEADER`) and
    notes the task that sent it and the reply body it got, or the error it raised."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.posts: list[Post] = []

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        return await self._record(lambda numbered: self.inner.post(url, body, numbered), headers)

    async def get(self, url: str, headers: Mapping[str, str]) -> HttpReply:
        get: Callable[[str, Mapping[str, str]], Awaitable[HttpReply]] = self.inner.get  # type: ignore[attr-defined]
        return await self._record(lambda numbered: get(url, numbered), headers)

    async def _record(
        self,
        send: Callable[[Mapping[str, str]], Awaitable[HttpReply]],
        headers: Mapping[str, str],
    ) -> HttpReply:
        record = Post(len(self.posts), asyncio.current_task())
        self.posts.append(record)
        try:
            reply = await send({**headers, POST_HEADER: str(record.number)})
        except BaseException as exc:
            record.error = exc.__class__.__name__
            raise
        record.reply = reply.body
        return reply

    def last_post_of(self, task: asyncio.Task[Any] | None) -> int | None:
        return next((p.number for p in reversed(self.posts) if p.task is task), None)

    async def close(self) -> None:
        await self.inner.close()


@dataclass(frozen=True, slots=True)
class OutcomeDetails:
    """Each request's outcome status, and the error code and lead id of each outcome."""

    statuses: dict[str, OutcomeStatus | None]
    error_codes: dict[str, str | None]
    lead_ids: dict[str, int | None]


@dataclass
class Worker:
    """One Drainer and its pause switch."""

    name: str
    drainer: Drainer
    armed: PausePoint | None = None
    paused_at: PausePoint | None = None
    shard: int | None = None
    task: asyncio.Task[DrainReport] | None = None
    gate: asyncio.Future[None] | None = None
    paused: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def idle(self) -> bool:
        return self.task is None


@dataclass(frozen=True, slots=True)
class Replayed:
    replayed: list[str]
    superseded: list[str]


class System:
    """The system under test behind one small surface (see the module docstring)."""

    def __init__(
        self,
        redis_url: str,
        marketo: ScriptedMarketo,
        *,
        workers: int = 3,
        shards: int = 2,
        batch_size: int = 3,
        max_attempts: int = 2,
        transient_retries: int = 0,
        max_concurrent_calls: int = 4,
        prefix: str = "model",
        url: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        """``url`` and ``transport``: where the scripted Marketo listens and what reaches it
        (a real socket, see :class:`SplitReplies`); by default a MockTransport calls it."""
        self.marketo = marketo
        self.shards = shards
        base_url = url or REST_URL
        wire_settings: dict[str, object] = (
            {
                "marketo_api": "rest",
                "marketo_rest_url": base_url,
                "marketo_client_id": CLIENT_ID,
                "marketo_client_secret": CLIENT_SECRET,
            }
            if marketo.protocol == "rest"
            else {
                "marketo_api": "soap",
                "marketo_endpoint": f"{base_url}/soap/mktows/2_2",
                "marketo_user_id": "u",
                "marketo_encryption_key": "k",
            }
        )
        self.settings = Settings.from_env(
            **wire_settings,
            max_response_bytes=1 << 20,
            key_prefix=prefix,
            shards=shards,
            batch_size=batch_size,
            flush_interval_s=0.0,
            max_attempts=max_attempts,
            transient_retries=transient_retries,
            backoff_initial_s=0.0,
            backoff_max_s=0.001,
            rate_limit_calls=1_000_000,
            rate_burst_calls=1_000_000,
            # Few: a call whose outcome is unknown keeps its slot, and refusals follow.
            max_concurrent_calls=max_concurrent_calls,
            daily_quota=1_000_000,
            bulk_daily_calls=1_000_000,
            throttle_cooldown_s=3600.0,  # cleared by the test, never by the clock
            hold_probe_interval_s=3600.0,  # no probe passes until the test clears the hold
            lease_ttl_s=3600.0,  # expired by the test, never by the clock
            result_ttl_s=3600,
        )
        self.keys = Keys(prefix)
        self.redis: redis.asyncio.Redis = redis.asyncio.Redis.from_url(redis_url)
        self.ledger = Ledger.for_settings(self.redis, self.settings)
        self.limiter = RedisLimiter(self.redis, self.settings)
        self.transport = RecordingTransport(transport or MockTransport(marketo))
        self.client = api_for(self.settings, self.transport, self.redis)
        #: Posts after which their worker paused (and may have lost its lease before its
        #: commit): their writes may legitimately be sent again.
        self.unconfirmed: set[int] = set()
        self._isolation_calls_before = _isolation_calls()
        self.producer = AsyncLeadProducer(self.redis, key_prefix=prefix, shards=shards)
        self._generation = 0
        self.workers = [self._new_worker(i) for i in range(workers)]
        self.abandoned: list[asyncio.Task[DrainReport]] = []

    async def start(self) -> None:
        await self.redis.flushdb()
        await self.ledger.agree_shards(self.shards)
        # As a worker does at start: producers then key a lead by what Marketo matches it
        # by (REST: the lookup field's value), not by the SOAP priority their own
        # settings imply, so a write that also names the Marketo id is the same key.
        await self.ledger.store_key_rule(self.settings.key_rule)
        await self.ledger.ensure_groups(2 * self.shards)  # live and bulk streams

    async def close(self) -> None:
        tasks = [t for t in self.abandoned if not t.done()]
        tasks += [w.task for w in self.workers if w.task is not None and not w.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.transport.close()
        await self.redis.aclose()

    # --- workers -------------------------------------------------------------------------

    def _new_worker(self, index: int) -> Worker:
        self._generation += 1
        name = f"w{index}.{self._generation}"
        drainer = Drainer(
            ledger=self.ledger,
            api=self.client,
            limiter=self.limiter,
            settings=self.settings,
            consumer=name,
        )
        worker = Worker(name, drainer)

        async def checkpoint(point: str) -> None:
            armed = worker.armed
            if armed is None or armed != point:
                return
            worker.armed = None
            if point == "after_send":
                post = self.transport.last_post_of(asyncio.current_task())
                if post is not None:
                    self.unconfirmed.add(post)
            worker.paused_at = armed
            worker.gate = asyncio.get_running_loop().create_future()
            worker.paused.set()
            await worker.gate

        drainer.checkpoint = checkpoint
        return worker

    async def _until_paused_or_done(self, workers: Sequence[Worker]) -> None:
        waits: list[asyncio.Future[Any]] = []
        for worker in workers:
            assert worker.task is not None
            pause = asyncio.ensure_future(worker.paused.wait())
            waits.append(pause)
            done, _ = await asyncio.wait({worker.task, pause}, return_when="FIRST_COMPLETED")
            if worker.task in done:
                worker.task.result()  # an exception out of drain() fails the test
                worker.task = None
                worker.armed = None
                worker.shard = None
        for waiting in waits:
            waiting.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    def _start(self, worker: Worker, shard: int, pause_at: PausePoint | None) -> None:
        """``shard`` = EVERY_SHARD: one call filled from every shard (``drain_together``)."""
        worker.armed = pause_at
        worker.paused_at = None
        worker.paused.clear()
        worker.shard = shard
        drainer = worker.drainer
        work = (
            drainer.drain_together(range(self.shards))
            if shard == EVERY_SHARD
            else drainer.drain(shard)
        )
        worker.task = asyncio.ensure_future(work)

    async def drain(
        self, index: int, shard: int, pause_at: PausePoint | None = None, *, waited: bool = True
    ) -> bool:
        """Run one ``Drainer.drain(shard)`` on worker ``index`` until it returns, or until
        it reaches ``pause_at`` (then True: the worker stays paused there). ``waited``:
        the shard's rest is over first; else the drain comes at once (a drain message
        already queued, or redelivered), and a resting shard must turn it away."""
        worker = self.workers[index]
        assert worker.idle, f"worker {index} is busy"
        if waited:
            await self._time_passes(shard)
        self._start(worker, shard, pause_at)
        await self._until_paused_or_done([worker])
        return not worker.idle

    async def resume(self, index: int, *, along_with: int | None = None) -> None:
        """Expire the paused worker's lease (its TTL passed), then let it go on. With
        ``along_with``, that idle worker drains the same shard at the same time."""
        worker = self.workers[index]
        assert worker.gate is not None
        assert worker.shard is not None
        shard = worker.shard
        await self.expire_lease(shard)
        running = [worker]
        if along_with is not None:
            other = self.workers[along_with]
            assert other.idle
            await self._time_passes(shard)
            self._start(other, shard, None)
            running.append(other)
        worker.paused.clear()
        worker.gate.set_result(None)
        worker.gate = None
        worker.paused_at = None
        await self._until_paused_or_done(running)

    async def abandon(self, index: int) -> None:
        """The paused worker crashed: it never releases its lease and never runs again. The
        lease expires; a fresh worker takes its place."""
        worker = self.workers[index]
        assert worker.task is not None
        assert worker.shard is not None
        self.abandoned.append(worker.task)
        await self.expire_lease(worker.shard)
        self.workers[index] = self._new_worker(index)

    def paused(self) -> list[int]:
        return [i for i, w in enumerate(self.workers) if not w.idle]

    def idle(self) -> list[int]:
        return [i for i, w in enumerate(self.workers) if w.idle]

    def consumer(self, index: int) -> str:
        return self.workers[index].name

    # --- producer side ---------------------------------------------------------------------

    async def enqueue(
        self,
        email: str,
        attributes: Mapping[str, str],
        *,
        dedup: bool,
        lane: Lane = "live",
        marketo_id: int | None = None,
    ) -> str:
        return await self.producer.upsert(
            email=email, marketo_id=marketo_id, attributes=attributes, dedup=dedup, lane=lane
        )

    async def outcomes(self, request_ids: Sequence[str]) -> dict[str, OutcomeStatus | None]:
        return (await self.outcome_details(request_ids)).statuses

    async def outcome_details(self, request_ids: Sequence[str]) -> OutcomeDetails:
        found = await self.producer.outcomes(request_ids)
        pairs = list(zip(request_ids, found, strict=True))
        return OutcomeDetails(
            statuses={rid: (o.status if o is not None else None) for rid, o in pairs},
            error_codes={rid: o.error_code for rid, o in pairs if o is not None},
            lead_ids={rid: o.lead_id for rid, o in pairs if o is not None},
        )

    def resent_after_ok(self) -> list[str]:
        """Invariant 7: writes Marketo applied and answered in full ("ok") that were sent
        again, though the worker that sent them went on to its commit (it did not pause
        after the send, so no lease lapse can explain a resend)."""
        return [what for post, what in self.marketo.resent if post not in self.unconfirmed]

    def replies_cut_on_the_way(self, written: Mapping[int, bytes]) -> list[str]:
        """Invariant 7, on a real socket: every reply written whole (``written``, by post)
        reached the worker whole."""
        problems = []
        for number, body in sorted(written.items()):
            post = self.transport.posts[number]
            if post.reply != body:
                got = f"{len(post.reply)} bytes" if post.reply is not None else f"{post.error}"
                problems.append(f"post {number}: {len(body)} bytes written whole, got {got}")
        return problems

    def isolation_calls(self) -> int:
        """Calls the drains spent isolating records since this System was built (the
        process-wide ``leadsync_isolation_calls`` counter: one System runs at a time)."""
        return _isolation_calls() - self._isolation_calls_before

    # --- time, limits, leases ---------------------------------------------------------------

    def _shards(self, shard: int) -> list[int]:
        """The shards (leases, rests) a drain of ``shard`` uses: a bulk stream's are its
        shard's."""
        return list(range(self.shards)) if shard == EVERY_SHARD else [shard % self.shards]

    async def _time_passes(self, shard: int) -> None:
        """The shard's rest is over (Drainer._back_off's key). When it is the rest after a
        call whose outcome is unknown (LEADSYNC_UNKNOWN_OUTCOME_REST_S), Marketo finished
        every call on the shard's keys meanwhile: the late calls are applied first. A
        short rest (after transient faults), or none, lets little time pass: a late call
        stays in flight, and a call that carries its keys then is an overlap (invariant 4)."""
        shards = set(self._shards(shard))
        long_rest = {s for s in shards if await self._rest_left(s) >= self._unknown_rest_s / 2}
        self.marketo.apply_late(
            lambda call: any(shard_for(r.key, self.shards) in long_rest for r in call.records)
        )
        await self.redis.delete(*(self.keys.rest(s) for s in shards))

    @property
    def _unknown_rest_s(self) -> float:
        return self.settings.unknown_outcome_rest_s

    async def _rest_left(self, shard: int) -> float:
        """Seconds the shard still rests, on Redis's clock (0 when it does not)."""
        until: Any = await self.redis.get(self.keys.rest(shard))
        if until is None:
            return 0.0
        seconds, micros = await self.redis.time()
        return float(_text(until)) - (seconds + micros / 1_000_000)

    async def unknown_outcome_rest_passes(self) -> None:
        """LEADSYNC_UNKNOWN_OUTCOME_REST_S passed for every call: Marketo applied every late
        call, and the slots kept for calls whose outcome was unknown expired. (Between the
        steps no call is in flight: every slot left is such a kept one.)"""
        self.marketo.apply_late()
        await self.redis.delete(self.limiter.keys.slots)

    async def expire_lease(self, shard: int) -> None:
        await self.redis.delete(*(self.keys.lease(s) for s in self._shards(shard)))

    async def refuse_calls(self, on: bool) -> None:
        """Another pod was throttled: the limiter refuses every call until cleared."""
        if on:
            await self.limiter.cooldown(3600.0, "model")
        else:
            await self.redis.delete(self.limiter.keys.cooldown)

    async def clear_hold(self) -> None:
        await self.limiter.clear_hold()

    async def clear_quota(self) -> None:
        """The quota day rolled over: both lanes' day counters (a 20015 spends both)."""
        for pattern in (self.limiter.keys.quota("*"), self.limiter.keys.bulk_quota("*")):
            async for key in self.redis.scan_iter(match=pattern):
                await self.redis.delete(key)

    async def clear_limits(self) -> None:
        await self.refuse_calls(False)
        await self.clear_hold()
        await self.clear_quota()
        await self.unknown_outcome_rest_passes()

    # --- dead letters -----------------------------------------------------------------------

    async def dead_letters(self) -> list[str]:
        """The request ids of the parked records, one per record."""
        letters = await list_dead_letters(self.redis, self.keys, self.shards)
        return [d.request_id for d in letters]

    async def replay_all(self) -> Replayed:
        letters = await list_dead_letters(self.redis, self.keys, self.shards)
        report = await replay(
            self.redis, self.keys, letters, result_ttl_s=self.settings.result_ttl_s
        )
        skipped = set(report.superseded)
        replayed = [d.request_id for d in letters if d.request_id not in skipped]
        return Replayed(replayed, list(report.superseded))

    # --- ledger inspection --------------------------------------------------------------------

    @property
    def streams(self) -> range:
        """Every stream: the live ones, then the bulk ones (``shards + s``)."""
        return range(2 * self.shards)

    async def backlog(self) -> dict[int, int]:
        """Entries not yet committed, per stream."""
        return {s: int(await self.redis.xlen(self.keys.stream(s))) for s in self.streams}

    async def pending_owners(self, shard: int) -> dict[str, str]:
        """Entry id -> the consumer that holds it in the group's pending list."""
        rows: Any = await self.redis.xpending_range(
            self.keys.stream(shard), Keys.GROUP, min="-", max="+", count=10_000
        )
        return {_text(r["message_id"]): _text(r["consumer"]) for r in rows}

    def _attempt_hashes(self, shard: int) -> list[str]:
        """The stream's attempt counters: the previous version's one hash, then its
        ATTEMPTS_PARTS sub-hashes (``Keys.attempts_slot``)."""
        legacy = self.keys.attempts(shard)
        return [legacy, *(f"{legacy}:{part}" for part in range(ATTEMPTS_PARTS))]

    async def attempts(self, shard: int) -> dict[str, int]:
        """Entry id -> the calls counted for it, wherever the counter is kept."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self._attempt_hashes(shard):
            pipe.hgetall(key)
        counted: Counter[str] = Counter()
        for raw in await pipe.execute():
            for name, value in raw.items():
                counted[_counter_entry(_text(name))] += int(value)
        return dict(counted)

    async def lease_token(self, shard: int) -> str | None:
        value: Any = await self.redis.get(self.keys.lease(shard))
        return _text(value) if value is not None else None

    def entry_of(self, rid: str) -> tuple[int, str]:
        """(shard, entry id) of a request id."""
        return parse_request_id(rid)

    def _kind(self, key: str) -> str:
        k = self.keys
        for s in self.streams:
            exact = {
                k.stream(s): "shard stream",
                k.attempts(s): "attempts hash",
                k.dead_letters(s): "dead-letter stream",
                k.lease(s): "lease",
                k.rest(s): "shard rest",
                k.rest_streak(s): "shard rest streak",
                k.sequence(s): "id sequence",
            }
            if key in exact:
                return exact[key]
            if key.startswith(k.outcome(s, "")):
                return "outcome"
            if key.startswith(k.written_fields(s, "")):
                return "written fields"
            if key.startswith(f"{k.attempts(s)}:"):
                return "attempts hash"
        if key == k.config():
            return "config hash"
        if key == k.failover():
            return "failover guard"
        if key == k.admission():
            return "admission cache"
        if key == k.groups_recreated():
            return "groups recreated"
        if key == self.limiter.keys.hold:
            return "limiter hold"
        if key.startswith(k.control("")):
            return "control"
        if key.startswith(k.stats("")):
            return "stats"
        return "other"

    async def key_audit(self, parked: Mapping[str, OutcomeStatus | None]) -> list[str]:
        """Invariant 5: every key without a TTL is of an allowed kind, and the allowed ones
        are bounded: attempts fields are pending entry ids, dead-letter records are parked
        requests (``parked``: the current outcome of every request id), one each; a
        written-fields hash lives without a TTL only while its lead has bulk writes
        waiting, and its ``~bulk`` count is their number (a lead with bulk writes waiting
        has one). Read in a few pipelined round trips: it runs after every step."""
        problems = []
        keys = [_text(key) async for key in self.redis.scan_iter(match="*", count=1000)]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        for s in self.streams:
            pipe.xpending_range(self.keys.stream(s), Keys.GROUP, min="-", max="+", count=10_000)
            for key in self._attempt_hashes(s):
                pipe.hkeys(key)
        for s in range(self.shards):
            pipe.xrange(self.keys.stream(self.shards + s))  # the bulk writes waiting
        replies: list[Any] = await pipe.execute()
        ttls, replies = replies[: len(keys)], replies[len(keys) :]
        bulk_marks: list[str] = []
        for key, ttl in zip(keys, ttls, strict=True):
            kind = self._kind(key)
            if int(ttl) == -1 and kind == "written fields":
                bulk_marks.append(key)
            elif int(ttl) == -1 and kind not in ALLOWED_WITHOUT_TTL:
                problems.append(f"{key} ({kind}) has no TTL")
        per_stream = 1 + len(self._attempt_hashes(0))
        for s in self.streams:
            rows, *hashes = replies[per_stream * s : per_stream * (s + 1)]
            pending = {_text(row["message_id"]) for row in rows}
            counted = {_counter_entry(_text(f)) for names in hashes for f in names}
            extra = sorted(counted - pending)
            if extra:
                problems.append(f"shard {s}: attempts kept for entries not pending: {extra}")
        waiting: Counter[str] = Counter()
        for s, entries in enumerate(replies[per_stream * len(self.streams) :]):
            for _, entry in entries:
                waiting[self.keys.written_fields(s, _text(entry[b"k"]))] += 1
        marked = sorted(set(bulk_marks) | set(waiting))
        pipe = self.redis.pipeline(transaction=False)
        for key in marked:
            pipe.hget(key, "~bulk")
        for key, count in zip(marked, await pipe.execute(), strict=True):
            if int(_text(count or b"0")) != waiting.get(key, 0):
                problems.append(
                    f"{key}: ~bulk {int(_text(count or b'0'))}, bulk writes waiting "
                    f"{waiting.get(key, 0)}"
                )
        letters = Counter(await self.dead_letters())
        for rid, n in sorted(letters.items()):
            if n > 1:
                problems.append(f"{rid}: {n} dead-letter records")
            if rid in parked and parked[rid] is not OutcomeStatus.DEAD_LETTERED:
                problems.append(f"{rid}: dead-letter record but outcome {parked[rid]}")
        return problems


def _counter_entry(name: str) -> str:
    """The entry id an attempt counter's field names: the id itself, or (a sub-hash's
    field, ``Keys.attempts_slot``) the id packed as ``ms << 20 | seq``."""
    if "-" in name:
        return name
    packed = int(name)
    return f"{packed >> 20}-{packed & ((1 << 20) - 1)}"


def _isolation_calls() -> int:
    return int(REGISTRY.get_sample_value("leadsync_isolation_calls_total") or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def run_until(
    condition: Callable[[], Awaitable[bool]], step: Callable[[], Awaitable[object]], rounds: int
) -> bool:
    """Run ``step`` until ``condition`` holds, at most ``rounds`` times."""
    for _ in range(rounds):
        if await condition():
            return True
        await step()
    return await condition()
