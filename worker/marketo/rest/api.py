"""RestApi: the MarketoApi over REST. One Sync Leads exchange = codec + token + transport."""

from __future__ import annotations

from collections.abc import Sequence

from producers.contract import LeadUpsert
from worker.errors import ResignError
from worker.marketo.base import SyncResult
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

    async def ready(self) -> None:
        """A token is in Redis (fetched, or a dying one waited out, here and not in a call)."""
        await self.tokens.token()

    async def sync(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> list[SyncResult]:
        """One attempt. A lead the configuration cannot send is FAILED without a call;
        601/602 drop the shared token and raise ResignError (the retry fetches anew)."""
        prepared = build_request(leads, options=self.options, dedup=dedup)
        results: dict[int, SyncResult] = dict(prepared.refused)
        if prepared.sent:
            token = await self.tokens.token()
            reply = await self.transport.post(
                self.url, prepared.body, {**REQUEST_HEADERS, "Authorization": f"Bearer {token}"}
            )
            try:
                answers = parse_response(
                    reply.body,
                    http_status=reply.status,
                    content_type=reply.content_type,
                    expected=len(prepared.sent),
                )
            except ResignError:
                await self.tokens.invalidate(token)
                raise
            results.update(zip(prepared.sent, answers, strict=True))
        return [results[index] for index in range(len(leads))]
