"""The contract between web apps and workers, in one import: the lead model and its
validation (:mod:`producers.lead`, :mod:`producers.known_fields`), the wire form of a
ledger entry (:mod:`producers.wire`), the Redis key names (:mod:`producers.keys`), the
outcome model (:mod:`producers.outcome`), the shard and key-rule agreement of the
producer core (:mod:`producers._core`) and the Redis connection forms both sides
connect with (:mod:`producers.connect`).

This is the one module of ``producers`` the worker imports from, besides the package
itself (``LeadProducer``, ``AsyncLeadProducer`` and the errors): ``tests/unit/test_layout.py``
checks it. Nothing here does I/O at import or needs Celery, lxml or aiohttp, so producers
and the worker's SOAP codec share exactly the same rules.
"""

from __future__ import annotations

from producers._core import (
    BULK_CHUNK,
    KEY_RULE_FIELD,
    KEY_RULE_REFRESH_S,
    LEAD_FIELDS,
    RESHARD_PHASE,
    RESHARD_TO,
    SHARDS_FIELD,
    Placed,
    Route,
    adopt_shards,
    record_lead,
)
from producers.connect import (
    async_redis_client,
    check_redis_url,
    describe_redis_url,
    is_sentinel_url,
    parse_sentinel_url,
    redis_client,
)
from producers.errors import InvalidLead
from producers.keys import Keys, LimiterKeys
from producers.known_fields import KnownFields, decode_known_fields, encode_known_fields
from producers.lanes import LANES, Lane, check_lane, lane_of, stream_index
from producers.lead import (
    FOREIGN_SYS_TYPES,
    MAX_ATTRIBUTES,
    MAX_LEAD_ID,
    MAX_VALUE_CHARS,
    SOAP_KEY_RULE,
    ForeignSysType,
    LeadUpsert,
    check_known_fields,
    check_xml_text,
    key_digest,
    key_rule,
    lead_key,
    shard_for,
    validate_lead,
)
from producers.outcome import Outcome, OutcomeStatus
from producers.wire import (
    decode_lead,
    encode_lead,
    entry_order,
    entry_time_s,
    parse_request_id,
    request_id,
    text,
)

__all__ = [
    "BULK_CHUNK",
    "FOREIGN_SYS_TYPES",
    "KEY_RULE_FIELD",
    "KEY_RULE_REFRESH_S",
    "LANES",
    "LEAD_FIELDS",
    "MAX_ATTRIBUTES",
    "MAX_LEAD_ID",
    "MAX_VALUE_CHARS",
    "RESHARD_PHASE",
    "RESHARD_TO",
    "SHARDS_FIELD",
    "SOAP_KEY_RULE",
    "ForeignSysType",
    "InvalidLead",
    "Keys",
    "KnownFields",
    "Lane",
    "LeadUpsert",
    "LimiterKeys",
    "Outcome",
    "OutcomeStatus",
    "Placed",
    "Route",
    "adopt_shards",
    "async_redis_client",
    "check_known_fields",
    "check_lane",
    "check_redis_url",
    "check_xml_text",
    "decode_known_fields",
    "decode_lead",
    "describe_redis_url",
    "encode_known_fields",
    "encode_lead",
    "entry_order",
    "entry_time_s",
    "is_sentinel_url",
    "key_digest",
    "key_rule",
    "lane_of",
    "lead_key",
    "parse_request_id",
    "parse_sentinel_url",
    "record_lead",
    "redis_client",
    "request_id",
    "shard_for",
    "stream_index",
    "text",
    "validate_lead",
]
