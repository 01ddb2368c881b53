"""StubApi: a MarketoApi that answers from a function, with no codec and no network
(dramatiq's StubBroker beside the real one). Tests of the drain script it per call:
results per lead, or a MarketoError branch for the whole call."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from producers.contract import LeadUpsert
from worker.marketo.base import SyncResult, SyncStatus

#: Answers one call: the leads and the dedup flag in, one result per lead out (or raise).
StubHandler = Callable[[Sequence[LeadUpsert], bool], Sequence[SyncResult]]


def accept_all(leads: Sequence[LeadUpsert], _dedup: bool) -> list[SyncResult]:
    """Every lead created, with ids counting from 1."""
    return [SyncResult(n, SyncStatus.CREATED, None) for n, _ in enumerate(leads, start=1)]


class StubApi:
    """Calls ``handler(leads, dedup)``; records every call's leads."""

    def __init__(self, handler: StubHandler = accept_all) -> None:
        self.handler = handler
        self.calls: list[list[LeadUpsert]] = []

    async def ready(self) -> None:
        """Nothing to prepare."""

    async def sync(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> list[SyncResult]:
        self.calls.append(list(leads))
        results = list(self.handler(leads, dedup))
        if len(results) != len(leads):
            raise AssertionError(f"stub answered {len(results)} results for {len(leads)} leads")
        return results
