"""The contract between web apps and workers, in one import: the lead model and its
validation (:mod:`producers.lead`), the wire form of a ledger entry
(:mod:`producers.wire`), the Redis key names (:mod:`producers.keys`) and the outcome
model (:mod:`producers.outcome`).

Pure Python with no I/O, so producers (which must not import Celery, lxml or aiohttp)
and the worker's SOAP codec share exactly the same rules.
"""

from __future__ import annotations

from producers.errors import InvalidLead
from producers.keys import Keys
from producers.lead import (
    FOREIGN_SYS_TYPES,
    MAX_ATTRIBUTES,
    MAX_LEAD_ID,
    MAX_VALUE_CHARS,
    ForeignSysType,
    LeadUpsert,
    check_known_fields,
    check_xml_text,
    key_digest,
    lead_key,
    shard_for,
    validate_lead,
)
from producers.outcome import Outcome, OutcomeStatus
from producers.wire import (
    ENQUEUE_LUA,
    decode_lead,
    encode_lead,
    entry_order,
    entry_time_s,
    parse_request_id,
    request_id,
    text,
)

__all__ = [
    "ENQUEUE_LUA",
    "FOREIGN_SYS_TYPES",
    "MAX_ATTRIBUTES",
    "MAX_LEAD_ID",
    "MAX_VALUE_CHARS",
    "ForeignSysType",
    "InvalidLead",
    "Keys",
    "LeadUpsert",
    "Outcome",
    "OutcomeStatus",
    "check_known_fields",
    "check_xml_text",
    "decode_lead",
    "encode_lead",
    "entry_order",
    "entry_time_s",
    "key_digest",
    "lead_key",
    "parse_request_id",
    "request_id",
    "shard_for",
    "text",
    "validate_lead",
]
