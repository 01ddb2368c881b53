"""The producers under their historical module name: ``from producers.producer import
LeadProducer`` keeps working. They live in :mod:`producers.sync` and
:mod:`producers.aio`, over the sans-I/O core in :mod:`producers._core`."""

from __future__ import annotations

from producers._core import (
    BULK_CHUNK,
    KEY_RULE_FIELD,
    KEY_RULE_REFRESH_S,
    LEAD_FIELDS,
    SHARDS_FIELD,
    Route,
    adopt_shards,
    bulk_chunks,
    read_outcome,
    record_lead,
    resolve_config,
    timed_out,
)
from producers.aio import AsyncLeadProducer
from producers.sync import LeadProducer

__all__ = [
    "BULK_CHUNK",
    "KEY_RULE_FIELD",
    "KEY_RULE_REFRESH_S",
    "LEAD_FIELDS",
    "SHARDS_FIELD",
    "AsyncLeadProducer",
    "LeadProducer",
    "Route",
    "adopt_shards",
    "bulk_chunks",
    "read_outcome",
    "record_lead",
    "resolve_config",
    "timed_out",
]
