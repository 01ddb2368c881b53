"""The contract between web apps and workers: the lead model, its validation,
the lead key, the shard, the wire form of a ledger entry and the Redis key names.

Pure Python with no I/O, so producers (which must not import Celery, lxml or
aiohttp) and the worker's SOAP codec share exactly the same rules.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final, Literal

from producers.errors import InvalidLead

ForeignSysType = Literal["CUSTOM", "SFDC", "NETSUITE"]
FOREIGN_SYS_TYPES: Final = ("CUSTOM", "SFDC", "NETSUITE")
MAX_LEAD_ID: Final = 2**31 - 1  # LeadRecord.Id is xs:int
MAX_VALUE_CHARS: Final = 64 * 1024
MAX_ATTRIBUTES: Final = 500

# Characters outside XML 1.0's Char production; lone surrogates included.
_ILLEGAL_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class LeadUpsert:
    """One validated lead upsert, as a web app asked for it."""

    email: str | None = None
    marketo_id: int | None = None
    foreign_sys_person_id: str | None = None
    foreign_sys_type: ForeignSysType | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    dedup: bool = True

    @property
    def key(self) -> str:
        """The lead key: Marketo Id > ForeignSysPersonId (+type) > email, as Marketo matches."""
        return lead_key(self)


def check_xml_text(field_name: str, value: str) -> None:
    """Raise InvalidLead when ``value`` cannot travel in an XML 1.0 document."""
    match = _ILLEGAL_XML_CHARS.search(value)
    if match:
        raise InvalidLead(
            field_name, f"character U+{ord(match.group()):04X} is not allowed in XML 1.0"
        )
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidLead(field_name, f"longer than {MAX_VALUE_CHARS} characters")


def _optional_text(field_name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidLead(field_name, f"must be a string, not {type(value).__name__}")
    value = value.strip()
    if not value:
        return None
    check_xml_text(field_name, value)
    return value


def _attribute_value(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidLead(
            f"attributes.{name}", f"must be a string or number, not {type(value).__name__}"
        )
    check_xml_text(f"attributes.{name}", value)
    return value


def validate_lead(
    *,
    email: object = None,
    marketo_id: object = None,
    foreign_sys_person_id: object = None,
    foreign_sys_type: object = None,
    attributes: object = None,
    dedup: object = True,
) -> LeadUpsert:
    """Check one upsert and return it normalised; raise InvalidLead naming the field.

    >>> validate_lead(email=" Ann@Example.com ").key
    'email:ann@example.com'
    """
    clean_email = _optional_text("email", email)
    if clean_email is not None and (
        "@" not in clean_email or any(c.isspace() for c in clean_email)
    ):
        raise InvalidLead("email", "is not an email address")

    clean_id: int | None = None
    if marketo_id is not None:
        if isinstance(marketo_id, bool) or not isinstance(marketo_id, int | str):
            raise InvalidLead("marketo_id", "must be a positive integer")
        try:
            clean_id = int(marketo_id)
        except ValueError:
            raise InvalidLead("marketo_id", "must be a positive integer") from None
        if not 1 <= clean_id <= MAX_LEAD_ID:
            raise InvalidLead("marketo_id", f"must be between 1 and {MAX_LEAD_ID}")

    clean_fsp = _optional_text("foreign_sys_person_id", foreign_sys_person_id)
    clean_fst = _optional_text("foreign_sys_type", foreign_sys_type)
    if clean_fsp is not None and clean_fst is None:
        raise InvalidLead("foreign_sys_type", "is required with foreign_sys_person_id")
    if clean_fst is not None:
        if clean_fst.upper() not in FOREIGN_SYS_TYPES:
            raise InvalidLead("foreign_sys_type", f"must be one of {', '.join(FOREIGN_SYS_TYPES)}")
        if clean_fsp is None:
            raise InvalidLead("foreign_sys_person_id", "is required with foreign_sys_type")
        clean_fst = clean_fst.upper()

    if clean_email is None and clean_id is None and clean_fsp is None:
        raise InvalidLead(
            "lead", "needs at least one key: email, marketo_id or foreign_sys_person_id"
        )

    clean_attributes: dict[str, str] = {}
    if attributes is not None:
        if not isinstance(attributes, Mapping):
            raise InvalidLead("attributes", "must be a mapping of attribute name to value")
        if len(attributes) > MAX_ATTRIBUTES:
            raise InvalidLead("attributes", f"more than {MAX_ATTRIBUTES} attributes")
        for name, value in attributes.items():
            if not isinstance(name, str) or not name.strip():
                raise InvalidLead("attributes", "attribute names must be non-empty strings")
            check_xml_text("attributes", name)
            if value is None:
                raise InvalidLead(f"attributes.{name}", "must not be null")
            clean_attributes[name.strip()] = _attribute_value(name, value)

    if not isinstance(dedup, bool):
        raise InvalidLead("dedup", "must be true or false")

    return LeadUpsert(
        email=clean_email,
        marketo_id=clean_id,
        foreign_sys_person_id=clean_fsp,
        foreign_sys_type=clean_fst,  # type: ignore[arg-type]
        attributes=clean_attributes,
        dedup=dedup,
    )


def check_known_fields(lead: LeadUpsert, known: frozenset[str] | None) -> LeadUpsert:
    """Refuse an attribute Marketo would not know (``known``: case-folded names from
    LEADSYNC_KNOWN_FIELDS; None accepts any). One unknown name would otherwise fault the
    whole call (20105) in the worker, long after the app could have been told."""
    if known:
        for name in lead.attributes:
            if name.casefold() not in known:
                raise InvalidLead(
                    f"attributes.{name}",
                    "is not a field of this Marketo instance (LEADSYNC_KNOWN_FIELDS)",
                )
    return lead


def lead_key(lead: LeadUpsert) -> str:
    """Marketo Id > ForeignSysPersonId (+type) > email (trimmed, lower-cased)."""
    if lead.marketo_id is not None:
        return f"id:{lead.marketo_id}"
    if lead.foreign_sys_person_id is not None:
        return f"fsp:{lead.foreign_sys_type}:{lead.foreign_sys_person_id}"
    assert lead.email is not None  # validate_lead guarantees a key
    return f"email:{lead.email.lower()}"


def key_digest(key: str) -> str:
    """A short stable hash of a lead key: what logs, metrics and Redis key names carry."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=10).hexdigest()


