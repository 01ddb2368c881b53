"""leadsync producers: the client library web apps install to enqueue lead upserts.

Imports neither Celery, lxml nor aiohttp (a test checks this).
"""

from __future__ import annotations

from producers.contract import LeadUpsert, Outcome, OutcomeStatus, validate_lead
from producers.errors import InvalidLead
from producers.producer import AsyncLeadProducer, LeadProducer

__all__ = [
    "AsyncLeadProducer",
    "InvalidLead",
    "LeadProducer",
    "LeadUpsert",
    "Outcome",
    "OutcomeStatus",
    "validate_lead",
]
