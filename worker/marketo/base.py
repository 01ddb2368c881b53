"""The seam the drain talks to: a Marketo API takes leads and a dedup flag and returns
one result per lead, in order.

Every failure is raised as a branch of the error tree (``worker.errors``) that names
what the drain does about it, whatever the protocol's own codes are:

- ``TransientError``: retry with backoff, bounded; a ``CallTimeout`` leaves the cycle;
- ``ResignError``: sign again or fetch a new token, retry at once;
- ``ThrottledError``: every pod cools down;
- ``QuotaExceededError``: pause until the daily quota resets;
- ``AuthError``: hold the pipeline, keep the leads pending;
- ``BadRequestError``: a record made the whole call fault: isolate it (its ``fields``
  name the unknown fields, so the records carrying them fail in one step).

Records Marketo refuses one by one come back as FAILED results with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from producers.contract import LeadUpsert


class SyncStatus(StrEnum):
    """What Marketo did with one lead (LeadSyncStatus of the WSDL)."""

    CREATED = "CREATED"
    UPDATED = "UPDATED"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What Marketo did with one lead; ``error`` (and, where the protocol gives one,
    ``error_code``) is set only for FAILED."""

    lead_id: int | None
    status: SyncStatus
    error: str | None
    error_code: str | None = None


class MarketoApi(Protocol):
    """One protocol's upsert call (SOAP syncMultipleLeads, REST Sync Leads)."""

    async def ready(self) -> None:
        """Whatever the next call needs that may take a while (REST: a live token, which
        can mean waiting out a dying one). The drain calls it after taking its permit and
        takes a fresh turn when it was slow. Raises as :meth:`sync` does."""
        ...

    async def sync(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> list[SyncResult]:
        """One attempt for ``leads``: one result per lead, in order, or a MarketoError."""
        ...