def shard_for(key: str, shards: int) -> int:
    """The shard of a lead key: a stable hash, identical in every process and release."""
    # blake2b, not crc32: crc32 is linear and crowds same-length keys such as
    # user10@.. user99@.. onto a few shards when the count is a power of two.
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


# --- wire form of a ledger entry ------------------------------------------------------

#: How long the newest-enqueued id of a lead key is kept after its last write. A replay
#: reads it to tell whether a newer upsert exists; dead-lettering extends it for as long
#: as the dead letter is kept, so this only has to outlive a lead's quiet spell.
NEWEST_ID_TTL_S: Final = 8 * 24 * 3600

#: One atomic step per upsert: append the entry and record it as its lead's newest
#: (ARGV[3] is the id's TTL; 0 for a dedup=false upsert, which creates a new lead).
ENQUEUE_LUA: Final = (
    "local i=redis.call('XADD',KEYS[1],'*','k',ARGV[1],'p',ARGV[2]) "
    "if ARGV[3]~='0' then redis.call('SET',KEYS[2],i,'EX',ARGV[3]) end return i"
)

# One encoder for every entry: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_lead(lead: LeadUpsert) -> str:
    """The compact JSON payload stored in a ledger entry."""
    payload: dict[str, Any] = {}
    if lead.email is not None:
        payload["e"] = lead.email
    if lead.marketo_id is not None:
        payload["i"] = lead.marketo_id
    if lead.foreign_sys_person_id is not None:
        payload["f"] = lead.foreign_sys_person_id
        payload["t"] = lead.foreign_sys_type
    if lead.attributes:
        payload["a"] = dict(lead.attributes)
    if not lead.dedup:
        payload["d"] = 0
    return _ENCODER.encode(payload)


