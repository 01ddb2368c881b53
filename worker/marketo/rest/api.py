"""RestApi: the MarketoApi over REST. One Sync Leads exchange = codec + token + transport."""

from __future__ import annotations

from collections.abc import Sequence

from producers.contract import LeadUpsert
from worker.errors import ResignError
from worker.marketo.base import Fence, PreparedCall, SyncResult, no_fence, sync_once
from worker.marketo.rest.codec import (
    LEADS_PATH,
    REQUEST_HEADERS,
    RestOptions,
    build_request,
    parse_response,
)
from worker.marketo.rest.tokens import TokenSource
from worker.transport import Transport


class RestApi:
    """Sends one batch of leads and returns one SyncResult per lead, in order."""

    def __init__(
        self,
        transport: Transport,
        tokens: TokenSource,
        *,
        rest_url: str,
        options: RestOptions,
    ) -> None:
        self.transport = transport
        self.tokens = tokens
        self.url = rest_url.rstrip("/") + LEADS_PATH
        self.options = options

    def prepare(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> PreparedCall:
        """The request body. A lead the configuration cannot send is FAILED here, without
        a call; a body over Marketo's 1 MB raises BadRequestError (413) before any permit."""
        prepared = build_request(leads, options=self.options, dedup=dedup)
        return PreparedCall(
            tuple(leads), dedup, prepared.sent, body=prepared.body, refused=prepared.refused
        )

    async def ready(self) -> str:
        """A live token (fetched, or a dying one waited out, here and not in a call)."""
        return await self.tokens.token()

    async def send(
        self, call: PreparedCall, *, credential: str, fence: Fence = no_fence
    ) -> list[SyncResult]:
        """One attempt with the token ``ready`` gave (no identity call between the fence
        and the send). 601/602 drop that token and raise ResignError (the retry fetches
        anew)."""
        if not call.sent:
            return call.merge([])
        fence()
        reply = await self.transport.post(
            self.url, call.body, {**REQUEST_HEADERS, "Authorization": f"Bearer {credential}"}
        )
        try:
            answers = parse_response(
                reply.body,
                http_status=reply.status,
                content_type=reply.content_type,
                expected=len(call.sent),
                request_written=reply.request_written,
            )
        except ResignError:
            await self.tokens.invalidate(credential)
            raise
        return call.merge(answers)

    async def sync(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> list[SyncResult]:
        """One unguarded attempt (prepare, ready, send)."""
        return await sync_once(self, leads, dedup=dedup)
