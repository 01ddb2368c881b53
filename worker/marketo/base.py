"""The seam the drain talks to: a Marketo API takes leads and a dedup flag and returns
one result per lead, in order.

Every failure is raised as a branch of the error tree (``worker.errors``) that names
what the drain does about it, whatever the protocol's own codes are:

- ``TransientError``: not received; retry with backoff, bounded;
- ``OutcomeUnknown``: maybe applied (a timeout, a gateway page or a lost reply after the
  request was written): never retried in place; it leaves the cycle and the shards rest;
- ``ResignError``: sign again or fetch a new token, retry at once;
- ``ThrottledError``: every pod cools down;
- ``QuotaExceededError``: pause until the daily quota resets;
- ``AuthError``: hold the pipeline, keep the leads pending;
- ``BadRequestError``: a record made the whole call fault: isolate it (its ``fields``
  name the unknown fields, so the records carrying them fail in one step).

Records Marketo refuses one by one come back as FAILED results with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """One call, built before any permit is taken (a body found too large never spends
    one): the leads it answers for, the request body where the protocol can build it
    ahead (REST; SOAP signs and builds at the send), which leads the body carries (by
    index) and the leads answered FAILED without a call."""

    leads: tuple[LeadUpsert, ...]
    dedup: bool
    sent: tuple[int, ...]
    body: bytes = b""
    refused: Mapping[int, SyncResult] = field(default_factory=dict)

    @classmethod
    def carrying_all(cls, leads: Sequence[LeadUpsert], dedup: bool) -> PreparedCall:
        """A call that carries every lead, its body built at the send."""
        return cls(tuple(leads), dedup, tuple(range(len(leads))))

    def merge(self, answers: Sequence[SyncResult]) -> list[SyncResult]:
        """One result per lead, in order: the answers for the sent leads and the refusals."""
        results = dict(self.refused)
        results.update(zip(self.sent, answers, strict=True))
        return [results[index] for index in range(len(self.leads))]


#: Called right before a request's bytes leave; raises (LeaseLost) to send nothing.
Fence = Callable[[], None]


def no_fence() -> None:
    """The fence of a call no lease guards (``leadsync doctor``, tests)."""


class MarketoApi(Protocol):
    """One protocol's upsert call (SOAP syncMultipleLeads, REST Sync Leads), in three
    steps so the drain can hold a turn for the shortest time: build the call, get the
    credential ready, send it."""

    def prepare(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> PreparedCall:
        """Build the call (no I/O). Raises BadRequestError (413) when the body would be
        over Marketo's limit, before any permit is taken."""
        ...

    async def ready(self) -> str:
        """Whatever the next call needs that may take a while, returned as the credential
        :meth:`send` uses (REST: a live token, which can mean waiting out a dying one;
        SOAP: nothing, a call is signed at the send). The drain calls it after taking its
        permit and takes a fresh turn when it was slow."""
        ...

    async def send(
        self, call: PreparedCall, *, credential: str, fence: Fence = no_fence
    ) -> list[SyncResult]:
        """One attempt with ``credential`` (never a newer one fetched meanwhile): one
        result per lead of ``call``, in order, or a MarketoError. ``fence`` runs right
        before the bytes leave."""
        ...


async def sync_once(
    api: MarketoApi, leads: Sequence[LeadUpsert], *, dedup: bool
) -> list[SyncResult]:
    """One unguarded attempt for ``leads``: prepare, ready, send (the doctor and tests)."""
    call = api.prepare(leads, dedup=dedup)
    if not call.sent:
        return call.merge([])
    return await api.send(call, credential=await api.ready())