def decode_lead(payload: str | bytes) -> LeadUpsert:
    """Parse and re-validate a ledger payload (it may have been written by another version)."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidLead("payload", f"is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise InvalidLead("payload", "is not a JSON object")
    return validate_lead(
        email=data.get("e"),
        marketo_id=data.get("i"),
        foreign_sys_person_id=data.get("f"),
        foreign_sys_type=data.get("t"),
        attributes=data.get("a"),
        dedup=bool(data.get("d", 1)),
    )


# --- request ids ------------------------------------------------------------------------


def request_id(shard: int, entry_id: str) -> str:
    """A request id names the shard and the stream entry: ``"<shard>-<ms>-<seq>"``."""
    return f"{shard}-{entry_id}"


def parse_request_id(value: str) -> tuple[int, str]:
    """Split a request id into (shard, entry id); raise ValueError when malformed."""
    shard_text, _, entry_id = value.partition("-")
    ms, _, seq = entry_id.partition("-")
    if not (shard_text.isdigit() and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"not a leadsync request id: {value!r}")
    return int(shard_text), entry_id


# --- Redis key names ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keys:
    """Redis key names. A shard's keys share the hash tag ``{s}`` so that its atomic
    steps (commit = outcomes + XACK + XDEL) also work on Redis Cluster."""

    prefix: str = "leadsync"

    GROUP: ClassVar[str] = "workers"

    def stream(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}:outbox"

    def lease(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}:lease"

    def attempts(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}:attempts"

    def outcome(self, shard: int, entry_id: str) -> str:
        return f"{self.prefix}:{{{shard}}}:outcome:{entry_id}"

    def newest(self, shard: int, key_hash: str) -> str:
        """The id of the newest entry enqueued for a lead key (written with its XADD)."""
        return f"{self.prefix}:{{{shard}}}:newest:{key_hash}"

    def dead_letters(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard}}}:dlq"

    def rest(self, shard: int) -> str:
        """Until when the shard rests after transient faults (Unix seconds)."""
        return f"{self.prefix}:{{{shard}}}:rest"

    def rest_streak(self, shard: int) -> str:
        """Failed cycles in a row of the shard (the rest grows with it)."""
        return f"{self.prefix}:{{{shard}}}:rest-streak"

    def groups_recreated(self) -> str:
        """Shard -> when its consumer group was found missing and recreated."""
        return f"{self.prefix}:groups-recreated"

    def config(self) -> str:
        return f"{self.prefix}:config"

    def control(self, name: str) -> str:
        return f"{self.prefix}:control:{name}"

    def stats(self, name: str) -> str:
        return f"{self.prefix}:stats:{name}"


# --- outcomes -------------------------------------------------------------------------


class OutcomeStatus(StrEnum):
    """Where a request stands. CREATED, UPDATED and FAILED are terminal: written once,
    never changed. DEAD_LETTERED is parked: the request waits in the dead-letter stream,
    and only ``leadsync dlq replay`` reopens it (back to PENDING). This is the one
    definition; the ledger's Lua scripts follow it too."""

    PENDING = "PENDING"
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    FAILED = "FAILED"
    DEAD_LETTERED = "DEAD_LETTERED"

    @property
    def is_terminal(self) -> bool:
        """Written once and never changed again."""
        return self in _TERMINAL

    @property
    def is_parked(self) -> bool:
        """Waiting in the dead-letter stream: only a replay moves it."""
        return self is OutcomeStatus.DEAD_LETTERED

    @property
    def is_final(self) -> bool:
        """Nothing more happens without an operator: terminal or parked."""
        return self is not OutcomeStatus.PENDING


_TERMINAL: Final = frozenset({OutcomeStatus.CREATED, OutcomeStatus.UPDATED, OutcomeStatus.FAILED})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one request. Times are Unix seconds."""

    request_id: str
    status: OutcomeStatus
    lead_id: int | None = None
    error: str | None = None
    error_code: str | None = None
    attempts: int = 0
    enqueued_at: float | None = None
    finished_at: float | None = None

    def to_fields(self) -> dict[str, str]:
        """The Redis hash stored at Keys.outcome (empty values are left out; times to the
        millisecond). Workers leave ``enqueued_at`` out: readers take it from the request
        id, and an outcome is kept a week per upsert, so every byte counts."""
        fields = {"status": self.status.value, "attempts": str(self.attempts)}
        optional: dict[str, object] = {
            "lead_id": self.lead_id,
            "error": self.error,
            "error_code": self.error_code,
            "enqueued_at": self.enqueued_at,
            "finished_at": self.finished_at,
        }
        for name, value in optional.items():
            if value is not None:
                fields[name] = f"{value:.3f}" if isinstance(value, float) else str(value)
        return fields

    @classmethod
    def from_fields(cls, request_id: str, fields: Mapping[str | bytes, str | bytes]) -> Outcome:
        """Read back a hash written by :meth:`to_fields`."""
        text = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }

        def number(name: str) -> float | None:
            return float(text[name]) if name in text else None

        return cls(
            request_id=request_id,
            status=OutcomeStatus(text["status"]),
            lead_id=int(text["lead_id"]) if "lead_id" in text else None,
            error=text.get("error"),
            error_code=text.get("error_code"),
            attempts=int(text.get("attempts", "0")),
            enqueued_at=number("enqueued_at"),
            finished_at=number("finished_at"),
        )


def entry_order(entry_id: str) -> tuple[int, int]:
    """Stream ids sort as (milliseconds, sequence), not as strings. The one ordering of
    entries in Python; ``worker/ledger.lua`` has the same rule (``older``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def entry_time_s(entry_id: str) -> float:
    """The enqueue time of a stream entry, from the milliseconds in its id."""
    return int(entry_id.partition("-")[0]) / 1000.0
