"""leadsync producers: the client library web apps install to enqueue lead upserts.

Depends on redis alone: nothing from ``worker`` or ``marketo_sim``, no pydantic, Celery,
lxml or aiohttp (a test checks this), so ``pip install leadsync`` is enough for a web app.
"""

from __future__ import annotations

from producers._core import Ticket
from producers.aio import AsyncLeadProducer
from producers.config import ProducerConfig
from producers.contract import LeadUpsert, Outcome, OutcomeStatus, validate_lead
from producers.errors import (
    Backpressure,
    ConfigError,
    InvalidLead,
    LeadsyncError,
    NotReplicated,
    Retryable,
)
from producers.sync import LeadProducer

__all__ = [
    "AsyncLeadProducer",
    "Backpressure",
    "ConfigError",
    "InvalidLead",
    "LeadProducer",
    "LeadUpsert",
    "LeadsyncError",
    "NotReplicated",
    "Outcome",
    "OutcomeStatus",
    "ProducerConfig",
    "Retryable",
    "Ticket",
    "validate_lead",
]
