"""StubApi: a MarketoApi that answers from a function, with no codec and no network
(dramatiq's StubBroker beside the real one). Tests of the drain script it per call:
results per lead, or a MarketoError branch for the whole call."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from producers.contract import LeadUpsert
from worker.marketo.base import Fence, PreparedCall, SyncResult, SyncStatus, no_fence, sync_once

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

    def prepare(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> PreparedCall:
        return PreparedCall.carrying_all(leads, dedup)

    async def ready(self) -> str:
        """Nothing to prepare."""
        return ""

    async def send(
        self, call: PreparedCall, *, credential: str = "", fence: Fence = no_fence
    ) -> list[SyncResult]:
        fence()
        self.calls.append(list(call.leads))
        results = list(self.handler(call.leads, call.dedup))
        if len(results) != len(call.leads):
            raise AssertionError(
                f"stub answered {len(results)} results for {len(call.leads)} leads"
            )
        return results

    async def sync(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> list[SyncResult]:
        return await sync_once(self, leads, dedup=dedup)
